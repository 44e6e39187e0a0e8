/**
 * Output shaping at the edge: Matryoshka truncation with re-normalisation, and wire encodings.
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

export type VectorEncoding = 'FLOAT32' | 'FLOAT16' | 'INT8' | 'BINARY';

/** IEEE 754 half precision, round to nearest even, with subnormals, infinities and NaN. */
export function toFloat16Bits(value: number): number {
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  f32[0] = value;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let m = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    if (rem > half || (rem === half && (m & 1))) m++;
    return sign | m;
  }
  let m = mant >>> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (m & 1))) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

export function encodeVector(v: Float32Array, encoding: VectorEncoding): string {
  switch (encoding) {
    case 'FLOAT32': {
      const b = Buffer.alloc(v.length * 4);
      for (let i = 0; i < v.length; i++) b.writeFloatLE(v[i]!, i * 4);
      return b.toString('base64');
    }
    case 'FLOAT16': {
      const b = Buffer.alloc(v.length * 2);
      for (let i = 0; i < v.length; i++) b.writeUInt16LE(toFloat16Bits(v[i]!), i * 2);
      return b.toString('base64');
    }
    case 'INT8': {
      const b = Buffer.alloc(v.length);
      for (let i = 0; i < v.length; i++) b.writeInt8(Math.max(-127, Math.min(127, Math.round(v[i]! * 127))), i);
      return b.toString('base64');
    }
    case 'BINARY': {
      const b = Buffer.alloc(Math.ceil(v.length / 8));
      for (let i = 0; i < v.length; i++) if (v[i]! > 0) b[i >> 3]! |= 0x80 >> (i & 7);
      return b.toString('base64');
    }
    default: {
      const never: never = encoding;
      throw new TypeError(`unknown encoding ${String(never)}`);
    }
  }
}
