/**
 * Output shaping at the edge: Matryoshka truncation with re-normalisation (the wire encodings are
 * vector codecs: src/cache/codec.ts `encodeWire`).
 * The cache always holds the full vector; these functions never mutate their input.
 */

/** First `dims` components, re-normalised to unit length (a zero vector stays zero). */
export function truncate(v: Float32Array, dims: number | undefined): Float32Array {
  if (dims === undefined || dims >= v.length) return v;
  const out = v.slice(0, dims);
  let s = 0;
  for (let i = 0; i < out.length; i++) s += out[i]! * out[i]!;
  const n = Math.sqrt(s);
  if (n > 0) for (let i = 0; i < out.length; i++) out[i] = out[i]! / n;
  return out;
}
