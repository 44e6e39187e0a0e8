/**
 * OpenAI-compatible REST: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{id}`, so code written
 * for the OpenAI SDK (or LangChain, LlamaIndex) runs against Polyray unchanged, on the same cache tiers,
 * batches, quotas and books as GraphQL: each call is a request scope (src/service/scope.ts), built from its
 * headers like a GraphQL operation's, and settles its account before it answers.
 *
 * Wire shape (OpenAI's): `{input, model, encoding_format?, dimensions?, user?}` → `{object: "list", data:
 * [{object: "embedding", index, embedding}], model, usage: {prompt_tokens, total_tokens}}`. `input` is a
 * text, a list of texts, a list of token ids or a list of lists of token ids; token ids are ids of the
 * model's own tokenizer (what `POST /tokenize` returns), read as they are: special tokens included, no
 * prompt added, keyed in the cache apart from texts. `embedding` is a list of floats, or with
 * `encoding_format: "base64"` (the SDKs' default) little-endian float32 as base64. `prompt_tokens` counts
 * the tokens the model reads for every input, computed or served from the cache (cache hits are counted by
 * tokenising again, off the event loop). `user` is recorded in the trace as a hash and never used for
 * billing (the key decides who pays).
 *
 * The body is validated by Ajv against `embeddingsRequestSchema`, the schema /openapi.json publishes
 * (src/http/validation.ts); what a schema cannot say (one kind of input per request, how many inputs, the
 * model's dimensions and vocabulary) is checked here and in the pipeline.
 *
 * Errors in OpenAI's shape `{error: {message, type, param, code}}` with the status of the Polyray code
 * (src/http/rest.ts `restStatusOf`); 429 (quota, or a full queue) carries `Retry-After` (seconds) and `retry-after-ms`, which the SDKs
 * honour.
 */
import type { ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { encodeWire } from '../cache/codec.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { AccountContext } from '../accounting/request.ts';
import { checkDimensions, checkPrompt } from '../resolvers/args.ts';
import { truncate } from '../resolvers/shape.ts';
import type { ModelInfo, TextHandle } from '../runtime/handle.ts';
import type { RequestScope } from '../service/scope.ts';
import { embedAll, inScope, restStatusOf, type InputField, inputSchema, inputsOf, polyrayErrorOf, setRetryHeaders, stringify } from './rest.ts';
import type { EmbedResult, TextInput } from '../service/types.ts';
import { SECURITY } from './openapi.ts';
import { describeIssues, type ValidationIssue } from './validation.ts';

export interface OpenAiDeps {
  /** The request scope of a call, from its headers (throws UNAUTHENTICATED). */
  scope(headers: Record<string, string | string[] | undefined>, response?: ServerResponse): RequestScope<AccountContext>;
  models(): ModelInfo[];
  /** Most inputs per call (POLYRAY_MAX_INPUTS). */
  maxInputs: number;
  /** Other names for served models (POLYRAY_MODEL_ALIASES): alias → model. */
  aliases: ReadonlyMap<string, string>;
}

/** `alias=model` entries as a map (the config has checked their form). */
export function aliasMap(entries: readonly string[]): Map<string, string> {
  return new Map(entries.map((e) => e.split('=', 2) as [string, string]));
}

const TYPES: Partial<Record<number, string>> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  402: 'insufficient_quota',
  403: 'permission_error',
  404: 'invalid_request_error',
  413: 'invalid_request_error',
  422: 'invalid_request_error',
  429: 'rate_limit_error',
};

/** Sends `e` in OpenAI's error shape; anything not a PolyrayError is a masked 500. */
function sendError(reply: FastifyReply, e: unknown, param: string | null = null): FastifyReply {
  const original = polyrayErrorOf(e);
  if (!original) {
    reply.log.error({ err: e instanceof Error ? e.message : String(e) }, 'internal error in /v1');
    return reply.code(500).send({ error: { message: 'Internal server error', type: 'server_error', param: null, code: 'internal_server_error' } });
  }
  const status = restStatusOf(original.code);
  setRetryHeaders(reply, original);
  return reply.code(status).send({
    error: {
      message: original.message,
      type: TYPES[status] ?? 'server_error',
      param: param ?? paramOf(original.extensions),
      code: original.code.toLowerCase(),
    },
  });
}

/** The request field an error is about: named by the check (`param`, GraphQL's `argument`), or the input's index. */
function paramOf(ext: Record<string, unknown>): string | null {
  if (typeof ext['param'] === 'string') return ext['param'];
  if (typeof ext['argument'] === 'string') return ext['argument'];
  return typeof ext['index'] === 'number' ? `input[${ext['index']}]` : null;
}

