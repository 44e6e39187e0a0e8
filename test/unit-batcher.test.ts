/**
 * Unit tests of the token batcher and the tensor batcher (src/runtime/batcher.ts, tensor-batcher.ts)
 * through their public API, with a fake pool whose lease runs the test controls and a fake clock.
 * No worker, no ONNX Runtime, no sleeps. The real-model path is covered by test/batching.test.ts.
 */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ErrorCode, type PolyrayError } from '../src/errors.ts';
import { Batcher, type BatchItem, type ModelIO } from '../src/runtime/batcher.ts';
import type { RunResult } from '../src/runtime/pool.ts';
import { TensorBatcher, type TensorModelIO } from '../src/runtime/tensor-batcher.ts';
import { batchSizeOf, FakeClock, FakePool, flush, type RunCall } from './helpers/fake-runtime.ts';

const D = 3;
const IO: ModelIO = { name: 'fake-text', inputIds: 'input_ids', attentionMask: 'attention_mask', output: 'embedding', dimensions: D };

/** An item of `len` tokens whose first token is its id, so a result can be traced to its item. */
const item = (id: number, len = 1): BatchItem => ({ ids: [id, ...Array<number>(len - 1).fill(7)], mask: Array<number>(len).fill(1) });

const rowsOf = (call: RunCall): { n: number; t: number } => ({ n: call.feeds[0]!.dims[0]!, t: call.feeds[0]!.dims[1]! });

/** A model that answers row r with D copies of that row's first token id. */
function echo(call: RunCall, rows = rowsOf(call).n): RunResult {
  const { t } = rowsOf(call);
  const ids = call.feeds[0]!.data as BigInt64Array;
  const data = new Float32Array(rows * D);
  for (let r = 0; r < rows; r++) data.fill(Number(ids[r * t]), r * D, (r + 1) * D);
  return { data, dims: [rows, D], runMs: 12 };
}

const rejectedCodes = async (ps: Promise<unknown>[]): Promise<(string | undefined)[]> =>
  (await Promise.allSettled(ps)).map((r) => (r.status === 'rejected' ? (r.reason as PolyrayError).code : undefined));

