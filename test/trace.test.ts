/**
 * Trace sampling: by key hash (a sampled key is always sampled), never the text or key in clear,
 * bounded and non-blocking (drops counted), writers failing without failing anything, rotated JSONL
 * files and a capped Redis Stream, both read back as streams.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { createLogger } from '../src/log.ts';
import type { CacheEntry } from '../src/cache/cache.ts';
import { MemoryCache } from '../src/cache/memory.ts';
import { TieredCache } from '../src/cache/tiered.ts';
import { hash53, hashHex, inSample } from '../src/policy/hash.ts';
import { CachedInference, type Computed, type InferenceAdapter, type Keyed } from '../src/service/pipeline.ts';
import { openTrace } from '../src/policy/read.ts';
import { type TraceBatch, Tracer, type TraceRecord, type TraceWriter } from '../src/policy/trace.ts';
import { JsonlTraceWriter, RedisStreamTraceWriter } from '../src/policy/writers.ts';
import type { EmbedResult, Source } from '../src/service/types.ts';

const logger = createLogger('silent');

function result(source: Source = 'COMPUTED'): EmbedResult {
  return {
    vector: new Float32Array(100),
    source,
    model: 'text-glove',
    version: 'v1',
    tokens: source === 'COMPUTED' ? 4 : 0,
    inferenceMs: source === 'COMPUTED' ? 0.25 : 0,
  };
}

const key = (i: number) => `text-glove@b73c56c6f3ab2804:${String(i).padStart(43, 'k')}`;

class MemoryWriter implements TraceWriter {
  readonly name = 'memory';
  records: TraceRecord[] = [];
  lines = '';
  async write(batch: TraceBatch): Promise<void> {
    const records = batch.records();
    const lines = batch.jsonl();
    // The JSONL text is written from the log's columns, not from these objects: the two must agree.
    assert.equal(lines, records.map((r) => `${JSON.stringify(r)}\n`).join(''));
    this.records.push(...records);
    this.lines += lines;
  }
  async close(): Promise<void> {}
}

async function collect(src: { records(): AsyncGenerator<TraceRecord> }): Promise<TraceRecord[]> {
  const out: TraceRecord[] = [];
  for await (const r of src.records()) out.push(r);
  return out;
}

describe('sampling', () => {
  test('by key hash: the same keys are sampled on every call, at about the rate', async () => {
    const w = new MemoryWriter();
    const tracer = new Tracer({ sampleRate: 0.3, writers: [w], windowRecords: 100_000, bufferMax: 100_000, flushMs: 10_000, logger });
    const keys = Array.from({ length: 10_000 }, (_, i) => key(i));
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < keys.length; i += 100)
        tracer.observe(
          'text-glove',
          'search',
          keys.slice(i, i + 100),
          keys.slice(i, i + 100).map(() => result()),
        );
    }
    await tracer.flush();
    const perRound = w.records.length / 3;
    assert.ok(Math.abs(perRound / keys.length - 0.3) < 0.02, `sampled ${perRound} of ${keys.length}`);
    const rounds = [0, 1, 2].map((r) => w.records.slice(r * perRound, (r + 1) * perRound).map((x) => x.k));
    assert.deepEqual(rounds[1], rounds[0]);
    assert.deepEqual(rounds[2], rounds[0]);
    assert.equal(tracer.window!.size, w.records.length);
    // Monotone in the rate: everything sampled at 0.1 is sampled at 0.3.
    for (const k of keys) if (inSample(hash53(k), 0.1)) assert.ok(inSample(hash53(k), 0.3));
    await tracer.close();
  });

  test('a record holds a hash, sizes, cost and tier — never the key or the text; repeats in a call are one record', async () => {
    const w = new MemoryWriter();
    const tracer = new Tracer({ sampleRate: 1, writers: [w], windowRecords: 10, bufferMax: 100, flushMs: 10_000, logger, now: () => 1234 });
    const k = key(1);
    tracer.observe('text-glove', 'feed', [k, undefined, k, key(2)], [result('COMPUTED'), new Error('too large'), result('COMPUTED'), result('MEMORY')]);
    await tracer.flush();
    assert.equal(w.records.length, 2);
    assert.deepEqual(w.records[0], {
      t: 1234,
      k: w.records[0]!.k,
      kl: k.length,
      m: 'text-glove',
      b: 400,
      tok: 4,
      ms: 0.25,
      src: 'COMPUTED',
      r: 1,
      c: 'feed',
      n: 2,
    });
    assert.match(w.records[0]!.k, /^[0-9a-f]{14}$/);
    assert.equal(w.records[1]!.src, 'MEMORY');
    const text = JSON.stringify(w.records);
    assert.ok(!text.includes('kkkk') && !text.includes('b73c56c6f3ab2804'), 'no key material in the trace');
    await tracer.close();
  });

  test('the window is the newest records, whole, after the log wraps; writers a full buffer behind lose the oldest', async () => {
    const w = new MemoryWriter();
    let t = 0;
    const tracer = new Tracer({ sampleRate: 1, writers: [w], windowRecords: 1500, bufferMax: 700, flushMs: 10_000, logger, now: () => ++t });
    // 3,000 calls of two keys, the first repeated: 6,000 records (n = 2 on every other), some with a client and a user.
    for (let i = 0; i < 3000; i++) {
      tracer.observe(
        'text-glove',
        i % 3 === 0 ? `client-${i % 7}` : undefined,
        [key(2 * i), key(2 * i + 1), key(2 * i)],
        [result(), result('MEMORY'), result()],
        i % 5 === 0 ? `u${i % 11}` : undefined,
      );
    }
    const window = tracer.window!.toArray();
    assert.equal(window.length, 1500);
    assert.equal(tracer.window!.size, 1500);
    window.forEach((r, j) => {
      const i = 2250 + Math.floor(j / 2);
      assert.equal(r.t, i + 1, 'oldest first, the newest kept');
      assert.equal(r.k, hashHex(hash53(key(2 * i + (j % 2)))));
      assert.equal(r.src, j % 2 === 0 ? 'COMPUTED' : 'MEMORY');
      assert.equal(r.n, j % 2 === 0 ? 2 : undefined);
      assert.equal(r.c, i % 3 === 0 ? `client-${i % 7}` : undefined);
      assert.equal(r.u, i % 5 === 0 ? hashHex(hash53(`u${i % 11}`)) : undefined);
    });
    assert.equal(tracer.stats().dropped, 6000 - 700);
    await tracer.flush();
    assert.deepEqual(w.records, window.slice(-700), 'the writer got the newest 700, as the window holds them');
    assert.equal(w.lines, w.records.map((r) => `${JSON.stringify(r)}\n`).join(''), 'JSONL text from the columns is what JSON.stringify writes');
    await tracer.close();
  });

  test("an end user the caller named (OpenAI's `user`) is recorded as a hash, never as the id", async () => {
    const w = new MemoryWriter();
    const tracer = new Tracer({ sampleRate: 1, writers: [w], windowRecords: 10, bufferMax: 100, flushMs: 10_000, logger });
    tracer.observe('text-glove', 'feed', [key(1)], [result()], 'user-alice@example.com');
    tracer.observe('text-glove', 'feed', [key(2)], [result()], 'user-alice@example.com');
    tracer.observe('text-glove', 'feed', [key(3)], [result()]);
    await tracer.flush();
    assert.match(w.records[0]!.u ?? '', /^[0-9a-f]{14}$/);
    assert.equal(w.records[1]!.u, w.records[0]!.u, 'the same user, the same hash');
    assert.equal(w.records[2]!.u, undefined);
    assert.ok(!JSON.stringify(w.records).includes('alice'));
    await tracer.close();
  });

  test('rate 0 samples nothing and costs nothing', () => {
    const tracer = new Tracer({ sampleRate: 0, writers: [], windowRecords: 10, bufferMax: 10, flushMs: 1000, logger });
    tracer.observe('m', undefined, [key(1)], [result()]);
    assert.equal(tracer.stats().observed, 0);
  });

  test('a key hash is written as 14 hex digits, the same as radix conversion gives', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (h) => {
        assert.equal(hashHex(h), h.toString(16).padStart(14, '0'));
      }),
      { numRuns: 2000 },
    );
    for (const h of [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1]) assert.equal(hashHex(h), h.toString(16).padStart(14, '0'));
  });
});

describe('never blocks, never fails a request', () => {
  test('a writer that hangs: the buffer stays bounded, overflow is dropped and counted, observe stays fast', async () => {
    let calls = 0;
    const hanging: TraceWriter = {
      name: 'hang',
      write: () => {
        calls++;
        return new Promise<void>(() => undefined);
      },
      close: async () => undefined,
    };
    const tracer = new Tracer({ sampleRate: 1, writers: [hanging], windowRecords: 10, bufferMax: 50, flushMs: 10, batchMax: 20, logger });
    const t0 = performance.now();
    for (let i = 0; i < 2000; i++) tracer.observe('text-glove', undefined, [key(i)], [result()]);
    const took = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 50));
    for (let i = 2000; i < 2100; i++) tracer.observe('text-glove', undefined, [key(i)], [result()]);
    const s = tracer.stats();
    assert.ok(s.buffered <= 50, `buffered ${s.buffered}`);
    assert.ok(s.dropped >= 2000, `dropped ${s.dropped}`);
    assert.equal(calls, 1, 'one flush at a time');
    assert.ok(took < 500, `observe took ${took} ms for 2000 calls`);
  });

  test('a writer that fails: errors are counted, nothing throws', async () => {
    const failing: TraceWriter = { name: 'fail', write: async () => Promise.reject(new Error('disk full')), close: async () => undefined };
    const good = new MemoryWriter();
    const tracer = new Tracer({ sampleRate: 1, writers: [failing, good], windowRecords: 10, bufferMax: 100, flushMs: 10_000, logger });
    tracer.observe('text-glove', undefined, [key(1), key(2)], [result(), result()]);
    await tracer.flush();
    assert.equal(tracer.stats().errors, 1);
    assert.equal(good.records.length, 2, 'the other writer still got the batch');
    await tracer.close();
  });

  test('an unreachable Redis: the stream writer fails fast and is counted', async () => {
    const w = new RedisStreamTraceWriter({ target: { url: 'redis://127.0.0.1:1' }, key: 'x', maxLen: 10, timeoutMs: 300 });
    const tracer = new Tracer({ sampleRate: 1, writers: [w], windowRecords: 10, bufferMax: 100, flushMs: 10_000, logger });
    tracer.observe('text-glove', undefined, [key(1)], [result()]);
    await tracer.flush();
    assert.equal(tracer.stats().errors, 1);
    await tracer.close();
  });
});

describe('JSONL files', () => {
  let dir: string;
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('rotate by size, keep K files, read back in order as one stream', async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-trace-'));
    const w = new JsonlTraceWriter({ dir, maxFileBytes: 4000, keepFiles: 3 });
    const tracer = new Tracer({
      sampleRate: 1,
      writers: [w],
      windowRecords: 10,
      bufferMax: 10_000,
      flushMs: 10_000,
      batchMax: 10,
      logger,
      now: (() => {
        let t = 0;
        return () => ++t;
      })(),
    });
    for (let i = 0; i < 400; i++) tracer.observe('text-glove', 'search', [key(i)], [result()]);
    await tracer.close();
    const files = (await readdir(dir)).filter((f) => f.endsWith('.jsonl'));
    assert.equal(files.length, 3, `files: ${files.join(', ')}`);
    const back = await collect(await openTrace(dir));
    const lines = (await Promise.all(files.map((f) => readFile(path.join(dir, f), 'utf8')))).join('').split('\n').filter(Boolean).length;
    assert.equal(back.length, lines);
    assert.ok(back.length < 400 && back.length >= 30, `${back.length} records kept`);
    for (let i = 1; i < back.length; i++) assert.equal(back[i]!.t, back[i - 1]!.t + 1, 'the newest records, in order');
    assert.equal(back[back.length - 1]!.t, 400);
    const single = await collect(await openTrace(path.join(dir, files.sort()[0]!)));
    assert.ok(single.length > 0 && single.length < back.length);
  });
});

describe('Redis Stream', () => {
  const streamKey = `polyray:test:${randomUUID()}:trace`;
  const redis = new Redis('redis://127.0.0.1:6379', { lazyConnect: true });
  after(async () => {
    await redis.del(streamKey).catch(() => undefined);
    redis.disconnect();
  });

  test('one entry per batch, the stream capped in records; XRANGE pages read it back in order', async () => {
    const w = new RedisStreamTraceWriter({ target: { url: 'redis://127.0.0.1:6379' }, key: streamKey, maxLen: 1000 });
    let t = 0;
    const tracer = new Tracer({ sampleRate: 1, writers: [w], windowRecords: 10, bufferMax: 10_000, flushMs: 10_000, batchMax: 500, logger, now: () => ++t });
    for (let i = 0; i < 5000; i += 10) {
      const keys = Array.from({ length: 10 }, (_, j) => key(i + j));
      tracer.observe(
        'text-glove',
        i % 20 === 0 ? 'search' : undefined,
        keys,
        keys.map(() => result()),
      );
    }
    await tracer.close();
    assert.equal(tracer.stats().written, 5000);
    await redis.connect();
    assert.equal(await redis.xlen(streamKey), 2, '5,000 records in batches of 500, capped at 1,000 records: two entries');
    const back = await collect(await openTrace(`redis://127.0.0.1:6379/?stream=${encodeURIComponent(streamKey)}`, { pageSize: 1 }));
    assert.equal(back.length, 1000);
    assert.equal(back[back.length - 1]!.t, 500);
    for (let i = 1; i < back.length; i++) assert.ok(back[i]!.t >= back[i - 1]!.t);
    assert.ok(back.some((r) => r.c === 'search') && back.some((r) => r.c === undefined));
    assert.deepEqual(Object.keys(back[0]!).sort(), ['b', 'k', 'kl', 'm', 'ms', 'r', 'src', 't', 'tok', ...(back[0]!.c ? ['c'] : [])].sort());
  });

  test('a stream written one record per entry (before batched entries) still reads', async () => {
    const oldKey = `${streamKey}:old`;
    await redis.xadd(
      oldKey,
      '*',
      't',
      '7',
      'k',
      '00000000000abc',
      'kl',
      '60',
      'm',
      'text-glove',
      'b',
      '400',
      'tok',
      '0',
      'ms',
      '0',
      'src',
      'MEMORY',
      'r',
      '1',
      'c',
      'search',
    );
    await redis.xadd(oldKey, '*', 'not', 'a record');
    const src = await openTrace(`redis://127.0.0.1:6379/?stream=${encodeURIComponent(oldKey)}`);
    const back = await collect(src);
    await redis.del(oldKey);
    assert.deepEqual(back, [{ t: 7, k: '00000000000abc', kl: 60, m: 'text-glove', b: 400, tok: 0, ms: 0, src: 'MEMORY', r: 1, c: 'search' }]);
    assert.equal(src.skipped, 1);
  });
});

describe('what the tiers see reaches the trace (through CachedInference)', () => {
  /** Computations settled by hand; each fills its entry and a sibling (`feature:`), like the image adapter. */
  class TwoEntryAdapter implements InferenceAdapter<string, string, { name: string }> {
    readonly pending: ((c: Computed) => void)[] = [];
    key(_h: { name: string }, inputs: readonly string[]): Keyed<string>[] {
      // `f:x` reads x's sibling entry; its computation is x's.
      return inputs.map((s) =>
        s.startsWith('f:') ? { read: `feature:${s.slice(2)}`, flight: s.slice(2), payload: s.slice(2) } : { read: s, flight: s, payload: s },
      );
    }
    compute(_h: { name: string }, items: readonly string[]): Promise<Computed>[] {
      return items.map(() => new Promise<Computed>((resolve) => this.pending.push(resolve)));
    }
    fill(_h: { name: string }, item: Keyed<string>, c: Computed): CacheEntry[] {
      return [
        { key: item.flight, value: c.outputs[0]! },
        { key: `feature:${item.flight}`, value: new Float32Array(8) },
      ];
    }
  }

  test('a single-flight join is JOINED, a repeat within a call counts as JOINED, a fill is an f:1 record, a feature read is traced under its key', async () => {
    const tracer = new Tracer({ sampleRate: 1, writers: [], windowRecords: 100, bufferMax: 100, flushMs: 10_000, logger, now: () => 5 });
    const adapter = new TwoEntryAdapter();
    const cache = new TieredCache([new MemoryCache({ maxBytes: 1 << 20 })]);
    const p = new CachedInference(adapter, { cache, logger, trace: tracer });
    const H = { name: 'm' };
    const traced = async (inputs: string[]) => {
      const answers = await p.run(H, inputs);
      p.trace(
        'm',
        undefined,
        answers,
        answers.map((a) =>
          a instanceof Error ? a : { vector: a.hit ?? a.computed!.outputs[0]!, source: a.source, tokens: a.units, inferenceMs: a.inferenceMs },
        ),
      );
    };
    // Two calls for the same key at once: one computes, one joins; the first repeats it within its call.
    const first = traced(['x', 'x']);
    await new Promise((r) => setImmediate(r));
    const second = traced(['x']);
    while (adapter.pending.length === 0) await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    for (const resolve of adapter.pending.splice(0)) resolve({ outputs: [new Float32Array(4)], units: 3, inferenceMs: 1 });
    await Promise.all([first, second]);
    await new Promise((r) => setImmediate(r));
    // A feature call: read under the sibling key the fill stored.
    await traced(['f:x']);
    const recs = tracer.window!.toArray();
    const owner = recs.find((r) => r.src === 'COMPUTED' && r.f === undefined)!;
    assert.equal(owner.n, 2, 'the repeat is one record with n = 2');
    assert.equal(owner.k, hashHex(hash53('x')));
    const fill = recs.find((r) => r.f === 1)!;
    assert.equal(fill.k, hashHex(hash53('feature:x')));
    assert.equal(fill.b, 32);
    assert.equal(recs.filter((r) => r.src === 'JOINED').length, 1, 'the second call joined');
    const feature = recs[recs.length - 1]!;
    assert.deepEqual([feature.k, feature.src], [hashHex(hash53('feature:x')), 'MEMORY']);
    // The tracer's counts of all keys: COMPUTED 1, JOINED 2 (the join and the repeat), MEMORY 1.
    assert.deepEqual(tracer.measuredOverWindow().bySource, { COMPUTED: 1, JOINED: 2, MEMORY: 1, GLOBAL: 0 });
    await tracer.close();
  });
});
