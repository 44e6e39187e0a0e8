/**
 * Vector codecs: every byte form of an embedding vector, and the one float32 <-> float16 conversion.
 *
 * Owns: the byte layout of a value stored in the global (Redis) tier (`encodeVector`/`decodeVector`),
 * the wire encodings of `Embedding.base64` (`encodeWire`), and IEEE 754 binary16 rounding, which the
 * ONNX writer (float16 weights) and the TF.js reader (float16 weights) use as well.
 *
 * Stored layout (all little-endian, 8-byte header so the payload stays 4-byte aligned within the value):
 *
 *   offset 0  u8   magic 0x50 ('P')
 *   offset 1  u8   magic 0x59 ('Y')
 *   offset 2  u8   format version (VECTOR_CODEC_VERSION = 1)
 *   offset 3  u8   element type: 1 = float32, 2 = float16 (IEEE 754 binary16)
 *   offset 4  u32  dimension count
 *   offset 8  ...  dims * 4 (float32) or dims * 2 (float16) bytes of payload
 *
 * `decodeVector` accepts a value only if every header field is known and the length is exactly
 * header + payload; anything else (other writers, truncation, a future version) is `undefined`, never an
 * exception, so the cache can count it as corrupt and treat it as a miss.
 *
 * float16 precision. Conversion is round-to-nearest, ties-to-even, with gradual underflow (subnormals),
 * overflow to ±Infinity (|x| >= 65520) and NaN kept as a quiet NaN. For |x| in the normal half range
 * [2^-14, 65504] the error is |f16(x) - x| <= 2^-11 * |x| (half a unit in the last place of an 11-bit
 * significand). Below 2^-14 (subnormal halves) the absolute error is <= 2^-25. Hence for a unit-norm vector
 * (every |component| <= 1) the absolute error per component is <= 2^-11 ≈ 4.9e-4 (in fact <= 2^-12 ≈
 * 2.44e-4, because components below 1 have an ulp of at most 2^-11 and 1 itself is exact); the cosine
 * similarity of two such vectors then moves by well under 1e-3. float32 is stored bit-exactly.
 */
import { endianness } from 'node:os';

/** Element type of a stored vector. */
export type VectorEncoding = 'float32' | 'float16';

/**
 * Wire encodings of `Embedding.base64` (the GraphQL enum `VectorEncoding`): little-endian float32 or
 * float16 elements without a header; INT8, each component × 127 rounded and clamped to ±127; BINARY, one
 * bit per component (set when > 0), most significant bit first.
 */
export type WireEncoding = 'FLOAT32' | 'FLOAT16' | 'INT8' | 'BINARY';

export const VECTOR_CODEC_VERSION = 1;
/** Size of the header that precedes the payload, in bytes. */
export const VECTOR_HEADER_BYTES = 8;

const MAGIC0 = 0x50;
const MAGIC1 = 0x59;
const TYPE_FLOAT32 = 1;
const TYPE_FLOAT16 = 2;

// A Float32Array's memory can be copied byte-for-byte only where the host is little-endian (every platform
// Node ships for today); the DataView path keeps the format correct elsewhere.
const HOST_LE = endianness() === 'LE';

/** Bytes an encoded vector of `dims` elements takes, header included. */
export function encodedByteLength(dims: number, type: VectorEncoding): number {
  return VECTOR_HEADER_BYTES + dims * (type === 'float16' ? 2 : 4);
}

/** Encodes `v` as header + little-endian payload. Copies the data, so later changes to `v` do not leak in. */
export function encodeVector(v: Float32Array, type: VectorEncoding = 'float32'): Buffer {
  const dims = v.length;
  const buf = Buffer.allocUnsafe(encodedByteLength(dims, type));
  buf[0] = MAGIC0;
  buf[1] = MAGIC1;
  buf[2] = VECTOR_CODEC_VERSION;
  buf[3] = type === 'float16' ? TYPE_FLOAT16 : TYPE_FLOAT32;
  buf.writeUInt32LE(dims, 4);
  writeElements(v, type, buf, VECTOR_HEADER_BYTES);
  return buf;
}

/** Writes `v`'s elements little-endian from `offset` (the caller sized `buf`). */
function writeElements(v: Float32Array, type: VectorEncoding, buf: Buffer, offset: number): void {
  if (type === 'float16') {
    for (let i = 0; i < v.length; i++) buf.writeUInt16LE(float32ToFloat16Bits(v[i]!), offset + 2 * i);
  } else if (HOST_LE) {
    buf.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), offset);
  } else {
    for (let i = 0; i < v.length; i++) buf.writeFloatLE(v[i]!, offset + 4 * i);
  }
}

