/**
 * What the REST routes (src/http/openai.ts, tei.ts) share: the PolyrayError behind an error (the request
 * scope's authentication throws it wrapped in a GraphQLError), the retry headers a refusal carries, one
 * text loader call for a list of inputs that fails as a whole, naming the first input that failed, and the
 * input field both protocols take (texts or token ids), its schema and its reading.
 */
import type DataLoader from 'dataloader';
import type { FastifyReply } from 'fastify';
import { GraphQLError } from 'graphql';
import type { AccountContext } from '../accounting/request.ts';
import { ErrorCode, httpStatusOf, isPolyrayError, PolyrayError } from '../errors.ts';
import type { RequestScope } from '../service/scope.ts';
import type { EmbedResult, TextInput } from '../service/types.ts';

/** The PolyrayError `e` is or wraps; undefined for anything else (an internal error). */
export function polyrayErrorOf(e: unknown): PolyrayError | undefined {
  const original = e instanceof GraphQLError && isPolyrayError(e.originalError) ? e.originalError : e;
  return isPolyrayError(original) ? original : undefined;
}

/**
 * The HTTP status of a code on the REST routes: GraphQL's (src/errors.ts), except that a full queue is 429
 * (with Retry-After), as OpenAI and TEI answer overload, so their clients back off and retry.
 */
export function restStatusOf(code: ErrorCode): number {
  return code === ErrorCode.OVERLOADED ? 429 : httpStatusOf[code];
}

/** `Retry-After` (seconds, at least 1) and `retry-after-ms` when the refusal says when to retry. */
export function setRetryHeaders(reply: FastifyReply, e: PolyrayError): void {
  const retry = e.extensions['retryAfterMs'];
  if (typeof retry === 'number' && retry >= 0)
    reply.header('retry-after-ms', String(Math.ceil(retry))).header('retry-after', String(Math.max(1, Math.ceil(retry / 1000))));
}

/** Every text through `loader` (one pipeline call); the first input that failed fails the request, its index named. */
export async function embedAll<K>(loader: DataLoader<K, EmbedResult>, texts: readonly K[]): Promise<EmbedResult[]> {
  const results = await Promise.all(texts.map((t) => loader.load(t).catch((e: unknown) => e as Error)));
  const failed = results.findIndex((r) => r instanceof Error);
  if (failed >= 0) {
    const e = results[failed] as Error;
    throw isPolyrayError(e) ? new PolyrayError(e.code, e.message, { ...e.extensions, index: failed }) : e;
  }
  return results as EmbedResult[];
}

const TOKEN_ID = { type: 'integer', minimum: 0, maximum: 2 ** 31 - 1 } as const;

/**
 * The schema of an input field: a text, texts, token ids (one input) or lists of token ids. One branch per
 * kind (not a list of "text or id" items): a list of a million ids is then checked id by id without trying
 * each against the other kinds.
 */
export function inputSchema(maxInputs: number) {
  return {
    description: `a text, a list of texts, a list of token ids, or a list of lists of token ids (at most ${maxInputs} inputs)`,
    anyOf: [
      { type: 'string' },
      { type: 'array', minItems: 1, items: { type: 'string' } },
      { type: 'array', minItems: 1, items: TOKEN_ID },
      { type: 'array', minItems: 1, items: { type: 'array', minItems: 1, items: TOKEN_ID } },
    ],
  } as const;
}

/** A value `inputSchema` accepted. */
export type InputField = string | readonly string[] | readonly number[] | readonly (readonly number[])[];

/** The inputs of a validated input field: texts, or token-id inputs (a flat list of ids is one input). */
export function inputsOf(input: InputField): TextInput[] {
  if (typeof input === 'string') return [input];
  if (typeof input[0] === 'string') return input as string[];
  if (typeof input[0] === 'number') return [{ ids: input as number[] }];
  return (input as number[][]).map((ids) => ({ ids }));
}

/** Responses are sent as JSON.stringify writes them: the response schemas are for /openapi.json only. */
export const stringify = () => (data: unknown) => JSON.stringify(data);

/**
 * One REST call in its request scope: `open` authenticates (its error is answered by `fail`), `work` answers;
 * whatever `work` throws closes the account under its code (nothing is left reserved) and is answered by
 * `fail` in the route's protocol shape. `work` closes the account itself when it succeeds.
 */
export async function inScope(
  open: () => RequestScope<AccountContext>,
  fail: (e: unknown) => FastifyReply,
  work: (scope: RequestScope<AccountContext>) => Promise<FastifyReply>,
): Promise<FastifyReply> {
  let scope: RequestScope<AccountContext>;
  try {
    scope = open();
  } catch (e) {
    return fail(e);
  }
  try {
    return await work(scope);
  } catch (e) {
    await scope.account.close(polyrayErrorOf(e)?.code ?? ErrorCode.INTERNAL_SERVER_ERROR).catch(() => undefined);
    return fail(e);
  }
}