describe('Batcher', () => {
  test('pads ids and mask into int64 [n, t] feeds, and splits the output per item', async () => {
    const pool = new FakePool();
    const b = new Batcher({ ...IO, tokenTypeIds: 'token_type_ids' }, pool, { maxItems: 8 }, new FakeClock());
    const ps = b.submit([item(101, 3), item(102, 1)]);
    const call = await pool.nextRun();
    assert.equal(call.model, 'fake-text');
    assert.equal(call.output, 'embedding');
    assert.deepEqual(
      call.feeds.map((f) => [f.name, f.type, f.dims]),
      [
        ['input_ids', 'int64', [2, 3]],
        ['attention_mask', 'int64', [2, 3]],
        ['token_type_ids', 'int64', [2, 3]],
      ],
    );
    const [ids, mask, types] = call.feeds.map((f) => Array.from(f.data as BigInt64Array));
    assert.deepEqual(ids, [101n, 7n, 7n, 102n, 0n, 0n]);
    assert.deepEqual(mask, [1n, 1n, 1n, 1n, 0n, 0n]);
    assert.deepEqual(types, [0n, 0n, 0n, 0n, 0n, 0n]);
    call.resolve(echo(call));
    const [a, c] = await Promise.all(ps);
    assert.deepEqual(Array.from(a!.vector), [101, 101, 101]);
    assert.deepEqual(Array.from(c!.vector), [102, 102, 102]);
    // Run time is shared by token count: 3 of 4 tokens, 1 of 4.
    assert.deepEqual([a!.inferenceMs, c!.inferenceMs], [9, 3]);
    assert.deepEqual([a!.batchSize, a!.tokens, c!.tokens], [2, 3, 1]);
    assert.deepEqual(b.stats(), {
      queued: 0,
      batches: 1,
      items: 2,
      paddedTokens: 6,
      realTokens: 4,
      rejected: 0,
      failedBatches: 0,
      expired: 0,
      retried: 0,
      waitCorrection: 1,
    });
  });

  describe('batch contract', () => {
    test('an output with fewer rows than items fails every waiter; none hangs', async () => {
      const pool = new FakePool({ respond: (call) => echo(call, rowsOf(call).n - 1) });
      const b = new Batcher(IO, pool, {}, new FakeClock());
      assert.deepEqual(await rejectedCodes(b.submit([item(1), item(2), item(3)])), [
        ErrorCode.INFERENCE_FAILED,
        ErrorCode.INFERENCE_FAILED,
        ErrorCode.INFERENCE_FAILED,
      ]);
      assert.equal(b.stats().failedBatches, 1);
    });

    test('dims that claim every row over a buffer that holds fewer fail every waiter', async () => {
      const pool = new FakePool({ respond: (call) => ({ ...echo(call, rowsOf(call).n - 1), dims: [rowsOf(call).n, D] }) });
      const b = new Batcher(IO, pool, {}, new FakeClock());
      assert.deepEqual(await rejectedCodes(b.submit([item(1), item(2)])), [ErrorCode.INFERENCE_FAILED, ErrorCode.INFERENCE_FAILED]);
    });

    test('an output of the wrong width fails every waiter', async () => {
      const pool = new FakePool({ respond: (call) => ({ data: new Float32Array(rowsOf(call).n * (D + 1)), dims: [rowsOf(call).n, D + 1], runMs: 1 }) });
      const b = new Batcher(IO, pool, {}, new FakeClock());
      const rs = await Promise.allSettled(b.submit([item(1), item(2)]));
      assert.ok(rs.every((r) => r.status === 'rejected' && (r.reason as PolyrayError).extensions.reason === 'output-shape'));
    });

    test('a failed run rejects every waiter, resolves none, and remembers nothing: the same item runs again', async () => {
      const pool = new FakePool();
      const b = new Batcher(IO, pool, {}, new FakeClock());
      const first = b.submit([item(1), item(2)]);
      (await pool.nextRun()).reject(new Error('session crashed'));
      assert.deepEqual(await rejectedCodes(first), [ErrorCode.INFERENCE_FAILED, ErrorCode.INFERENCE_FAILED]);
      const again = b.submit([item(1)]);
      const call = await pool.nextRun();
      call.resolve(echo(call));
      assert.deepEqual(Array.from((await again[0]!).vector), [1, 1, 1]);
      assert.equal(pool.runs.length, 2);
      assert.deepEqual(
        { ...b.stats(), queued: 0 },
        { queued: 0, batches: 2, items: 3, paddedTokens: 3, realTokens: 3, rejected: 0, failedBatches: 1, expired: 0, retried: 0, waitCorrection: 1 },
      );
    });
  });

  test('OVERLOADED beyond maxQueueItems, counted in stats', async () => {
    const clock = new FakeClock();
    const pool = new FakePool({ respond: (call) => echo(call) });
    const b = new Batcher(IO, pool, { maxQueueItems: 2, maxWaitUs: 1000 }, clock);
    const ok = b.submit([item(1), item(2)]);
    assert.deepEqual(await rejectedCodes(b.submit([item(3)])), [ErrorCode.OVERLOADED]);
    assert.equal(b.stats().rejected, 1);
    assert.equal(b.stats().queued, 2);
    clock.advance(1);
    assert.equal((await Promise.all(ok)).length, 2);
  });

  test('maxWaitUs is driven by the injected clock', async () => {
    const clock = new FakeClock();
    const pool = new FakePool({ respond: (call) => echo(call) });
    const b = new Batcher(IO, pool, { maxItems: 16, maxWaitUs: 2000 }, clock);
    const ps = [...b.submit([item(1)])];
    clock.advance(1);
    ps.push(...b.submit([item(2)]));
    await flush();
    assert.equal(pool.acquires, 0);
    clock.advance(1);
    await Promise.all(ps);
    assert.deepEqual(pool.runs.map(batchSizeOf), [2]);
  });

  test('groups the oldest item with the items nearest it in length, within maxItems and maxTokens', async () => {
    const pool = new FakePool({ respond: (call) => echo(call) });
    const clock = new FakeClock();
    const b = new Batcher(IO, pool, { maxItems: 3, maxTokens: 40, maxWaitUs: 1000 }, clock);
    // Lengths 10, 2, 11, 3, 9, 30: a batch of 3 around the oldest (10) takes 10, 11, 9.
    const lens = [10, 2, 11, 3, 9, 30];
    const ps = b.submit(lens.map((len, i) => item(i + 1, len)));
    await b.drain();
    await Promise.all(ps);
    const batches = pool.runs.map((c) => {
      const { n, t } = rowsOf(c);
      const ids = c.feeds[0]!.data as BigInt64Array;
      return Array.from({ length: n }, (_, r) => Number(ids[r * t]));
    });
    assert.deepEqual(batches, [[1, 3, 5], [2, 4], [6]]);
  });

  test('drain waits for queued work', async () => {
    const pool = new FakePool();
    const b = new Batcher(IO, pool, { maxWaitUs: 60_000_000 }, new FakeClock());
    const ps = b.submit([item(1)]);
    let drained = false;
    const done = b.drain().then(() => (drained = true));
    const call = await pool.nextRun();
    await flush();
    assert.equal(drained, false);
    call.resolve(echo(call));
    await done;
    assert.equal((await ps[0]!).batchSize, 1);
    assert.deepEqual(await rejectedCodes(b.submit([item(2)])), [ErrorCode.SHUTTING_DOWN]);
  });

  test('an old-style now() function is still accepted as the fourth argument', async () => {
    const pool = new FakePool({ respond: (call) => echo(call) });
    const b = new Batcher(IO, pool, {}, () => 0);
    assert.equal((await b.submit([item(5)])[0]!).vector[0], 5);
  });

  test('bad options are TypeErrors naming the option and the value', () => {
    const pool = new FakePool();
    assert.throws(() => new Batcher(IO, pool, { maxItems: 0 }), { name: 'TypeError', message: 'Batcher option maxItems must be an integer >= 1, received 0' });
    assert.throws(() => new Batcher(IO, pool, { maxTokens: 1.5 }), {
      name: 'TypeError',
      message: 'Batcher option maxTokens must be an integer >= 1, received 1.5',
    });
    assert.throws(() => new Batcher(IO, pool, { maxQueueItems: Number.NaN }), /maxQueueItems must be an integer >= 1, received NaN/);
    assert.throws(() => new Batcher(IO, pool, { maxWaitUs: -1 }), { name: 'TypeError', message: 'Batcher option maxWaitUs must be >= 0, received -1' });
  });

  test('property: batches keep maxItems and maxTokens (a lone longer item runs alone), every item is answered once with its own vector', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 8 }),
        fc.integer({ min: 1, max: 8 }),
        fc.integer({ min: 8, max: 120 }),
        fc.integer({ min: 1, max: 3 }),
        async (submits, maxItems, maxTokens, capacity) => {
          const pool = new FakePool({ capacity, respond: (call) => echo(call) });
          const b = new Batcher(IO, pool, { maxItems, maxTokens, maxWaitUs: 0 }, new FakeClock());
          let id = 0;
          const all: { id: number; p: Promise<{ vector: Float32Array }> }[] = [];
          for (const lens of submits) {
            const items = lens.map((len) => item(++id, len));
            for (const [i, p] of b.submit(items).entries()) all.push({ id: Number(items[i]!.ids[0]!), p });
            await flush();
          }
          const vectors = await Promise.all(all.map((x) => x.p));
          for (const [i, v] of vectors.entries()) assert.deepEqual(Array.from(v.vector), Array<number>(D).fill(all[i]!.id));
          let answered = 0;
          for (const call of pool.runs) {
            const { n, t } = rowsOf(call);
            answered += n;
            assert.ok(n <= maxItems, `batch of ${n} items, maxItems ${maxItems}`);
            assert.ok(n === 1 || n * t <= maxTokens, `batch of ${n}×${t} tokens, maxTokens ${maxTokens}`);
          }
          assert.equal(answered, id, 'every item ran exactly once');
          assert.equal(pool.leased, 0);
        },
      ),
      { numRuns: 150 },
    );
  });
});

