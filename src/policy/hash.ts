/**
 * Key hashing for the trace: a fast, seeded 53-bit hash of the cache key.
 *
 * The cache key is already `model@version:sha256(normalised input)`, so the trace never sees input text;
 * hashing it once more keeps the trace short (14 hex characters) and makes sampling a pure function of
 * the key: a key is sampled at rate r iff hash(key) / 2^53 < r, on every request and on every replica.
 * That is what makes a sampled trace faithful for cache simulation (a sampled key is always sampled,
 * so its reuse pattern is complete). 53 bits: at ten million distinct keys the chance of any collision
 * is below 1 %, and a collision only merges two keys' statistics.
 */

const TWO_53 = 2 ** 53;

/** cyrb53 (public domain): two 32-bit multiply-xorshift lanes combined into 53 bits. */
export function hash53(s: string, seed = 0x5eed): number {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < s.length; i++) {
    const ch = s.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const TWO_32 = 2 ** 32;

/**
 * The hash as fixed-width hex (14 characters), the form written to traces. By bytes from a table: `Number`
 * radix conversion of a 53-bit double costs ~15× more, and this runs once per traced lookup.
 */
export function hashHex(h: number): string {
  const hi = Math.floor(h / TWO_32);
  const lo = h >>> 0;
  return (
    HEX_BYTE[(hi >>> 16) & 0xff]! +
    HEX_BYTE[(hi >>> 8) & 0xff]! +
    HEX_BYTE[hi & 0xff]! +
    HEX_BYTE[lo >>> 24]! +
    HEX_BYTE[(lo >>> 16) & 0xff]! +
    HEX_BYTE[(lo >>> 8) & 0xff]! +
    HEX_BYTE[lo & 0xff]!
  );
}

/** Whether a key with hash `h` is in the sample at `rate` (0..1). Monotone: sampled at r ⇒ sampled at r' > r. */
export function inSample(h: number, rate: number): boolean {
  return rate >= 1 || h / TWO_53 < rate;
}
