/**
 * Unit tests of the dispatch loop every batcher shares (src/runtime/dispatch-queue.ts): a fake policy,
 * a fake pool whose runs the test answers, and a fake clock. No worker, no ONNX Runtime, no sleeps.
 */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, PolyrayError } from '../src/errors.ts';
import { type BatchPolicy, DispatchQueue, systemClock, toClock, type Waiting } from '../src/runtime/dispatch-queue.ts';
import type { RunResult } from '../src/runtime/pool.ts';
import { batchSizeOf, FakeClock, FakePool, flush, type RunCall } from './helpers/fake-runtime.ts';

/** Items are numbers; a run sends them as one float32 feed and returns one result per row of `data`. */
function policy(maxItems: number, overrides: Partial<BatchPolicy<number, number>> = {}): BatchPolicy<number, number> {
  return {
    name: 'fake-model',
    full: (queue) => queue.length >= maxItems,
    take: (queue) => queue.slice(0, maxItems).map((_, i) => i),
    run: async (items, run) => {
      const res = await run('fake-model', [{ name: 'x', type: 'float32', data: Float32Array.from(items), dims: [items.length] }], 'y');
      return Array.from(res.data);
    },
    ...overrides,
  };
}

const itemsOf = (call: RunCall): number[] => Array.from(call.feeds[0]!.data as Float32Array);
/** Answers a run with `f` applied to each item (one result per item, the contract). */
const answer = (call: RunCall, f = (x: number) => x * 10): void => call.resolve(result(itemsOf(call).map(f)));
const result = (values: number[]): RunResult => ({ data: Float32Array.from(values), dims: [values.length], runMs: 1 });

function setup(o: { maxItems?: number; maxWaitUs?: number; maxQueueItems?: number; policy?: Partial<BatchPolicy<number, number>>; capacity?: number } = {}) {
  const clock = new FakeClock();
  const pool = new FakePool({ capacity: o.capacity ?? 1 });
  const queue = new DispatchQueue(policy(o.maxItems ?? 4, o.policy), pool, { maxWaitUs: o.maxWaitUs ?? 0, maxQueueItems: o.maxQueueItems ?? 100 }, clock);
  return { clock, pool, queue };
}

/** Every promise's outcome, without leaving a rejection unhandled. */
const outcomes = <R>(ps: Promise<R>[]): Promise<PromiseSettledResult<R>[]> => Promise.allSettled(ps);
const codeOf = (r: PromiseSettledResult<unknown>): string | undefined => (r.status === 'rejected' ? (r.reason as PolyrayError).code : undefined);