const TIO: TensorModelIO = {
  name: 'fake-image',
  input: 'pixels',
  itemShape: [2, 2],
  outputs: [
    { name: 'embedding', width: 2 },
    { name: 'feature', width: 3 },
  ],
};

/** An item of the tensor model whose four values are all `id`. */
const pixels = (id: number, cost = 4) => ({ data: new Float32Array(4).fill(id), cost });

/** A two-output model: row r of `embedding` is [id, id], of `feature` [id, -id, 0]. */
function tensorEcho(call: RunCall, rows = batchSizeOf(call), featureRows = rows): RunResult {
  const input = call.feeds[0]!.data as Float32Array;
  const emb = new Float32Array(rows * 2);
  const feat = new Float32Array(featureRows * 3);
  for (let r = 0; r < rows; r++) emb.set([input[r * 4]!, input[r * 4]!], r * 2);
  for (let r = 0; r < featureRows; r++) feat.set([input[r * 4]!, -input[r * 4]!, 0], r * 3);
  return { data: emb, dims: [rows, 2], extra: [{ name: 'feature', data: feat, dims: [featureRows, 3] }], runMs: 10 };
}

describe('TensorBatcher', () => {
  test('stacks items into one float32 feed and gives each item its row of every output', async () => {
    const pool = new FakePool();
    const b = new TensorBatcher(TIO, pool, { maxItems: 8 }, new FakeClock());
    const ps = b.submit([pixels(1, 1), pixels(2, 3)]);
    const call = await pool.nextRun();
    assert.deepEqual(call.output, ['embedding', 'feature']);
    assert.deepEqual(
      call.feeds.map((f) => [f.name, f.type, f.dims]),
      [['pixels', 'float32', [2, 2, 2]]],
    );
    assert.deepEqual(Array.from(call.feeds[0]!.data as Float32Array), [1, 1, 1, 1, 2, 2, 2, 2]);
    call.resolve(tensorEcho(call));
    const [a, c] = await Promise.all(ps);
    assert.deepEqual(
      a!.outputs.map((o) => Array.from(o)),
      [
        [1, 1],
        [1, -1, 0],
      ],
    );
    assert.deepEqual(
      c!.outputs.map((o) => Array.from(o)),
      [
        [2, 2],
        [2, -2, 0],
      ],
    );
    assert.deepEqual([a!.inferenceMs, c!.inferenceMs], [2.5, 7.5], 'run time shared by cost');
    assert.deepEqual(b.stats(), { queued: 0, batches: 1, items: 2, cost: 4, rejected: 0, failedBatches: 0, expired: 0, retried: 0, waitCorrection: 1 });
  });

  test('a single output is requested by name, not as a list', async () => {
    const pool = new FakePool();
    const b = new TensorBatcher({ ...TIO, outputs: [TIO.outputs[0]!] }, pool, {}, new FakeClock());
    const ps = b.submit([pixels(4)]);
    const call = await pool.nextRun();
    assert.equal(call.output, 'embedding');
    const { extra: _extra, ...first } = tensorEcho(call);
    call.resolve(first);
    assert.deepEqual(Array.from((await ps[0]!).outputs[0]!), [4, 4]);
  });

  describe('batch contract', () => {
    const cases: [string, (call: RunCall) => RunResult, string][] = [
      ['fewer rows than items in the first output', (call) => tensorEcho(call, batchSizeOf(call) - 1, batchSizeOf(call)), 'output-shape'],
      ['fewer rows than items in a further output', (call) => tensorEcho(call, batchSizeOf(call), batchSizeOf(call) - 1), 'output-shape'],
      ['dims that claim every row over a short buffer', (call) => ({ ...tensorEcho(call), data: new Float32Array(2) }), 'output-shape'],
      ['a missing output', (call) => ({ ...tensorEcho(call), extra: [] }), 'output-count'],
    ];
    for (const [what, respond, reason] of cases) {
      test(`${what} fails every waiter`, async () => {
        const b = new TensorBatcher(TIO, new FakePool({ respond }), {}, new FakeClock());
        const rs = await Promise.allSettled(b.submit([pixels(1), pixels(2), pixels(3)]));
        assert.ok(
          rs.every(
            (r) =>
              r.status === 'rejected' &&
              (r.reason as PolyrayError).code === ErrorCode.INFERENCE_FAILED &&
              (r.reason as PolyrayError).extensions.reason === reason,
          ),
        );
        assert.equal(b.stats().failedBatches, 1);
      });
    }

    test('a failed run rejects every waiter with a masked error', async () => {
      const pool = new FakePool();
      const b = new TensorBatcher(TIO, pool, {}, new FakeClock());
      const ps = b.submit([pixels(1), pixels(2)]);
      (await pool.nextRun()).reject(new Error('CUDA out of memory at 0xdeadbeef'));
      const rs = await Promise.allSettled(ps);
      assert.ok(
        rs.every(
          (r) => r.status === 'rejected' && (r.reason as PolyrayError).code === ErrorCode.INFERENCE_FAILED && !(r.reason as Error).message.includes('CUDA'),
        ),
      );
    });
  });

  test('batches are FIFO within maxCost; an item above maxCost runs alone', async () => {
    const pool = new FakePool({ respond: (call) => tensorEcho(call) });
    const b = new TensorBatcher(TIO, pool, { maxItems: 10, maxCost: 10, maxWaitUs: 1000 }, new FakeClock());
    const ps = b.submit([pixels(1, 4), pixels(2, 4), pixels(3, 4), pixels(4, 25), pixels(5, 1)]);
    await b.drain();
    await Promise.all(ps);
    const firstValues = pool.runs.map((c) => {
      const d = c.feeds[0]!.data as Float32Array;
      return Array.from({ length: batchSizeOf(c) }, (_, r) => d[r * 4]);
    });
    assert.deepEqual(firstValues, [[1, 2], [3], [4], [5]]);
  });

  test('OVERLOADED beyond maxQueueItems; a wrong-sized item is a TypeError', async () => {
    const b = new TensorBatcher(TIO, new FakePool(), { maxQueueItems: 1, maxWaitUs: 1000 }, new FakeClock());
    const queued = b.submit([pixels(1)]);
    assert.deepEqual(await rejectedCodes(b.submit([pixels(2)])), [ErrorCode.OVERLOADED]);
    assert.equal(b.stats().rejected, 1);
    assert.throws(() => b.submit([{ data: new Float32Array(3), cost: 1 }]), {
      name: 'TypeError',
      message: 'TensorBatcher fake-image: item has 3 values, expected 4',
    });
    assert.equal(queued.length, 1);
  });

  test('bad options are TypeErrors naming the option and the value', () => {
    const pool = new FakePool();
    assert.throws(() => new TensorBatcher(TIO, pool, { maxCost: 0 }), {
      name: 'TypeError',
      message: 'TensorBatcher option maxCost must be an integer >= 1, received 0',
    });
    assert.throws(
      () => new TensorBatcher(TIO, pool, { maxWaitUs: Number.POSITIVE_INFINITY }),
      /TensorBatcher option maxWaitUs must be >= 0, received Infinity/,
    );
    assert.throws(() => new TensorBatcher({ ...TIO, outputs: [] }, pool), {
      name: 'TypeError',
      message: 'TensorBatcher for fake-image needs at least one output',
    });
  });

  test('property: batches keep maxItems and maxCost (a lone costlier item runs alone), in FIFO order, every item answered once', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(fc.integer({ min: 1, max: 30 }), { minLength: 1, maxLength: 10 }), { minLength: 1, maxLength: 6 }),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 60 }),
        async (submits, maxItems, maxCost) => {
          const pool = new FakePool({ capacity: 2, respond: (call) => tensorEcho(call) });
          const b = new TensorBatcher(TIO, pool, { maxItems, maxCost }, new FakeClock());
          let id = 0;
          const all: { id: number; cost: number; p: Promise<{ outputs: Float32Array[] }> }[] = [];
          for (const costs of submits) {
            const items = costs.map((cost) => ({ ...pixels(++id, cost), id }));
            for (const [i, p] of b.submit(items).entries()) all.push({ id: items[i]!.id, cost: items[i]!.cost, p });
            await flush();
          }
          const results = await Promise.all(all.map((x) => x.p));
          for (const [i, r] of results.entries()) assert.deepEqual(Array.from(r.outputs[0]!), [all[i]!.id, all[i]!.id]);
          const costOf = new Map(all.map((x) => [x.id, x.cost]));
          const order: number[] = [];
          for (const call of pool.runs) {
            const n = batchSizeOf(call);
            const data = call.feeds[0]!.data as Float32Array;
            const ids = Array.from({ length: n }, (_, r) => data[r * 4]!);
            const cost = ids.reduce((s, x) => s + costOf.get(x)!, 0);
            assert.ok(n <= maxItems);
            assert.ok(n === 1 || cost <= maxCost, `batch cost ${cost}, maxCost ${maxCost}`);
            order.push(...ids);
          }
          assert.deepEqual(
            order,
            all.map((x) => x.id),
            'FIFO and every item exactly once',
          );
        },
      ),
      { numRuns: 150 },
    );
  });
});