/** The body of `POST /v1/embeddings` (OpenAI's CreateEmbeddingRequest), as Ajv validates it and /openapi.json shows it. */
export function embeddingsRequestSchema(maxInputs: number) {
  return {
    type: 'object',
    required: ['input', 'model'],
    properties: {
      input: inputSchema(maxInputs),
      model: { type: 'string', minLength: 1, maxLength: 256, description: 'a served model, or an alias of one (POLYRAY_MODEL_ALIASES)' },
      encoding_format: { type: 'string', enum: ['float', 'base64'], description: 'float (default): lists of numbers; base64: little-endian float32' },
      dimensions: { type: ['integer', 'null'], minimum: 1, description: "the first components only, re-normalised (at most the model's dimensions)" },
      user: { type: 'string', maxLength: 1024, description: 'an end-user id; accepted, never used for billing (the key decides who pays)' },
    },
  } as const;
}

const ERROR_SCHEMA = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['message', 'type'],
      properties: {
        message: { type: 'string' },
        type: { type: 'string' },
        param: { type: ['string', 'null'], description: 'the request field at fault' },
        code: { type: ['string', 'null'], description: 'the Polyray error code, lower-case' },
      },
    },
  },
} as const;

const MODEL_SCHEMA = {
  type: 'object',
  required: ['id', 'object', 'created', 'owned_by'],
  properties: { id: { type: 'string' }, object: { type: 'string', enum: ['model'] }, created: { type: 'integer' }, owned_by: { type: 'string' } },
} as const;

const EMBEDDINGS_RESPONSE = {
  type: 'object',
  required: ['object', 'data', 'model', 'usage'],
  properties: {
    object: { type: 'string', enum: ['list'] },
    data: {
      type: 'array',
      items: {
        type: 'object',
        required: ['object', 'index', 'embedding'],
        properties: {
          object: { type: 'string', enum: ['embedding'] },
          index: { type: 'integer' },
          embedding: {
            anyOf: [
              { type: 'array', items: { type: 'number' } },
              { type: 'string', description: 'base64 of little-endian float32' },
            ],
          },
        },
      },
    },
    model: { type: 'string', description: 'the name the request used (an alias stays an alias)' },
    usage: {
      type: 'object',
      required: ['prompt_tokens', 'total_tokens'],
      properties: {
        prompt_tokens: { type: 'integer', description: 'tokens the model reads for every input, computed or served from the cache' },
        total_tokens: { type: 'integer' },
      },
    },
  },
} as const;

/** Errors in OpenAI's shape, for every status a route may answer with. */
const ERRORS = { '4XX': ERROR_SCHEMA, '5XX': ERROR_SCHEMA } as const;

interface Parsed {
  inputs: TextInput[];
  model: string;
  base64: boolean;
  dimensions: number | undefined;
  user: string | undefined;
}

/** The body after schema validation: the checks a schema cannot say (one kind of input, how many). */
function parse(body: EmbeddingsBody, maxInputs: number): Parsed {
  const inputs = inputsOf(body.input);
  if (inputs.length > maxInputs) {
    throw new PolyrayError(ErrorCode.TOO_MANY_INPUTS, `"input" has ${inputs.length} items; the limit is ${maxInputs} per request (POLYRAY_MAX_INPUTS)`, {
      param: 'input',
      limit: maxInputs,
    });
  }
  return { inputs, model: body.model, base64: body.encoding_format === 'base64', dimensions: body.dimensions ?? undefined, user: body.user };
}

interface EmbeddingsBody {
  input: InputField;
  model: string;
  encoding_format?: 'float' | 'base64';
  dimensions?: number | null;
  user?: string;
}

/**
 * Errors before the handler, in OpenAI's shape too: a body that fails the schema (400, naming the field), is
 * not JSON, is over the body limit (413) or has another content type (415).
 */
function transportError(
  err: { statusCode?: number; code?: string; message: string; validation?: ValidationIssue[] },
  _req: unknown,
  reply: FastifyReply,
): FastifyReply {
  if (err.validation) {
    const { param, message } = describeIssues(err.validation);
    return reply.code(400).send({ error: { message, type: 'invalid_request_error', param, code: 'bad_user_input' } });
  }
  const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
  return reply.code(status).send({
    error: {
      message: status === 500 ? 'Internal server error' : err.message,
      type: TYPES[status] ?? (status === 500 ? 'server_error' : 'invalid_request_error'),
      param: 'body',
      code: (err.code ?? 'bad_request').toLowerCase(),
    },
  });
}

