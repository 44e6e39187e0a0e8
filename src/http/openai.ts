/**
 * OpenAI-compatible REST: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{id}`, so code written
 * for the OpenAI SDK (or LangChain, LlamaIndex) runs against Polyray unchanged, on the same cache tiers,
 * batches, quotas and books as GraphQL: each call is a request scope (src/service/scope.ts), built from its
 * headers like a GraphQL operation's, and settles its account before it answers.
 *
 * Wire shape (OpenAI's): `{input, model, encoding_format?, dimensions?, user?}` → `{object: "list", data:
 * [{object: "embedding", index, embedding}], model, usage: {prompt_tokens, total_tokens}}`. `embedding` is a
 * list of floats, or with `encoding_format: "base64"` (the SDKs' default) little-endian float32 as base64.
 * `prompt_tokens` counts the tokens the model reads for every input, computed or served from the cache
 * (cache hits are counted by tokenising again, off the event loop). `user` is accepted and ignored for
 * billing (the key decides who pays).
 *
 * Errors in OpenAI's shape `{error: {message, type, param, code}}` with the status of the Polyray code
 * (src/errors.ts `httpStatusOf`); 429 carries `Retry-After` (seconds) and `retry-after-ms`, which the SDKs
 * honour. Token-id inputs (arrays of integers) are refused for now: they are ids of OpenAI's tokenizer,
 * which a Polyray model does not share.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import { encodeWire } from '../cache/codec.ts';
import { ErrorCode, httpStatusOf, PolyrayError } from '../errors.ts';
import type { AccountContext } from '../accounting/request.ts';
import { checkDimensions, checkPrompt } from '../resolvers/args.ts';
import { truncate } from '../resolvers/shape.ts';
import type { ModelInfo, TextHandle } from '../runtime/handle.ts';
import type { RequestScope } from '../service/scope.ts';
import { embedAll, polyrayErrorOf, setRetryHeaders } from './rest.ts';
import type { EmbedResult } from '../service/types.ts';

export interface OpenAiDeps {
  /** The request scope of a call, from its headers (throws UNAUTHENTICATED). */
  scope(headers: Record<string, string | string[] | undefined>): RequestScope<AccountContext>;
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
  const status = httpStatusOf[original.code];
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

const bad = (message: string, param: string): PolyrayError => new PolyrayError(ErrorCode.BAD_USER_INPUT, message, { param });

interface Parsed {
  texts: string[];
  model: string;
  base64: boolean;
  dimensions: number | undefined;
}

/** The request body, checked field by field; a BAD_USER_INPUT names the field (its `param`). */
function parse(body: unknown, maxInputs: number): Parsed {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('The request body must be a JSON object', 'body');
  const b = body as Record<string, unknown>;
  const model = b['model'];
  if (typeof model !== 'string' || model === '' || model.length > 256) throw bad('"model" must be a model name (a non-empty string)', 'model');
  const input = b['input'];
  let texts: string[];
  if (typeof input === 'string') texts = [input];
  else if (Array.isArray(input)) {
    if (input.length === 0) throw bad('"input" must not be empty', 'input');
    if (input.every((x) => typeof x === 'number') || input.every((x) => Array.isArray(x))) {
      throw bad('Token-id inputs are not supported: send the text (ids of another tokenizer mean nothing to this model)', 'input');
    }
    const at = input.findIndex((x) => typeof x !== 'string');
    if (at >= 0) throw bad(`"input[${at}]" must be a string`, `input[${at}]`);
    texts = input as string[];
  } else throw bad('"input" must be a string or a list of strings', 'input');
  if (texts.length > maxInputs) {
    throw new PolyrayError(ErrorCode.TOO_MANY_INPUTS, `"input" has ${texts.length} items; the limit is ${maxInputs} per request (POLYRAY_MAX_INPUTS)`, {
      param: 'input',
      limit: maxInputs,
    });
  }
  const format = b['encoding_format'] ?? 'float';
  if (format !== 'float' && format !== 'base64') throw bad('"encoding_format" must be "float" or "base64"', 'encoding_format');
  const dims = b['dimensions'];
  if (dims !== undefined && dims !== null && (typeof dims !== 'number' || !Number.isInteger(dims))) throw bad('"dimensions" must be an integer', 'dimensions');
  const user = b['user'];
  if (user !== undefined && typeof user !== 'string') throw bad('"user" must be a string', 'user');
  return { texts, model, base64: format === 'base64', dimensions: typeof dims === 'number' ? dims : undefined };
}

