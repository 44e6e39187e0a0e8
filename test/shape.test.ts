import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { encodeWire as encodeVector, float32ToFloat16Bits as toFloat16Bits } from '../src/cache/codec.ts';
import { truncate } from '../src/resolvers/shape.ts';
import { loadConfig } from '../src/config/index.ts';

function fromFloat16Bits(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

test('float16 conversion rounds to the nearest representable value', () => {
  fc.assert(
    fc.property(fc.float({ noNaN: true, min: -65504, max: 65504 }), (x) => {
      const back = fromFloat16Bits(toFloat16Bits(x));
      const ax = Math.abs(x);
      // Half of the spacing of float16 values around x.
      const spacing = ax < 2 ** -14 ? 2 ** -24 : 2 ** (Math.floor(Math.log2(ax)) - 10);
      assert.ok(Math.abs(back - x) <= spacing / 2 + 1e-30, `${x} -> ${back}`);
    }),
    { numRuns: 5000 },
  );
  assert.equal(toFloat16Bits(Infinity), 0x7c00);
  assert.equal(toFloat16Bits(-Infinity), 0xfc00);
  assert.equal(toFloat16Bits(1e6), 0x7c00);
  assert.ok(Number.isNaN(fromFloat16Bits(toFloat16Bits(NaN))));
  assert.equal(toFloat16Bits(1), 0x3c00);
  assert.equal(toFloat16Bits(-2), 0xc000);
});

test('truncate keeps a unit prefix and never mutates its input', () => {
  fc.assert(
    fc.property(fc.array(fc.float({ noNaN: true, noDefaultInfinity: true, min: -1, max: 1 }), { minLength: 2, maxLength: 64 }), fc.nat(), (xs, k) => {
      const v = Float32Array.from(xs);
      const copy = Float32Array.from(v);
      const d = 1 + (k % v.length);
      const t = truncate(v, d);
      assert.deepEqual(v, copy);
      assert.equal(t.length, Math.min(d, v.length));
      const n = Math.sqrt(t.reduce((s, x) => s + x * x, 0));
      if (d < v.length) assert.ok(n === 0 || Math.abs(n - 1) < 1e-5);
    }),
  );
});

test('every encoding has the documented byte length', () => {
  fc.assert(
    fc.property(fc.array(fc.float({ noNaN: true, noDefaultInfinity: true, min: -1, max: 1 }), { minLength: 1, maxLength: 300 }), (xs) => {
      const v = Float32Array.from(xs);
      assert.equal(Buffer.from(encodeVector(v, 'FLOAT32'), 'base64').length, v.length * 4);
      assert.equal(Buffer.from(encodeVector(v, 'FLOAT16'), 'base64').length, v.length * 2);
      assert.equal(Buffer.from(encodeVector(v, 'INT8'), 'base64').length, v.length);
      assert.equal(Buffer.from(encodeVector(v, 'BINARY'), 'base64').length, Math.ceil(v.length / 8));
    }),
  );
});

test('config: defaults run embedded; bad values name the variable and the value', () => {
  const c = loadConfig({});
  assert.equal(c.http.port, 4000);
  assert.equal(c.cache.redis.kind, 'none');
  assert.deepEqual(c.inference.providers, ['cpu']);
  assert.throws(() => loadConfig({ PORT: 'abc' }), /PORT.*"abc"/);
  assert.throws(() => loadConfig({ POLYRAY_PROVIDERS: 'cpu,tpu' }), /POLYRAY_PROVIDERS.*"tpu"/);
  assert.throws(() => loadConfig({ REDIS_URL: 'http://x' }), /REDIS_URL/);
  assert.throws(() => loadConfig({ REDIS_URL: 'redis://a:1', REDIS_CLUSTER_NODES: 'a:1' }), /both/);
  assert.throws(() => loadConfig({ POLYRAY_MAX_INPUTS: '100', POLYRAY_QUEUE_MAX_INPUTS: '10', POLYRAY_QUEUE_MAX_ITEMS: '10' }), /must not exceed/);
  const cl = loadConfig({ REDIS_CLUSTER_NODES: '127.0.0.1:7000, 127.0.0.1:7001' });
  assert.equal(cl.cache.redis.kind, 'cluster');
  fc.assert(
    fc.property(fc.string(), (s) => {
      try {
        loadConfig({ PORT: s, POLYRAY_BATCH_MAX_ITEMS: s });
      } catch (e) {
        assert.ok(e instanceof TypeError);
      }
    }),
  );
});
