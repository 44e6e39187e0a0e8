/**
 * What the REST routes (src/http/openai.ts, tei.ts) share: the PolyrayError behind an error (the request
 * scope's authentication throws it wrapped in a GraphQLError), the retry headers a refusal carries, and
 * one text loader call for a list of inputs that fails as a whole, naming the first input that failed.
 */
import type DataLoader from 'dataloader';
import type { FastifyReply } from 'fastify';
import { GraphQLError } from 'graphql';
import { isPolyrayError, PolyrayError } from '../errors.ts';
import type { EmbedResult } from '../service/types.ts';

/** The PolyrayError `e` is or wraps; undefined for anything else (an internal error). */
export function polyrayErrorOf(e: unknown): PolyrayError | undefined {
  const original = e instanceof GraphQLError && isPolyrayError(e.originalError) ? e.originalError : e;
  return isPolyrayError(original) ? original : undefined;
}

/** `Retry-After` (seconds, at least 1) and `retry-after-ms` when the refusal says when to retry. */
export function setRetryHeaders(reply: FastifyReply, e: PolyrayError): void {
  const retry = e.extensions['retryAfterMs'];
  if (typeof retry === 'number' && retry >= 0)
    reply.header('retry-after-ms', String(Math.ceil(retry))).header('retry-after', String(Math.max(1, Math.ceil(retry / 1000))));
}

/** Every text through `loader` (one pipeline call); the first input that failed fails the request, its index named. */
export async function embedAll(loader: DataLoader<string, EmbedResult>, texts: readonly string[]): Promise<EmbedResult[]> {
  const results = await Promise.all(texts.map((t) => loader.load(t).catch((e: unknown) => e as Error)));
  const failed = results.findIndex((r) => r instanceof Error);
  if (failed >= 0) {
    const e = results[failed] as Error;
    throw isPolyrayError(e) ? new PolyrayError(e.code, e.message, { ...e.extensions, index: failed }) : e;
  }
  return results as EmbedResult[];
}
