/** Small helpers shared by the accounting tests (standalone and Cluster). */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { GqlResponse } from './polyray.ts';

/** `extensions.cost` of a response. */
export type Cost = { estimated: number; charged: number; remaining: number; resetMs: number };

/** n random one-letter words: n tokens, 2n - 1 characters, practically never cached before. */
export function words(n: number): string {
  return Array.from(randomBytes(n), (x) => String.fromCharCode(97 + (x % 26))).join(' ');
}

/** The response's `extensions.cost`; fails the test when it is missing. */
export function costOf<T>(r: GqlResponse<T>): Cost {
  const c = r.extensions?.['cost'] as Cost | undefined;
  assert.ok(c, `response has extensions.cost: ${JSON.stringify(r)}`);
  return c;
}

/** The code of the response's first error, if any. */
export function code<T>(r: GqlResponse<T>): unknown {
  return r.errors?.[0]?.extensions?.['code'];
}