export function registerOpenAiRoutes(app: FastifyInstance, deps: OpenAiDeps): void {
  app.post<{ Body: EmbeddingsBody }>(
    '/v1/embeddings',
    {
      errorHandler: transportError,
      serializerCompiler: stringify,
      schema: {
        tags: ['openai'],
        summary: 'Create embeddings (OpenAI-compatible)',
        description:
          "Embeds texts or token ids of the model's own tokenizer on the same cache, batches, quotas and books as GraphQL. Token ids are read as they are (special tokens included, no prompt added).",
        security: SECURITY,
        body: embeddingsRequestSchema(deps.maxInputs),
        response: { 200: EMBEDDINGS_RESPONSE, ...ERRORS },
      },
    },
    async (req, reply) =>
      inScope(
        () => deps.scope(req.headers, reply.raw),
        (e) => sendError(reply, e),
        async (scope) => {
          const p = parse(req.body, deps.maxInputs);
          const handle = scope.model(deps.aliases.get(p.model) ?? p.model);
          if (handle.kind !== 'text') {
            throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${handle.name} does not read text; /v1/embeddings takes text models`, {
              param: 'model',
            });
          }
          const dims = checkDimensions(handle, p.dimensions ?? null);
          const options = { prompt: checkPrompt(handle, undefined, undefined), ...(p.user ? { user: p.user } : {}) };
          const loader = scope.texts(handle, options);
          const ok = await embedAll(loader, p.inputs);
          const tokens = await promptTokens(scope, handle, options, p.inputs, ok);
          const cost = await scope.account.close('OK');
          const hits = ok.filter((r) => r.source !== 'COMPUTED').length;
          return reply
            .header('x-polyray-cost', String(cost.charged))
            .header('x-polyray-cache-hits', String(hits))
            .send({
              object: 'list',
              data: ok.map((r, index) => {
                const v = truncate(r.vector, dims);
                return { object: 'embedding', index, embedding: p.base64 ? encodeWire(v, 'FLOAT32') : Array.from(v) };
              }),
              // The name the caller used (an alias stays an alias, as the caller's code expects it back).
              model: p.model,
              usage: { prompt_tokens: tokens, total_tokens: tokens },
            });
        },
      ),
  );

  const modelView = (m: ModelInfo) => ({ id: m.name, object: 'model', created: 0, owned_by: 'polyray' });
  app.get(
    '/v1/models',
    {
      serializerCompiler: stringify,
      schema: {
        tags: ['openai'],
        summary: 'List the text models this key may use, and their aliases',
        security: SECURITY,
        response: {
          200: {
            type: 'object',
            required: ['object', 'data'],
            properties: { object: { type: 'string', enum: ['list'] }, data: { type: 'array', items: MODEL_SCHEMA } },
          },
          ...ERRORS,
        },
      },
    },
    async (req, reply) => {
      try {
        const scope = deps.scope(req.headers, reply.raw);
        const mine = deps.models().filter((m) => m.modality === 'TEXT' && scope.account.mayUse(m.name));
        const aliases = [...deps.aliases]
          .filter(([, target]) => mine.some((m) => m.name === target))
          .map(([alias]) => ({ id: alias, object: 'model', created: 0, owned_by: 'polyray' }));
        return reply.send({ object: 'list', data: [...mine.map(modelView), ...aliases] });
      } catch (e) {
        return sendError(reply, e);
      }
    },
  );
  app.get<{ Params: { id: string } }>(
    '/v1/models/:id',
    {
      serializerCompiler: stringify,
      schema: {
        tags: ['openai'],
        summary: 'One text model (or alias)',
        security: SECURITY,
        params: { type: 'object', required: ['id'], properties: { id: { type: 'string', maxLength: 256 } } },
        response: { 200: MODEL_SCHEMA, ...ERRORS },
      },
      errorHandler: transportError,
    },
    async (req, reply) => {
      try {
        const scope = deps.scope(req.headers, reply.raw);
        const name = deps.aliases.get(req.params.id) ?? req.params.id;
        const m = deps.models().find((x) => x.name === name && x.modality === 'TEXT');
        if (!m) throw new PolyrayError(ErrorCode.MODEL_NOT_FOUND, `The model "${req.params.id.slice(0, 64)}" does not exist`, { param: 'model' });
        if (!scope.account.mayUse(m.name)) throw new PolyrayError(ErrorCode.FORBIDDEN, `This client may not use model "${m.name}"`, { param: 'model' });
        return reply.send({ ...modelView(m), id: req.params.id });
      } catch (e) {
        return sendError(reply, e);
      }
    },
  );
}

/** Tokens the model reads for every input: counted when computed, tokenised again (off the loop) for cache hits. */
async function promptTokens(
  scope: RequestScope<AccountContext>,
  handle: TextHandle,
  options: { prompt: string },
  inputs: readonly TextInput[],
  results: readonly EmbedResult[],
): Promise<number> {
  const counts = scope.tokenCounts(handle, options);
  const per = await Promise.all(
    results.map((r, i) => {
      const input = inputs[i]!;
      if (typeof input !== 'string') return input.ids.length;
      return r.inputTokens ? r.inputTokens.kept : counts.load(input).then((c) => c.kept);
    }),
  );
  return per.reduce((a, b) => a + b, 0);
}