/** Errors before the handler (a body that is not JSON, over the body limit): OpenAI's shape too. */
function transportError(err: { statusCode?: number; code?: string; message: string }, _req: unknown, reply: FastifyReply): FastifyReply {
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
  app.post('/v1/embeddings', { errorHandler: transportError }, async (req, reply) => {
    let scope: RequestScope<AccountContext>;
    try {
      scope = deps.scope(req.headers);
    } catch (e) {
      return sendError(reply, e);
    }
    try {
      const p = parse(req.body, deps.maxInputs);
      const handle = scope.model(deps.aliases.get(p.model) ?? p.model);
      if (handle.kind !== 'text') {
        throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${handle.name} does not read text; /v1/embeddings takes text models`, { param: 'model' });
      }
      const dims = checkDimensions(handle, p.dimensions ?? null);
      const options = { prompt: checkPrompt(handle, undefined, undefined) };
      const loader = scope.texts(handle, options);
      const ok = await embedAll(loader, p.texts);
      const tokens = await promptTokens(scope, handle as TextHandle, options, p.texts, ok);
      const cost = await scope.account.finish();
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
    } catch (e) {
      await scope.account.finish().catch(() => undefined);
      return sendError(reply, e);
    }
  });

  const modelView = (m: ModelInfo) => ({ id: m.name, object: 'model', created: 0, owned_by: 'polyray' });
  app.get('/v1/models', async (req, reply) => {
    try {
      const scope = deps.scope(req.headers);
      const mine = deps.models().filter((m) => m.modality === 'TEXT' && scope.account.mayUse(m.name));
      const aliases = [...deps.aliases]
        .filter(([, target]) => mine.some((m) => m.name === target))
        .map(([alias]) => ({ id: alias, object: 'model', created: 0, owned_by: 'polyray' }));
      return reply.send({ object: 'list', data: [...mine.map(modelView), ...aliases] });
    } catch (e) {
      return sendError(reply, e);
    }
  });
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (req, reply) => {
    try {
      const scope = deps.scope(req.headers);
      const name = deps.aliases.get(req.params.id) ?? req.params.id;
      const m = deps.models().find((x) => x.name === name && x.modality === 'TEXT');
      if (!m) throw new PolyrayError(ErrorCode.MODEL_NOT_FOUND, `The model "${req.params.id.slice(0, 64)}" does not exist`, { param: 'model' });
      if (!scope.account.mayUse(m.name)) throw new PolyrayError(ErrorCode.FORBIDDEN, `This client may not use model "${m.name}"`, { param: 'model' });
      return reply.send({ ...modelView(m), id: req.params.id });
    } catch (e) {
      return sendError(reply, e);
    }
  });
}

/** Tokens the model reads for every input: counted when computed, tokenised again (off the loop) for cache hits. */
async function promptTokens(
  scope: RequestScope<AccountContext>,
  handle: TextHandle,
  options: { prompt: string },
  texts: readonly string[],
  results: readonly EmbedResult[],
): Promise<number> {
  const counts = scope.tokenCounts(handle, options);
  const per = await Promise.all(results.map((r, i) => (r.inputTokens ? r.inputTokens.kept : counts.load(texts[i]!).then((c) => c.kept))));
  return per.reduce((a, b) => a + b, 0);
}
