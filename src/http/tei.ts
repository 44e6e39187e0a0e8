/**
 * Text Embeddings Inference (TEI) compatible `POST /embed` and `POST /tokenize`, so TEI clients work
 * unchanged, on the same request scope as GraphQL and /v1 (cache, batches, quotas, books).
 *
 * `/embed` (TEI's shape): `{inputs, normalize?: true, truncate?: false, truncation_direction?: "Right" |
 * "Left", prompt_name?, dimensions?}` → `[[float, …], …]`, one vector per input in order. `inputs` is a
 * text, texts, or token ids of the model's tokenizer (a list of ids, or lists of them), as TEI takes them.
 * `normalize: false` returns the model's output as it is, `true` L2-normalises it (a no-op for models that
 * normalise). Headers: TEI's `x-compute-tokens`, `x-compute-time`, `x-inference-time`, `x-queue-time`
 * (ms, rounded), and `x-polyray-cost`, `x-polyray-cache-hits`.
 *
 * `/tokenize`: `{inputs, add_special_tokens?: true, prompt_name?}` → per text, `[{id, text, special,
 * start, stop}]` with UTF-8 byte offsets into prompt + text (null for special tokens), as TEI answers.
 * Tokenised in a tokenizer thread, which also writes the JSON; texts meet POLYRAY_MAX_INPUT_BYTES and the
 * model's token limit. Not charged (no inference runs), but authenticated and counted like any request.
 *
 * Either route's model: a header `x-polyray-model` (or `?model=`); without it, the default post model
 * (`POLYRAY_DEFAULT_POST_MODEL`) when it reads text. Bodies are validated against the schemas below, the
 * ones /openapi.json publishes.
 *
 * Errors in TEI's shape `{error, error_type}`: `Validation` (400/413/422), `Unauthorized` (401/403),
 * `Overloaded` (429, with Retry-After), `Unhealthy` (503), `Backend` otherwise.
 */