/** `v` in a wire encoding, as base64 (see `WireEncoding`). Never mutates `v`. */
export function encodeWire(v: Float32Array, encoding: WireEncoding): string {
  switch (encoding) {
    case 'FLOAT32':
    case 'FLOAT16': {
      // float32 on a little-endian host: the vector's own bytes are the wire form, base64'd without a copy.
      if (encoding === 'FLOAT32' && HOST_LE) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
      const type = encoding === 'FLOAT16' ? 'float16' : 'float32';
      const b = Buffer.allocUnsafe(v.length * (type === 'float16' ? 2 : 4));
      writeElements(v, type, b, 0);
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

/**
 * Decodes a value written by `encodeVector`. Returns `undefined` for anything malformed (not a byte
 * buffer, wrong magic, unknown version or type, length not matching the header); never throws.
 */
export function decodeVector(buf: Uint8Array): Float32Array | undefined {
  try {
    if (!(buf instanceof Uint8Array) || buf.length < VECTOR_HEADER_BYTES) return undefined;
    if (buf[0] !== MAGIC0 || buf[1] !== MAGIC1 || buf[2] !== VECTOR_CODEC_VERSION) return undefined;
    const type = buf[3];
    if (type !== TYPE_FLOAT32 && type !== TYPE_FLOAT16) return undefined;
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const dims = view.getUint32(4, true);
    const elementBytes = type === TYPE_FLOAT16 ? 2 : 4;
    // Compare in floating point: dims * 4 can exceed 2^32 but never 2^53, so this is exact.
    if (buf.length !== VECTOR_HEADER_BYTES + dims * elementBytes) return undefined;
    const out = new Float32Array(dims);
    if (type === TYPE_FLOAT16) {
      for (let i = 0; i < dims; i++) out[i] = HALF_TO_FLOAT[view.getUint16(VECTOR_HEADER_BYTES + 2 * i, true)]!;
    } else if (HOST_LE) {
      // Byte copy into a fresh, aligned array: Buffers handed out by clients are often unaligned slices.
      new Uint8Array(out.buffer).set(buf.subarray(VECTOR_HEADER_BYTES));
    } else {
      for (let i = 0; i < dims; i++) out[i] = view.getFloat32(VECTOR_HEADER_BYTES + 4 * i, true);
    }
    return out;
  } catch {
    return undefined;
  }
}

// Scratch views to read a float32's bit pattern without allocation.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/**
 * IEEE 754 binary16 bit pattern nearest to `x` (first rounded to float32, as a Float32Array element would
 * be), ties to even. The one float16 encoder: the codecs here, float16 ONNX weights and tests use it.
 */
export function float32ToFloat16Bits(x: number): number {
  scratchF32[0] = x;
  const bits = scratchU32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const abs = bits & 0x7fffffff;
  const exp = abs >>> 23; // biased float32 exponent
  if (exp === 0xff) {
    // Infinity stays infinity; every NaN becomes the canonical quiet NaN (payloads carry no meaning here).
    return abs === 0x7f800000 ? sign | 0x7c00 : sign | 0x7e00;
  }
  if (exp >= 143) return sign | 0x7c00; // |x| >= 2^16: beyond the largest half even before rounding.
  if (exp >= 113) {
    // Normal half: rebias the exponent (127 -> 15), keep the top 10 mantissa bits, round on the other 13.
    const rest = abs & 0x1fff;
    let h = ((exp - 112) << 10) | ((abs >>> 13) & 0x3ff);
    // A carry out of the mantissa bumps the exponent, which is exactly right (and yields 0x7c00 = Infinity
    // for |x| >= 65520).
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h += 1;
    return sign | h;
  }
  // Subnormal half (or zero): the result counts units of 2^-24. With the implicit bit restored the
  // float32 value is mant * 2^(exp - 150), i.e. mant >> (126 - exp) units, rounded on the dropped bits.
  if (exp < 102) return sign; // below 2^-25 (half the smallest subnormal): rounds to zero.
  const mant = (abs & 0x7fffff) | 0x800000;
  const shift = 126 - exp; // 14..24
  let q = mant >>> shift;
  const rest = mant & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  // q may reach 0x400, the smallest normal half, which is the correct encoding of that value.
  if (rest > halfway || (rest === halfway && (q & 1) === 1)) q += 1;
  return sign | q;
}

/** The float value of a binary16 bit pattern (exact: every half is representable in float32). */
export function float16BitsToFloat32(h: number): number {
  return HALF_TO_FLOAT[h & 0xffff]!;
}

function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// 65536-entry lookup (256 KiB): decoding is on the read path of every cache hit, a table load beats
// recomputing exponent and mantissa per component.
const HALF_TO_FLOAT = new Float32Array(65536);
for (let h = 0; h < 65536; h++) HALF_TO_FLOAT[h] = halfToNumber(h);
