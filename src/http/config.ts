/**
 * Options of the HTTP listener and of what one request may carry (src/server.ts wires them into
 * Fastify and the resolvers). Declared with src/config/define.ts; src/config assembles and validates them.
 */
import { z } from 'zod';
import { setting } from '../config/define.ts';

export const httpSchema = z
  .object({
    /**
     * Address the listener binds. `HOST`; default 127.0.0.1 (this machine only), 0.0.0.0 inside a container,
     * where the port is published by the container runtime.
     */
    host: setting(z.string(), {
      env: 'HOST',
      file: 'host',
      default: (_get, host) => (host.container ? '0.0.0.0' : '127.0.0.1'),
      defaultDoc: '127.0.0.1; 0.0.0.0 in a container',
      doc: 'HTTP listen address',
    }),
    /** Listener port (0: any free port). `PORT`; default 4000. */
    port: setting(z.number().int().min(0).max(65535), {
      env: 'PORT',
      file: 'port',
      default: 4000,
      doc: 'HTTP port (`/graphql`, `/healthz`, `/readyz`)',
    }),
    /**
     * Largest accepted request body in bytes (413 beyond, counted while it streams in, before anything is
     * parsed). Bodies from 256 KiB are parsed off the event loop (src/http/json-body.ts). Inline images up to
     * about 6 MiB fit; larger ones are fetched by URL (POLYRAY_IMAGE_MAX_BYTES). `POLYRAY_BODY_LIMIT_BYTES`; default 8 MiB.
     */
    bodyLimitBytes: setting(z.number().int().min(1024), {
      env: 'POLYRAY_BODY_LIMIT_BYTES',
      file: 'bodyLimitBytes',
      default: 8 * 1024 * 1024,
      defaultDoc: '8 MiB',
      doc: 'HTTP request body limit (413 beyond, before parsing)',
    }),
    /**
     * `Cache-Control: max-age` of GraphQL answers made only of `Post` entities or `embed` results (for the
     * Apollo Router's entity cache and Hive Gateway's response cache; src/resolvers/http-cache.ts); other
     * answers are `no-store`. 0: everything `no-store`. After a model is updated in place, caches may serve
     * the old version's vectors this long. `POLYRAY_HTTP_CACHE_MAX_AGE_S`; default 3600.
     */
    cacheMaxAgeS: setting(z.number().int().min(0).max(31_536_000), {
      env: 'POLYRAY_HTTP_CACHE_MAX_AGE_S',
      file: 'httpCacheMaxAgeS',
      default: 3600,
      doc: '`Cache-Control: max-age` of answers made only of embeddings (router entity caches); others `no-store`; 0: all `no-store`',
    }),
  })
  .strict();

/**
 * Most inputs in one `embed` call (`TOO_MANY_INPUTS` beyond). Must not exceed `POLYRAY_QUEUE_MAX_ITEMS_PER_CLIENT`,
 * or one request could never be queued. `POLYRAY_MAX_INPUTS`; default 2048.
 */
export const maxInputsPerRequest = setting(z.number().int().min(1).max(1_000_000), {
  env: 'POLYRAY_MAX_INPUTS',
  file: 'maxInputs',
  default: 2048,
  doc: 'inputs per `embed` call (`TOO_MANY_INPUTS`)',
});

