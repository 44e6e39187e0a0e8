/**
 * Text Embeddings Inference (TEI) compatible `POST /embed`, so TEI clients work unchanged, on the same
 * request scope as GraphQL and /v1 (cache, batches, quotas, books).
 *
 * Wire shape (TEI's): `{inputs: string | string[], normalize?: true, truncate?: false,
 * truncation_direction?: "Right" | "Left", prompt_name?, dimensions?}` → `[[float, …], …]`, one vector per
 * input in order. A header `x-polyray-model` (or `?model=`) picks the model; without it, the default post
 * model (`POLYRAY_DEFAULT_POST_MODEL`) when it reads text. `normalize: false` returns the model's output as
 * it is, `true` L2-normalises it (a no-op for models that normalise). Headers: TEI's `x-compute-tokens`,
 * `x-compute-time`, `x-inference-time`, `x-queue-time` (ms, rounded), and `x-polyray-cost`,
 * `x-polyray-cache-hits`.
 *
 * Errors in TEI's shape `{error, error_type}`: `Validation` (400/413/422), `Unauthorized` (401/403),
 * `Overloaded` (429, with Retry-After), `Unhealthy` (503), `Backend` otherwise.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { AccountContext } from '../accounting/request.ts';
import { ErrorCode, httpStatusOf, PolyrayError } from '../errors.ts';
import { checkDimensions, checkPrompt } from '../resolvers/args.ts';
import { truncate as cut } from '../resolvers/shape.ts';
import { normalizeInPlace } from '../runtime/pooling.ts';
import type { RequestScope } from '../service/scope.ts';
import { embedAll, polyrayErrorOf, setRetryHeaders } from './rest.ts';

export interface TeiDeps {
  scope(headers: Record<string, string | string[] | undefined>): RequestScope<AccountContext>;
  defaultModel: string;
  maxInputs: number;
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
  const status = httpStatusOf[original.code];
  setRetryHeaders(reply, original);
  return reply.code(status).send({ error: original.message, error_type: errorType(status) });
}

const bad = (message: string, field: string): PolyrayError => new PolyrayError(ErrorCode.BAD_USER_INPUT, message, { field });

export function registerTeiRoutes(app: FastifyInstance, deps: TeiDeps): void {
  app.post(
    '/embed',
    {
      errorHandler: (err: { statusCode?: number; message: string }, _req, reply) =>
        reply.code(err.statusCode && err.statusCode < 500 ? err.statusCode : 500).send({ error: err.message, error_type: errorType(err.statusCode ?? 500) }),
    },
    async (req, reply) => {
      let scope: RequestScope<AccountContext>;
      try {
        scope = deps.scope(req.headers);
      } catch (e) {
        return sendError(reply, e);
      }
      const t0 = performance.now();
      try {
        const b = req.body as Record<string, unknown> | null;
        if (typeof b !== 'object' || b === null || Array.isArray(b)) throw bad('The request body must be a JSON object', 'body');
        const inputs = b['inputs'];
        const texts = typeof inputs === 'string' ? [inputs] : inputs;
        if (!Array.isArray(texts) || texts.length === 0) throw bad('"inputs" must be a string or a non-empty list of strings', 'inputs');
        const at = texts.findIndex((x) => typeof x !== 'string');
        if (at >= 0) throw bad(`"inputs[${at}]" must be a string`, `inputs[${at}]`);
        if (texts.length > deps.maxInputs) {
          throw new PolyrayError(ErrorCode.TOO_MANY_INPUTS, `"inputs" has ${texts.length} items; the limit is ${deps.maxInputs} (POLYRAY_MAX_INPUTS)`, {
            field: 'inputs',
          });
        }
        for (const f of ['normalize', 'truncate'] as const) if (b[f] !== undefined && typeof b[f] !== 'boolean') throw bad(`"${f}" must be true or false`, f);
        const dir = b['truncation_direction'];
        if (dir !== undefined && dir !== 'Left' && dir !== 'Right' && dir !== 'left' && dir !== 'right')
          throw bad('"truncation_direction" must be "Left" or "Right"', 'truncation_direction');
        const promptName = b['prompt_name'];
        if (promptName !== undefined && promptName !== null && typeof promptName !== 'string') throw bad('"prompt_name" must be a string', 'prompt_name');
        const dims = b['dimensions'];
        if (dims !== undefined && dims !== null && (typeof dims !== 'number' || !Number.isInteger(dims)))
          throw bad('"dimensions" must be an integer', 'dimensions');
        const q = req.query as Record<string, unknown>;
        const named = req.headers['x-polyray-model'] ?? q['model'];
        const asked = typeof named === 'string' && named !== '' ? named : deps.defaultModel;
        const handle = scope.model(deps.aliases.get(asked) ?? asked);
        if (handle.kind !== 'text') throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${handle.name} does not read text`, { field: 'model' });
        const size = checkDimensions(handle, typeof dims === 'number' ? dims : null);
        const options = {
          prompt: checkPrompt(handle, undefined, typeof promptName === 'string' ? promptName : undefined),
          truncate: b['truncate'] === true,
          ...(typeof dir === 'string' ? { side: dir.toLowerCase() as 'left' | 'right' } : {}),
        };
        const loader = scope.texts(handle, options);
        const ok = await embedAll(loader, texts as string[]);
        const cost = await scope.account.finish();
        const computeTokens = ok.reduce((s, r) => s + r.tokens, 0);
        const inferenceMs = ok.reduce((s, r) => s + r.inferenceMs, 0);
        const totalMs = performance.now() - t0;
        const normalize = b['normalize'] !== false;
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
      } catch (e) {
        await scope.account.finish().catch(() => undefined);
        return sendError(reply, e);
      }
    },
  );
}
