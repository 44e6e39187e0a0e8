/**
 * Cache keys (src/cache/keys.ts): the ASCII fast path of `normaliseText` gives exactly what the full
 * normalisation gives, for any string; the one-shot hash is SHA-256 as before.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import { contentHash, normaliseText } from '../src/cache/keys.ts';

const full = (text: string): string => text.normalize('NFC').replace(/\s+/gu, ' ').trim();

test('normaliseText equals NFC + collapsed whitespace + trim, fast path or not', () => {
  const ascii = fc.string({ unit: fc.constantFrom(' ', ' ', 'a', 'B', '1', '!', '~', '\t', '\n', '\u00a0', 'é', 'e\u0301') });
  fc.assert(
    fc.property(fc.oneof(ascii, fc.string({ unit: 'binary' }), fc.string({ unit: 'grapheme' })), (s) => {
      assert.equal(normaliseText(s), full(s));
    }),
    { numRuns: 3000 },
  );
  for (const s of ['', ' ', 'a', 'a b', ' a', 'a ', 'a  b', 'a\tb', 'caf\u00e9', 'cafe\u0301']) assert.equal(normaliseText(s), full(s), JSON.stringify(s));
});

test('contentHash is SHA-256 in base64url, of strings and bytes', () => {
  for (const v of ['', 'hello', 'ünïcödé']) assert.equal(contentHash(v), createHash('sha256').update(v).digest('base64url'));
  const bytes = Uint8Array.from([0xff, 0, 1, 2]);
  assert.equal(contentHash(bytes), createHash('sha256').update(bytes).digest('base64url'));
});