export const limitsSchema = z
  .object({
    maxInputsPerRequest,
    /**
     * Serve `_entities { ... on Post { embedding { base64 | vector } } }` by the compiled route in front of
     * Apollo (src/resolvers/fast-entities.ts): the same answers without Apollo's request pipeline or
     * field-by-field execution. `POLYRAY_ENTITY_FAST_PATH`; default true.
     */
    entityFastPath: setting(z.boolean(), {
      env: 'POLYRAY_ENTITY_FAST_PATH',
      file: 'entityFastPath',
      default: true,
      doc: 'answer the plain `_entities` embedding operation by the compiled route in front of Apollo (same answers, less work per request and per entity)',
    }),
    /**
     * Bytes the compiled `_entities` route may hold of vectors' reply text (base64 and JSON): a hot vector is
     * encoded once, not once per answer. Only full-size vectors; 0 turns it off. `POLYRAY_VECTOR_TEXT_MEMO_MB`;
     * default 32 MiB.
     */
    vectorTextMemoBytes: setting(z.number().int().min(0), {
      env: 'POLYRAY_VECTOR_TEXT_MEMO_MB',
      file: 'vectorTextMemoMb',
      unit: 1024 * 1024,
      default: 32 * 1024 * 1024,
      defaultDoc: '32 MiB',
      doc: "bytes of vectors' reply text (base64, JSON) the compiled `_entities` route keeps, so a hot vector is encoded once (0: off)",
    }),
    /**
     * How long a request's inputs may wait for inference, in ms: still queued after it, they are dropped
     * (DEADLINE_EXCEEDED, not charged). A caller may ask for less with `x-request-timeout-ms`, never more.
     * `POLYRAY_REQUEST_TIMEOUT_MS`; default 30000; 0 means no deadline.
     */
    requestTimeoutMs: setting(z.number().int().min(0).max(3_600_000), {
      env: 'POLYRAY_REQUEST_TIMEOUT_MS',
      file: 'requestTimeoutMs',
      default: 30_000,
      doc: 'longest wait of a request for inference (`DEADLINE_EXCEEDED`, not charged; `x-request-timeout-ms` may ask for less; 0: none)',
    }),
    /**
     * Inputs in one operation over all its fields and aliases (`embed` inputs, `_entities` representations ×
     * embedding/classify fields, 64 per `usage`/`models` read): `TOO_MANY_INPUTS` before any work.
     * `POLYRAY_MAX_OPERATION_INPUTS`; default 4096.
     */
    maxInputsPerOperation: setting(z.number().int().min(1).max(10_000_000), {
      env: 'POLYRAY_MAX_OPERATION_INPUTS',
      file: 'maxOperationInputs',
      default: 4096,
      doc: 'inputs per operation over all aliases (`TOO_MANY_INPUTS`, before any work)',
    }),
    /** Largest reply an operation may ask for, estimated from its arguments: `RESPONSE_TOO_LARGE`. Default 32 MiB. */
    maxResponseBytes: setting(z.number().int().min(1024), {
      env: 'POLYRAY_MAX_RESPONSE_BYTES',
      file: 'maxResponseBytes',
      default: 32 * 1024 * 1024,
      defaultDoc: '32 MiB',
      doc: 'largest reply an operation may ask for (`RESPONSE_TOO_LARGE`, before any work)',
    }),
    /**
     * Tokens in one GraphQL document, counted while parsing (graphql-js `maxTokens`): a larger document is
     * refused (GRAPHQL_PARSE_FAILED) before it is parsed further or validated, which on a huge document would
     * hold the event loop. Inputs belong in variables, which do not count. `POLYRAY_MAX_DOCUMENT_TOKENS`; default 5000.
     */
    maxDocumentTokens: setting(z.number().int().min(100), {
      env: 'POLYRAY_MAX_DOCUMENT_TOKENS',
      file: 'maxDocumentTokens',
      default: 5000,
      doc: 'tokens per GraphQL document (parse refused beyond; put inputs in variables)',
    }),
    /** Fields one operation selects, fragments expanded: `QUERY_TOO_COMPLEX`. Default 2000. */
    maxFields: setting(z.number().int().min(10), {
      env: 'POLYRAY_MAX_FIELDS',
      file: 'maxFields',
      default: 2000,
      doc: 'fields selected per operation, fragments expanded (`QUERY_TOO_COMPLEX`)',
    }),
    /** Selection depth: `QUERY_TOO_COMPLEX`. Default 24 (introspection needs about 15). */
    maxDepth: setting(z.number().int().min(4).max(1000), {
      env: 'POLYRAY_MAX_DEPTH',
      file: 'maxDepth',
      default: 24,
      doc: 'selection nesting depth (`QUERY_TOO_COMPLEX`)',
    }),
    /** Longest input text in bytes (UTF-8), `INPUT_TOO_LARGE` beyond. `POLYRAY_MAX_INPUT_BYTES`; default 64 KiB. */
    maxInputBytes: setting(z.number().int().min(1), {
      env: 'POLYRAY_MAX_INPUT_BYTES',
      file: 'maxInputBytes',
      default: 64 * 1024,
      doc: "bytes per input (`INPUT_TOO_LARGE`); the model's `maxTokens` also applies",
    }),
  })
  .strict();