import type { ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { AccountContext } from '../accounting/request.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import { checkDimensions, checkPrompt } from '../resolvers/args.ts';
import { truncate as cut } from '../resolvers/shape.ts';
import { normalizeInPlace } from '../runtime/pooling.ts';
import type { RequestScope } from '../service/scope.ts';
import type { TextHandle } from '../runtime/handle.ts';
import { SECURITY } from './openapi.ts';
import { embedAll, inScope, restStatusOf, type InputField, inputSchema, inputsOf, polyrayErrorOf, setRetryHeaders, stringify } from './rest.ts';
import { describeIssues, type ValidationIssue } from './validation.ts';

export interface TeiDeps {
  scope(headers: Record<string, string | string[] | undefined>, response?: ServerResponse): RequestScope<AccountContext>;
  defaultModel: string;
  maxInputs: number;
  /** Longest text in UTF-8 bytes (POLYRAY_MAX_INPUT_BYTES); /embed's texts meet it in the pipeline. */
  maxInputBytes: number;
  /** Other names for served models (POLYRAY_MODEL_ALIASES): alias → model. */
  aliases: ReadonlyMap<string, string>;
}

function errorType(status: number): string {
  if (status === 401 || status === 403) return 'Unauthorized';
  if (status === 429) return 'Overloaded';
  if (status === 503) return 'Unhealthy';
  if (status >= 400 && status < 500) return 'Validation';
  return 'Backend';
}

function sendError(reply: FastifyReply, e: unknown): FastifyReply {
  const original = polyrayErrorOf(e);
  if (!original) {
    reply.log.error({ err: e instanceof Error ? e.message : String(e) }, 'internal error in /embed');
    return reply.code(500).send({ error: 'Internal server error', error_type: 'Backend' });
  }
  const status = restStatusOf(original.code);
  setRetryHeaders(reply, original);
  return reply.code(status).send({ error: original.message, error_type: errorType(status) });
}

const TEI_ERROR = { type: 'object', required: ['error', 'error_type'], properties: { error: { type: 'string' }, error_type: { type: 'string' } } } as const;
const ERRORS = { '4XX': TEI_ERROR, '5XX': TEI_ERROR } as const;

/** Which model: a header or `?model=`, else the default post model. */
const MODEL_CHOICE = {
  headers: {
    type: 'object',
    properties: { 'x-polyray-model': { type: 'string', maxLength: 256, description: 'the model (default: the default post model)' } },
  },
  querystring: { type: 'object', properties: { model: { type: 'string', maxLength: 256, description: 'the model, when no x-polyray-model header is sent' } } },
} as const;

const PROMPT_NAME = { type: ['string', 'null'], maxLength: 256, description: "one of the model's named prompts (default: its default prompt)" } as const;

function embedSchema(maxInputs: number) {
  return {
    type: 'object',
    required: ['inputs'],
    properties: {
      inputs: inputSchema(maxInputs),
      normalize: { type: 'boolean', description: 'L2-normalise (default true)' },
      truncate: { type: ['boolean', 'null'], description: "cut inputs over the model's token limit instead of refusing them (default false)" },
      truncation_direction: { type: 'string', enum: ['Left', 'Right', 'left', 'right'], description: "which end truncate cuts (default: the model's)" },
      prompt_name: PROMPT_NAME,
      dimensions: { type: ['integer', 'null'], minimum: 1, description: 'the first components only, re-normalised' },
    },
  } as const;
}

function tokenizeSchema(maxInputs: number) {
  return {
    type: 'object',
    required: ['inputs'],
    properties: {
      inputs: {
        description: `a text or a list of texts (at most ${maxInputs})`,
        anyOf: [{ type: 'string' }, { type: 'array', minItems: 1, items: { type: 'string' } }],
      },
      add_special_tokens: { type: 'boolean', description: 'include the special tokens the model adds around a text (default true)' },
      prompt_name: PROMPT_NAME,
    },
  } as const;
}

const SIMPLE_TOKEN = {
  type: 'object',
  required: ['id', 'text', 'special', 'start', 'stop'],
  properties: {
    id: { type: 'integer' },
    text: { type: 'string' },
    special: { type: 'boolean' },
    start: { type: ['integer', 'null'], description: 'UTF-8 byte offset of the token in the prompt + text; null for special tokens' },
    stop: { type: ['integer', 'null'] },
  },
} as const;

interface EmbedBody {
  inputs: InputField;
  normalize?: boolean;
  truncate?: boolean | null;
  truncation_direction?: 'Left' | 'Right' | 'left' | 'right';
  prompt_name?: string | null;
  dimensions?: number | null;
}

interface TokenizeBody {
  inputs: string | string[];
  add_special_tokens?: boolean;
  prompt_name?: string | null;
}

type Route<B> = { Body: B; Querystring: { model?: string }; Headers: { 'x-polyray-model'?: string } };

/** Errors before the handler (a body failing the schema, not JSON, too large, another content type): TEI's shape. */
function transportError(err: { statusCode?: number; message: string; validation?: ValidationIssue[] }, _req: unknown, reply: FastifyReply): FastifyReply {
  if (err.validation) return reply.code(400).send({ error: describeIssues(err.validation).message, error_type: 'Validation' });
  const status = err.statusCode && err.statusCode < 500 ? err.statusCode : 500;
  return reply.code(status).send({ error: status === 500 ? 'Internal server error' : err.message, error_type: errorType(status) });
}

export function registerTeiRoutes(app: FastifyInstance, deps: TeiDeps): void {
  /** The text model a request names, or the default one. */
  const modelOf = (scope: RequestScope<AccountContext>, req: { headers: Route<unknown>['Headers']; query: Route<unknown>['Querystring'] }): TextHandle => {
    const named = req.headers['x-polyray-model'] ?? req.query.model;
    const asked = typeof named === 'string' && named !== '' ? named : deps.defaultModel;
    const handle = scope.model(deps.aliases.get(asked) ?? asked);
    if (handle.kind !== 'text') throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${handle.name} does not read text`, { field: 'model' });
    return handle;
  };
  const tooMany = (n: number): PolyrayError =>
    new PolyrayError(ErrorCode.TOO_MANY_INPUTS, `"inputs" has ${n} items; the limit is ${deps.maxInputs} (POLYRAY_MAX_INPUTS)`, { field: 'inputs' });

  app.post<Route<EmbedBody>>(
    '/embed',
    {
      errorHandler: transportError,
      serializerCompiler: stringify,
      schema: {
        tags: ['tei'],
        summary: 'Embed texts or token ids (Text Embeddings Inference-compatible)',
        description:
          'One vector per input, in order. Headers: x-compute-tokens, x-compute-time, x-inference-time, x-queue-time (ms), x-polyray-cost, x-polyray-cache-hits.',
        security: SECURITY,
        ...MODEL_CHOICE,
        body: embedSchema(deps.maxInputs),
        response: { 200: { type: 'array', items: { type: 'array', items: { type: 'number' } } }, ...ERRORS },
      },
    },
    async (req, reply) =>
      inScope(
        () => deps.scope(req.headers, reply.raw),
        (e) => sendError(reply, e),
        async (scope) => {
          const t0 = performance.now();
          const b = req.body;
          const inputs = inputsOf(b.inputs);
          if (inputs.length > deps.maxInputs) throw tooMany(inputs.length);
          const handle = modelOf(scope, req);
          const size = checkDimensions(handle, b.dimensions ?? null);
          const dir = b.truncation_direction;
          const options = {
            prompt: checkPrompt(handle, undefined, b.prompt_name ?? undefined),
            truncate: b.truncate === true,
            ...(dir !== undefined ? { side: dir.toLowerCase() as 'left' | 'right' } : {}),
          };
          const ok = await embedAll(scope.texts(handle, options), inputs);
          const cost = await scope.account.close('OK');
          const computeTokens = ok.reduce((s, r) => s + r.tokens, 0);
          const inferenceMs = ok.reduce((s, r) => s + r.inferenceMs, 0);
          const totalMs = performance.now() - t0;
          const normalize = b.normalize !== false;
          return reply
            .header('x-compute-tokens', String(computeTokens))
            .header('x-compute-time', String(Math.round(totalMs)))
            .header('x-inference-time', String(Math.round(inferenceMs)))
            .header('x-queue-time', String(Math.max(0, Math.round(totalMs - inferenceMs))))
            .header('x-polyray-cost', String(cost.charged))
            .header('x-polyray-cache-hits', String(ok.filter((r) => r.source !== 'COMPUTED').length))
            .send(
              ok.map((r) => {
                // A copy: the result's vector is the cached one, never to be changed.
                const v = new Float32Array(cut(r.vector, size));
                if (normalize) normalizeInPlace(v);
                return Array.from(v);
              }),
            );
        },
      ),
  );

  app.post<Route<TokenizeBody>>(
    '/tokenize',
    {
      errorHandler: transportError,
      serializerCompiler: stringify,
      schema: {
        tags: ['tei'],
        summary: "Tokenize texts with the model's tokenizer (Text Embeddings Inference-compatible)",
        description:
          'Per text, its tokens: id, text, whether special, and UTF-8 byte offsets in prompt + text. The ids are what the model reads (and what /v1/embeddings and /embed take as token-id input). Not charged: no inference runs.',
        security: SECURITY,
        ...MODEL_CHOICE,
        body: tokenizeSchema(deps.maxInputs),
        response: { 200: { type: 'array', items: { type: 'array', items: SIMPLE_TOKEN } }, ...ERRORS },
      },
    },
    async (req, reply) =>
      inScope(
        () => deps.scope(req.headers, reply.raw),
        (e) => sendError(reply, e),
        async (scope) => {
          const b = req.body;
          const texts = typeof b.inputs === 'string' ? [b.inputs] : b.inputs;
          if (texts.length > deps.maxInputs) throw tooMany(texts.length);
          texts.forEach((text, index) => {
            const bytes = Buffer.byteLength(text, 'utf8');
            if (bytes > deps.maxInputBytes) {
              throw new PolyrayError(
                ErrorCode.INPUT_TOO_LARGE,
                `Input ${index} is ${bytes} bytes; the limit is ${deps.maxInputBytes} bytes (POLYRAY_MAX_INPUT_BYTES)`,
                {
                  index,
                },
              );
            }
          });
          const handle = modelOf(scope, req);
          const prompt = checkPrompt(handle, undefined, b.prompt_name ?? undefined);
          const viewed = await handle.viewTokens(texts, { addSpecialTokens: b.add_special_tokens !== false, prompt, maxTokens: handle.maxTokens });
          const over = viewed.counts.findIndex((n) => n > handle.maxTokens);
          if (over >= 0) {
            throw new PolyrayError(
              ErrorCode.INPUT_TOO_LARGE,
              `Input ${over} has ${viewed.counts[over]} tokens; model ${handle.name} accepts at most ${handle.maxTokens}`,
              { index: over },
            );
          }
          await scope.account.close('OK');
          // Built as JSON in the tokenizer thread: the event loop only joins the parts.
          return reply.type('application/json').send(`[${viewed.json.join(',')}]`);
        },
      ),
  );
}
