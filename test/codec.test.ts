/**
 * Properties of the vector codec: exact float32 round trip, float16 rounding (nearest-even, checked
 * exhaustively on every half and every midpoint) and its documented error bounds, and a decoder that
 * rejects anything malformed without throwing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  decodeVector,
  encodeVector,
  encodedByteLength,
  float16BitsToFloat32,
  float32ToFloat16Bits,
  VECTOR_HEADER_BYTES,
  type VectorEncoding,
} from '../src/cache/codec.ts';

const RUNS = { numRuns: 300 };

const f32 = fc.float({ noDefaultInfinity: false, noNaN: false });
const vector = (maxLength = 64) => fc.array(f32, { maxLength }).map((a) => Float32Array.from(a));

function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < a.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
}

test('float32 round trip is bit-exact (NaN payloads, -0 and infinities included)', () => {
  fc.assert(
    fc.property(vector(), (v) => {
      const buf = encodeVector(v, 'float32');
      assert.equal(buf.length, encodedByteLength(v.length, 'float32'));
      const out = decodeVector(buf);
      assert.ok(out);
      assert.ok(sameBits(v, out));
    }),
    RUNS,
  );
});

test('decode works on unaligned slices of a larger buffer', () => {
  fc.assert(
    fc.property(vector(16), fc.constantFrom<VectorEncoding>('float32', 'float16'), fc.nat(7), (v, type, pad) => {
      const enc = encodeVector(v, type);
      const big = Buffer.alloc(enc.length + pad + 3, 0xaa);
      enc.copy(big, pad);
      const out = decodeVector(big.subarray(pad, pad + enc.length));
      assert.ok(out);
      assert.deepEqual(out, decodeVector(enc));
    }),
    RUNS,
  );
});

test('every half survives half -> float -> half; NaNs stay NaN', () => {
  for (let h = 0; h < 0x10000; h++) {
    const x = float16BitsToFloat32(h);
    const back = float32ToFloat16Bits(x);
    if (Number.isNaN(x)) {
      assert.ok(Number.isNaN(float16BitsToFloat32(back)), `NaN 0x${h.toString(16)}`);
    } else {
      assert.equal(back, h, `half 0x${h.toString(16)}`);
    }
  }
});

test('midpoints between adjacent halves round to the even neighbour', () => {
  // Every midpoint of two finite halves is exactly representable in float32 (12 significant bits).
  for (let h = 0; h < 0x7bff; h++) {
    const lo = float16BitsToFloat32(h);
    const hi = float16BitsToFloat32(h + 1);
    const mid = (lo + hi) / 2;
    assert.equal(Math.fround(mid), mid);
    const even = (h & 1) === 0 ? h : h + 1;
    assert.equal(float32ToFloat16Bits(mid), even, `+mid 0x${h.toString(16)}`);
    assert.equal(float32ToFloat16Bits(-mid), even | 0x8000, `-mid 0x${h.toString(16)}`);
    // Just off the midpoint, the nearer neighbour wins.
    assert.equal(float32ToFloat16Bits(nextUp(mid)), h + 1);
    assert.equal(float32ToFloat16Bits(nextDown(mid)), h);
  }
  // Between the largest half (65504) and the next binade (65536 = overflow): 65520 ties to "even" = Infinity.
  assert.equal(float32ToFloat16Bits(65519.99), 0x7bff);
  assert.equal(float32ToFloat16Bits(65520), 0x7c00);
  assert.equal(float32ToFloat16Bits(1e9), 0x7c00);
  assert.equal(float32ToFloat16Bits(-Infinity), 0xfc00);
  assert.ok(Number.isNaN(float16BitsToFloat32(float32ToFloat16Bits(NaN))));
  // Subnormals and underflow: 2^-25 (exactly half the smallest subnormal) ties to 0; a bit more is 2^-24.
  assert.equal(float32ToFloat16Bits(2 ** -25), 0);
  assert.equal(float32ToFloat16Bits(nextUp(2 ** -25)), 1);
  assert.equal(float32ToFloat16Bits(3 * 2 ** -25), 2); // 1.5 units ties to 2 (even)
  assert.equal(float32ToFloat16Bits(1e-10), 0);
  assert.equal(float32ToFloat16Bits(-0), 0x8000);
  assert.equal(float32ToFloat16Bits(2 ** -14), 0x0400); // smallest normal
});

test('float16 conversion picks the nearest half for arbitrary floats (ties to even)', () => {
  fc.assert(
    fc.property(fc.float({ noNaN: true, noDefaultInfinity: true, min: -65504, max: 65504 }), (x) => {
      const h = float32ToFloat16Bits(x);
      const d = float16BitsToFloat32(h);
      const err = Math.abs(d - x);
      // Neighbours in magnitude (same sign); out-of-range neighbours are ignored.
      for (const n of [h - 1, h + 1]) {
        if ((n & 0x7fff) > 0x7bff || (n & 0x8000) !== (h & 0x8000) || n < 0) continue;
        const dn = float16BitsToFloat32(n);
        const errN = Math.abs(dn - x);
        assert.ok(err < errN || (err === errN && (h & 1) === 0), `x=${x} h=${h} n=${n}`);
      }
    }),
    { numRuns: 2000 },
  );
});

test('float16 error bound: relative <= 2^-11 in the normal range, absolute <= 2^-25 below it', () => {
  fc.assert(
    fc.property(fc.float({ noNaN: true, noDefaultInfinity: true, min: -65504, max: 65504 }), (x) => {
      const d = float16BitsToFloat32(float32ToFloat16Bits(x));
      const err = Math.abs(d - x);
      if (Math.abs(x) >= 2 ** -14) assert.ok(err <= 2 ** -11 * Math.abs(x), `x=${x} err=${err}`);
      else assert.ok(err <= 2 ** -25, `x=${x} err=${err}`);
    }),
    { numRuns: 5000 },
  );
});

test('float16 on unit-norm vectors: absolute error per component <= 2^-12 (< 4.9e-4)', () => {
  const unitVector = fc
    .array(fc.float({ noNaN: true, noDefaultInfinity: true, min: -1, max: 1 }), { minLength: 1, maxLength: 1024 })
    .filter((a) => a.some((x) => x !== 0))
    .map((a) => {
      const n = Math.hypot(...a);
      return Float32Array.from(a, (x) => x / n);
    });
  fc.assert(
    fc.property(unitVector, (v) => {
      const out = decodeVector(encodeVector(v, 'float16'));
      assert.ok(out);
      assert.equal(out.length, v.length);
      for (let i = 0; i < v.length; i++) {
        const err = Math.abs(out[i]! - v[i]!);
        assert.ok(err <= 2 ** -12, `component ${i}: ${v[i]} -> ${out[i]}`);
        assert.ok(err <= 4.9e-4);
      }
    }),
    { numRuns: 200 },
  );
});

test('float16 encoding is header + 2 bytes per component; inf and NaN survive', () => {
  const v = Float32Array.from([0, -0, 1, -1, Infinity, -Infinity, NaN, 1e9, 6e-8]);
  const buf = encodeVector(v, 'float16');
  assert.equal(buf.length, VECTOR_HEADER_BYTES + 2 * v.length);
  const out = decodeVector(buf)!;
  assert.deepEqual([...out.slice(0, 6)], [0, -0, 1, -1, Infinity, -Infinity]);
  assert.ok(Number.isNaN(out[6]));
  assert.equal(out[7], Infinity);
  assert.equal(out[8], 2 ** -24 * 1); // 6e-8 is nearest to one subnormal unit (5.96e-8)
  assert.ok(Object.is(out[1], -0));
});

test('decode never throws on arbitrary bytes', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      const out = decodeVector(Buffer.from(bytes));
      assert.ok(out === undefined || out instanceof Float32Array);
    }),
    { numRuns: 2000 },
  );
  // Bytes that start like a valid header exercise the deeper checks.
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), fc.constantFrom(1, 2, 3, 0), fc.nat(40), (tail, type, dims) => {
      const head = Buffer.from([0x50, 0x59, 1, type, 0, 0, 0, 0]);
      head.writeUInt32LE(dims, 4);
      const out = decodeVector(Buffer.concat([head, tail]));
      const expectedLen = 8 + dims * (type === 1 ? 4 : 2);
      if ((type === 1 || type === 2) && tail.length + 8 === expectedLen) assert.ok(out && out.length === dims);
      else assert.equal(out, undefined);
    }),
    { numRuns: 2000 },
  );
  for (const junk of [undefined, null, 'PY', 42, {}, [1, 2, 3], new Uint16Array(8)] as unknown[]) {
    assert.equal(decodeVector(junk as Uint8Array), undefined);
  }
});

test('truncated, extended or re-headed buffers are rejected', () => {
  fc.assert(
    fc.property(
      vector(32),
      fc.constantFrom<VectorEncoding>('float32', 'float16'),
      fc.integer({ min: 1, max: 16 }),
      fc.uint8Array({ minLength: 1, maxLength: 16 }),
      (v, type, cut, extra) => {
        const buf = encodeVector(v, type);
        assert.equal(decodeVector(buf.subarray(0, Math.max(0, buf.length - cut))), undefined);
        assert.equal(decodeVector(Buffer.concat([buf, extra])), undefined);
        for (const [offset, value] of [
          [0, 0x51], // magic
          [1, 0x00], // magic
          [2, 2], // version
          [2, 0], // version
          [3, 3], // element type
        ] as const) {
          const bad = Buffer.from(buf);
          bad[offset] = value;
          assert.equal(decodeVector(bad), undefined, `byte ${offset} = ${value}`);
        }
        // Dimension count that disagrees with the payload.
        const bad = Buffer.from(buf);
        bad.writeUInt32LE(v.length + 1, 4);
        assert.equal(decodeVector(bad), undefined);
      },
    ),
    RUNS,
  );
  // A huge dimension count must not allocate.
  const huge = Buffer.from([0x50, 0x59, 1, 1, 0xff, 0xff, 0xff, 0xff]);
  assert.equal(decodeVector(huge), undefined);
});

test('encoding copies the input (later changes to the array do not alter the stored bytes)', () => {
  const v = Float32Array.from([1, 2, 3]);
  const buf = encodeVector(v);
  v[0] = 42;
  assert.deepEqual([...decodeVector(buf)!], [1, 2, 3]);
});

function nextUp(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  if (x >= 0) u[0] = u[0]! + 1;
  else u[0] = u[0]! - 1;
  return f[0]!;
}

function nextDown(x: number): number {
  return -nextUp(-x);
}