describe('DispatchQueue', () => {
  test('each waiter gets its own result, in one batch per lease', async () => {
    const { pool, queue } = setup({ maxItems: 4 });
    const ps = queue.submit([1, 2, 3]);
    const call = await pool.nextRun();
    assert.deepEqual(itemsOf(call), [1, 2, 3]);
    answer(call);
    assert.deepEqual(await Promise.all(ps), [10, 20, 30]);
    await flush();
    assert.equal(pool.releases, 1, 'the lease goes back after the run');
    assert.equal(queue.length, 0);
  });

  describe('batch contract', () => {
    test('a run that returns fewer results than items fails every waiter, and the queue goes on', async () => {
      const { pool, queue } = setup({ maxItems: 4 });
      const ps = queue.submit([1, 2, 3]);
      (await pool.nextRun()).resolve(result([10, 20]));
      const rs = await outcomes(ps);
      assert.deepEqual(rs.map(codeOf), [ErrorCode.INFERENCE_FAILED, ErrorCode.INFERENCE_FAILED, ErrorCode.INFERENCE_FAILED]);
      assert.deepEqual((rs[0] as PromiseRejectedResult).reason.extensions, { reason: 'result-count' });
      assert.equal(queue.failedBatches, 1);
      await flush();
      assert.equal(pool.releases, 1);

      const next = queue.submit([4]);
      answer(await pool.nextRun());
      assert.deepEqual(await Promise.all(next), [40]);
    });

    test('a run that returns more results than items fails every waiter too', async () => {
      const { pool, queue } = setup();
      const ps = queue.submit([1, 2]);
      (await pool.nextRun()).resolve(result([10, 20, 30]));
      assert.deepEqual((await outcomes(ps)).map(codeOf), [ErrorCode.INFERENCE_FAILED, ErrorCode.INFERENCE_FAILED]);
    });

    test('a failed run rejects every waiter with a masked error and resolves none', async () => {
      const { pool, queue } = setup();
      const ps = queue.submit([1, 2, 3]);
      (await pool.nextRun()).reject(new Error('worker 3 crashed reading /secret/path'));
      const rs = await outcomes(ps);
      assert.ok(rs.every((r) => r.status === 'rejected'));
      const errs = rs.map((r) => (r as PromiseRejectedResult).reason as PolyrayError);
      assert.ok(errs.every((e) => e instanceof PolyrayError && e.code === ErrorCode.INFERENCE_FAILED));
      assert.ok(
        errs.every((e) => !e.message.includes('secret')),
        'internal messages do not reach clients',
      );
      assert.equal(queue.failedBatches, 1);
    });

    test('a PolyrayError from the run reaches every waiter as it is', async () => {
      const own = new PolyrayError(ErrorCode.INFERENCE_FAILED, 'shape', { reason: 'output-shape' });
      const { pool, queue } = setup({ policy: { run: () => Promise.reject(own) } });
      const ps = queue.submit([1, 2]);
      const rs = await outcomes(ps);
      assert.ok(rs.every((r) => r.status === 'rejected' && r.reason === own));
      await flush();
      assert.equal(pool.releases, 1);
    });

    test('a policy that throws synchronously still settles every waiter and releases the lease', async () => {
      const { pool, queue } = setup({
        policy: {
          run: () => {
            throw new TypeError('bug in the policy');
          },
        },
      });
      const rs = await outcomes(queue.submit([1, 2]));
      assert.deepEqual(rs.map(codeOf), [ErrorCode.INFERENCE_FAILED, ErrorCode.INFERENCE_FAILED]);
      await flush();
      assert.equal(pool.releases, 1);
    });

    test('a policy that picks no item still sends the oldest (the queue never sticks)', async () => {
      const { pool, queue } = setup({ policy: { take: () => [] } });
      const ps = queue.submit([7, 8]);
      const first = await pool.nextRun();
      assert.deepEqual(itemsOf(first), [7]);
      answer(first);
      answer(await pool.nextRun());
      assert.deepEqual(await Promise.all(ps), [70, 80]);
    });

    test('a failed lease acquisition rejects everything queued with its error', async () => {
      const { pool, queue } = setup();
      const err = new PolyrayError(ErrorCode.MODEL_NOT_READY, 'pool closed');
      pool.failNextAcquire = err;
      const rs = await outcomes(queue.submit([1, 2]));
      assert.ok(rs.every((r) => r.status === 'rejected' && r.reason === err));
      assert.equal(queue.length, 0);
    });
  });

  describe('queue bounds', () => {
    test('a submit that would pass maxQueueItems fails whole with OVERLOADED; what is queued is unaffected', async () => {
      const { pool, queue } = setup({ maxItems: 100, maxWaitUs: 1_000_000, maxQueueItems: 5 });
      const first = queue.submit([1, 2, 3]);
      const over = await outcomes(queue.submit([4, 5, 6]));
      assert.deepEqual(over.map(codeOf), [ErrorCode.OVERLOADED, ErrorCode.OVERLOADED, ErrorCode.OVERLOADED]);
      const e = (over[0] as PromiseRejectedResult).reason as PolyrayError;
      assert.equal(e.extensions.retryAfterMs, 100);
      assert.match(e.message, /fake-model queue is full \(5 items\)/);
      assert.equal(queue.rejected, 3);
      const fits = queue.submit([4, 5]);
      assert.equal(queue.length, 5, 'exactly maxQueueItems fit');
      const drained = queue.drain();
      answer(await pool.nextRun());
      assert.deepEqual(await Promise.all([...first, ...fits]), [10, 20, 30, 40, 50]);
      await drained;
    });
  });

  describe('maxWaitUs (fake clock)', () => {
    test('a partial batch waits maxWaitUs for company, then goes with everything that joined', async () => {
      const { clock, pool, queue } = setup({ maxItems: 10, maxWaitUs: 5000 });
      const a = queue.submit([1]);
      await flush();
      assert.equal(pool.acquires, 0, 'no dispatch before maxWaitUs');
      assert.equal(clock.pending, 1);
      clock.advance(3);
      const b = queue.submit([2, 3]);
      await flush();
      assert.equal(pool.acquires, 0);
      assert.equal(clock.pending, 1, 'one timer for the oldest item, not one per submit');
      clock.advance(2);
      const call = await pool.nextRun();
      assert.deepEqual(itemsOf(call), [1, 2, 3]);
      answer(call);
      assert.deepEqual(await Promise.all([...a, ...b]), [10, 20, 30]);
    });

    test('a full batch goes at once and cancels the timer', async () => {
      const { clock, pool, queue } = setup({ maxItems: 3, maxWaitUs: 1_000_000 });
      const a = queue.submit([1, 2]);
      assert.equal(clock.pending, 1);
      const b = queue.submit([3]);
      assert.equal(clock.pending, 0, 'the wait timer is cancelled');
      answer(await pool.nextRun());
      assert.deepEqual(await Promise.all([...a, ...b]), [10, 20, 30]);
    });

    test('maxWaitUs 0 dispatches without a timer', async () => {
      const { clock, pool, queue } = setup({ maxItems: 10, maxWaitUs: 0 });
      const a = queue.submit([1]);
      assert.equal(clock.pending, 0);
      answer(await pool.nextRun());
      assert.deepEqual(await Promise.all(a), [10]);
    });

    test('while a batch runs, a partial batch waits for it to end and grows; a full one is sent', async () => {
      const { pool, queue } = setup({ maxItems: 3, capacity: 2 });
      const a = queue.submit([1]);
      const first = await pool.nextRun();
      const b = queue.submit([2]);
      const c = queue.submit([3]);
      await flush();
      assert.equal(pool.runs.length, 1, 'a partial batch is held while one runs');
      const d = queue.submit([4]);
      const second = await pool.nextRun();
      assert.deepEqual(itemsOf(second), [2, 3, 4], 'a full batch is sent beside the running one');
      const e = queue.submit([5]);
      await flush();
      assert.equal(pool.runs.length, 2);
      answer(first);
      answer(second);
      const third = await pool.nextRun();
      assert.deepEqual(itemsOf(third), [5]);
      answer(third);
      assert.deepEqual(await Promise.all([...a, ...b, ...c, ...d, ...e]), [10, 20, 30, 40, 50]);
    });
  });

  describe('drain', () => {
    test('sends what waits for company at once and resolves only when it has run', async () => {
      const { clock, pool, queue } = setup({ maxItems: 10, maxWaitUs: 60_000_000 });
      const ps = queue.submit([1, 2]);
      let drained = false;
      const done = queue.drain().then(() => (drained = true));
      const call = await pool.nextRun();
      assert.equal(clock.pending, 0, 'no waiting during drain');
      assert.deepEqual(itemsOf(call), [1, 2]);
      await flush();
      assert.equal(drained, false, 'drain waits for the running batch');
      answer(call);
      await done;
      assert.deepEqual(await Promise.all(ps), [10, 20]);
      assert.equal(pool.releases, 1);
    });

    test('sends batch after batch while draining, without waiting for full ones', async () => {
      const { pool, queue } = setup({ maxItems: 2, capacity: 1 });
      const ps = queue.submit([1, 2, 3, 4, 5]);
      const done = queue.drain();
      for (let i = 0; i < 3; i++) answer(await pool.nextRun());
      await done;
      assert.deepEqual(await Promise.all(ps), [10, 20, 30, 40, 50]);
      assert.deepEqual(pool.runs.map(batchSizeOf), [2, 2, 1]);
    });

    test('refuses new items with SHUTTING_DOWN; a second drain returns the same wait; drain of an idle queue resolves', async () => {
      const { pool, queue } = setup({ maxItems: 10 });
      const ps = queue.submit([1]);
      const d1 = queue.drain();
      const d2 = queue.drain();
      assert.equal(d1, d2);
      assert.deepEqual((await outcomes(queue.submit([2]))).map(codeOf), [ErrorCode.SHUTTING_DOWN]);
      answer(await pool.nextRun());
      await d1;
      assert.deepEqual(await Promise.all(ps), [10]);
      await queue.drain();
      assert.deepEqual((await outcomes(queue.submit([3]))).map(codeOf), [ErrorCode.SHUTTING_DOWN]);

      const idle = setup().queue;
      await idle.drain();
    });
  });

  test('the clock argument may be a bare now() function (Node timers) or a Clock', () => {
    let t = 5;
    const c = toClock(() => t);
    assert.equal(c.now(), 5);
    t = 9;
    assert.equal(c.now(), 9);
    assert.equal(c.after, systemClock.after);
    const fake = new FakeClock();
    assert.equal(toClock(fake), fake);
    const cancel = systemClock.after(60_000, () => assert.fail('cancelled timer fired'));
    cancel();
  });

  test('an item is stamped with the clock when submitted', async () => {
    const seen: Waiting<number>[] = [];
    const { clock, pool, queue } = setup({
      policy: {
        full: (q) => {
          seen.push(...q);
          return false;
        },
      },
    });
    clock.advance(42);
    const ps = queue.submit([1]);
    assert.deepEqual(
      seen.map((w) => [w.item, w.enqueuedAt]),
      [[1, 42]],
    );
    answer(await pool.nextRun());
    assert.deepEqual(await Promise.all(ps), [10]);
  });
});
