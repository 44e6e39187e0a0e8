/**
 * Fair serving in the dispatch queue every batcher shares (src/runtime/dispatch-queue.ts): per-client fair
 * order, weights, priority classes, per-client bounds, deadlines and aborted callers. Measured in queue
 * positions (which run an item went in), never in milliseconds: a fake pool whose runs the test answers and
 * a fake clock.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ErrorCode, PolyrayError } from '../src/errors.ts';
import { type BatchPolicy, DispatchQueue, type QueueOptions } from '../src/runtime/dispatch-queue.ts';
import { FakeClock, FakePool, flush, type RunCall } from './helpers/fake-runtime.ts';

/** Items are numbers (ids); a batch is the first `maxItems` of the order the queue offers. */
function policy(maxItems: number): BatchPolicy<number, number> {
  return {
    name: 'fair-model',
    full: (queue) => queue.length >= maxItems,
    take: (queue) => queue.slice(0, maxItems).map((_, i) => i),
    run: async (items, run) => {
      const res = await run('fair-model', [{ name: 'x', type: 'float32', data: Float32Array.from(items), dims: [items.length] }], 'y');
      return Array.from(res.data);
    },
  };
}

const itemsOf = (call: RunCall): number[] => Array.from(call.feeds[0]!.data as Float32Array);
const answer = (call: RunCall): void => {
  const items = itemsOf(call);
  call.resolve({ data: Float32Array.from(items), dims: [items.length], runMs: 1 });
};

function setup(maxItems: number, o: Partial<QueueOptions> = {}) {
  const clock = new FakeClock();
  const pool = new FakePool({ capacity: 1 });
  const queue = new DispatchQueue(policy(maxItems), pool, { maxWaitUs: 0, maxQueueItems: 10_000, ...o }, clock);
  return { clock, pool, queue };
}

/** Answers runs until `done` items have run; returns the runs' items in order. */
async function runAll(pool: FakePool, items: number): Promise<number[][]> {
  const runs: number[][] = [];
  let seen = 0;
  while (seen < items) {
    const call = await pool.nextRun();
    const got = itemsOf(call);
    runs.push(got);
    seen += got.length;
    answer(call);
  }
  return runs;
}

/** Submits items 1–4 to an idle queue and answers their batch after `ms` on the fake clock: one rate sample. */
async function runAlone(queue: DispatchQueue<number, number>, pool: FakePool, clock: FakeClock, ms: number): Promise<void> {
  const done = queue.submit([1, 2, 3, 4]);
  const call = await pool.nextRun();
  clock.advance(ms);
  answer(call);
  await Promise.all(done);
}

const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);
const runOf = (runs: number[][], item: number): number => runs.findIndex((r) => r.includes(item));

describe('fair dispatch queue', () => {
  test('a client flooding 50× its share does not put its backlog in front of another client', async () => {
    const { pool, queue } = setup(4);
    const flood = queue.submit(range(1000, 200), { client: 'flood' });
    const victim = queue.submit(range(1, 4), { client: 'victim' });
    const runs = await runAll(pool, 204);
    // FIFO would run the victim's items in runs 50 and 51; fair order interleaves them from the first run.
    assert.ok(Math.max(...range(1, 4).map((i) => runOf(runs, i))) <= 1, JSON.stringify(runs.slice(0, 3)));
    assert.equal(runs.flat().length, 204);
    await Promise.all([...flood, ...victim]);
  });

  test('weights shift shares: weight 3 gets three times the items of weight 1 while both are backlogged', async () => {
    const { pool, queue } = setup(4);
    const a = queue.submit(range(1000, 200), { client: 'a', weight: 3 });
    const b = queue.submit(range(2000, 200), { client: 'b', weight: 1 });
    const runs = await runAll(pool, 400);
    const first = runs.flat().slice(0, 80);
    const fromA = first.filter((x) => x < 2000).length;
    assert.ok(fromA >= 58 && fromA <= 62, `weight 3 of 4 should take ~60 of the first 80, took ${fromA}`);
    await Promise.all([...a, ...b]);
  });

  test('batch work waits while interactive work is queued, and fills what interactive work leaves', async () => {
    const { pool, queue } = setup(2);
    const warm = queue.submit([1], { client: 'c' });
    const running = await pool.nextRun(); // the pool is busy with [1]
    const batch = queue.submit(range(100, 4), { client: 'backfill', priority: 'batch' });
    const interactive = queue.submit(range(10, 3), { client: 'page' });
    answer(running);
    const runs = await runAll(pool, 7);
    assert.deepEqual(runs[0], [10, 11], 'interactive first, though queued after the batch work');
    assert.deepEqual(runs[1], [12, 100], 'batch work fills the rest of a batch');
    await Promise.all([...warm, ...batch, ...interactive]);
  });

  test('the per-client bound refuses the flooding client only', async () => {
    const { pool, queue } = setup(4, { maxQueueItems: 100, maxQueueItemsPerClient: 10 });
    const ok = queue.submit(range(1, 10), { client: 'flood' });
    const over = await Promise.allSettled(queue.submit([11], { client: 'flood' }));
    assert.equal(over[0]!.status, 'rejected');
    const e = (over[0] as PromiseRejectedResult).reason as PolyrayError;
    assert.equal(e.code, ErrorCode.OVERLOADED);
    assert.match(e.message, /This client has 10 items queued/);
    const other = queue.submit(range(50, 3), { client: 'other' });
    await runAll(pool, 13);
    assert.deepEqual(await Promise.all(other), [50, 51, 52]);
    await Promise.all(ok);
  });

  test('items whose deadline passes while queued are dropped before inference: DEADLINE_EXCEEDED', async () => {
    const { clock, pool, queue } = setup(4);
    const busy = queue.submit([1], { client: 'c' });
    const running = await pool.nextRun();
    const late = queue.submit([2, 3], { client: 'c', deadline: clock.now() + 50 });
    const fine = queue.submit([4], { client: 'd', deadline: clock.now() + 5000 });
    clock.advance(60);
    const rs = await Promise.allSettled(late);
    assert.deepEqual(
      rs.map((r) => (r.status === 'rejected' ? ((r as PromiseRejectedResult).reason as PolyrayError).code : 'ok')),
      [ErrorCode.DEADLINE_EXCEEDED, ErrorCode.DEADLINE_EXCEEDED],
    );
    assert.equal(queue.expired, 2);
    answer(running);
    const runs = await runAll(pool, 1);
    assert.deepEqual(runs, [[4]], 'the expired items never ran');
    await Promise.all([...busy, ...fine]);
  });

  test('an aborted caller: its queued items are removed and never run', async () => {
    const { pool, queue } = setup(4);
    const busy = queue.submit([1]);
    const running = await pool.nextRun();
    const gone = new AbortController();
    const mine = queue.submit([2, 3], { client: 'x', signal: gone.signal });
    const theirs = queue.submit([4], { client: 'y' });
    gone.abort();
    const rs = await Promise.allSettled(mine);
    assert.ok(rs.every((r) => r.status === 'rejected' && (r.reason as PolyrayError).extensions['reason'] === 'aborted'));
    assert.equal(queue.length, 1);
    answer(running);
    assert.deepEqual(await runAll(pool, 1), [[4]]);
    await Promise.all([...busy, ...theirs]);
    // Already aborted: refused at once.
    const dead = await Promise.allSettled(queue.submit([5], { signal: gone.signal }));
    assert.equal(((dead[0] as PromiseRejectedResult).reason as PolyrayError).code, ErrorCode.DEADLINE_EXCEEDED);
  });

  test('admission by time: a request that would be answered after the bound is refused, retry after the excess; a light client beside it is admitted', async () => {
    const { clock, pool, queue } = setup(4, { maxQueueWaitMs: 1000 });
    // Measure: one batch of 4 items (cost 1 each) takes 40 ms, so 10 ms per unit.
    const first = queue.submit([1, 2, 3, 4], { client: 'flood' });
    const run = await pool.nextRun();
    clock.advance(40);
    answer(run);
    await Promise.all(first);
    assert.equal(queue.msPerCost, 10);
    // The pool is now busy with one batch of the flood (4 units); 90 more queue behind it: answered after
    // 40 + 900 ms, within the bound: admitted.
    const busy = queue.submit(range(100, 4), { client: 'flood' });
    const running = await pool.nextRun();
    const backlog = queue.submit(range(200, 90), { client: 'flood' });
    // 20 more would start after those 94 units (940 ms) and take 200 ms themselves: over the bound by 140 ms.
    const over = await Promise.allSettled(queue.submit(range(300, 20), { client: 'flood' }));
    const e = (over[0] as PromiseRejectedResult).reason as PolyrayError;
    assert.equal(e.code, ErrorCode.OVERLOADED);
    assert.match(e.message, /about 1140 ms to answer this request \(at most 1000 ms/);
    assert.equal(e.extensions['retryAfterMs'], 140);
    // Another client's 4 items wait for its fair share only: admitted, and they run before the backlog.
    const light = queue.submit(range(1, 4), { client: 'light' });
    assert.ok(queue.expectedWaitMs('light', 4)! < 200);
    answer(running);
    const runs = await runAll(pool, 94);
    assert.ok(runOf(runs, 1) <= 1, 'the light client runs in the next batch or the one after');
    await Promise.all([...busy, ...backlog, ...light]);
  });

  test('calibrated admission: when admitted requests wait longer than the work they were admitted behind, predictions are scaled by that ratio', async () => {
    const { clock, pool, queue } = setup(4, { maxQueueWaitMs: 1000 });
    await runAlone(queue, pool, clock, 40);
    assert.equal(queue.correction, 1, 'nothing learnt yet');
    // Every batch of 4 runs at the measured rate (10 ms per item). Client a asks for 12 items, then client b
    // for 12 more: in fair order b's items share a's batches, so a waits for ~20 items where it was admitted
    // behind 12. The rates were right; what the model left out (work arriving later, served first) is what
    // the correction learns.
    for (let k = 0; k < 3; k++) {
      const mine = queue.submit(range(100 * k + 10, 12), { client: 'a' });
      const other = queue.submit(range(100 * k + 50, 12), { client: 'b' });
      for (let b = 0; b < 6; b++) {
        const call = await pool.nextRun();
        clock.advance(40);
        answer(call);
      }
      await Promise.all([...mine, ...other]);
    }
    const corr = queue.correction;
    assert.ok(corr > 1.1 && corr <= 4, `correction ${corr}`);
    // With a batch running, a request whose uncorrected wait fits the bound is refused once corrected.
    const rate = queue.msPerCost!;
    assert.ok(Math.abs(rate - 10) < 1e-9, `rate ${rate}`);
    const busy = queue.submit(range(500, 4));
    const running = await pool.nextRun();
    const n = Math.floor(1000 / rate) - 4;
    assert.ok((4 + n) * rate <= 1000 && (4 + n) * rate * corr > 1000);
    const refused = await Promise.allSettled(queue.submit(range(600, n)));
    const e = (refused[0] as PromiseRejectedResult).reason as PolyrayError;
    assert.equal(e.code, ErrorCode.OVERLOADED);
    assert.equal(e.message.match(/about (\d+) ms/)![1], String(Math.ceil((4 + n) * rate * corr)));
    answer(running);
    await Promise.all(busy);
    // Without recent samples (a minute later) the correction is 1 again.
    clock.advance(61_000);
    assert.equal(queue.correction, 1);
  });

  test('rates learnt while they were wrong do not stay in the correction: the work admitted behind is priced again at the rates measured by then', async () => {
    const { clock, pool, queue } = setup(4, { maxQueueWaitMs: 100_000 });
    await runAlone(queue, pool, clock, 40);
    // The load arrives and every batch now takes 100 ms (25 ms per item), 2.5x the rate the requests were
    // admitted with. Each request's wait matches its work at the new rate.
    for (let k = 0; k < 4; k++) {
      const ps = queue.submit(range(100 * k + 10, 12));
      for (let b = 0; b < 3; b++) {
        const call = await pool.nextRun();
        clock.advance(100);
        answer(call);
      }
      await Promise.all(ps);
    }
    assert.ok(queue.correction < 1.3, `correction ${queue.correction}`);
  });

  test('a slowdown is followed within a batch or two: the rate moves half-way up per batch, a fifth down', async () => {
    const { clock, pool, queue } = setup(4);
    const run = (ms: number): Promise<void> => runAlone(queue, pool, clock, ms);
    await run(40);
    assert.equal(queue.msPerCost, 10);
    await run(120);
    assert.equal(queue.msPerCost, 20, 'half-way up to 30');
    await run(120);
    assert.equal(queue.msPerCost, 25);
    await run(20);
    assert.equal(queue.msPerCost, 21, 'a fifth of the way down to 5');
  });

  test('a running batch counts for what is left of it, and one running late scales the wait by how late', async () => {
    const { clock, pool, queue } = setup(4, { maxQueueWaitMs: 1000 });
    await runAlone(queue, pool, clock, 400);
    // 100 ms per item. A batch of 4 (400 ms) starts; a request of 6 items would wait 400 + 600 ms.
    const busy = queue.submit(range(10, 4));
    const running = await pool.nextRun();
    assert.equal(queue.expectedWaitMs('', 0), 400);
    const tooMuch = await Promise.allSettled(queue.submit(range(20, 7)));
    assert.equal(((tooMuch[0] as PromiseRejectedResult).reason as PolyrayError).code, ErrorCode.OVERLOADED, '400 + 700 ms > 1000 ms');
    clock.advance(300);
    assert.equal(queue.expectedWaitMs('', 0), 100, '100 ms of the batch left');
    const fits = queue.submit(range(30, 7));
    // The batch has now run 800 ms where 400 were expected: twice as slow, so is everything queued.
    clock.advance(500);
    const late = await Promise.allSettled(queue.submit(range(40, 1)));
    const e = (late[0] as PromiseRejectedResult).reason as PolyrayError;
    assert.equal(e.code, ErrorCode.OVERLOADED);
    // Left of the running batch: at least a tenth (40 ms); then 700 + 100 ms queued and its own: x2.
    assert.equal(e.message.match(/about (\d+) ms/)![1], String(Math.ceil((40 + 700 + 100) * 2)));
    answer(running);
    await Promise.all(busy);
    for (let b = 0; b < 2; b++) {
      const call = await pool.nextRun();
      answer(call);
    }
    await Promise.all(fits);
  });

  test("mixed lengths: queued work is priced at each item's own size-class rate, not at the new request's", async () => {
    // Items are their own cost (tokens); one item per batch.
    const clock = new FakeClock();
    const pool = new FakePool({ capacity: 1 });
    const queue = new DispatchQueue({ ...policy(1), cost: (item: number) => item }, pool, { maxWaitUs: 0, maxQueueItems: 10_000, maxQueueWaitMs: 1000 }, clock);
    // Measured: a short item runs at 1 ms per token, a long one at 4 (attention grows with the length).
    for (const [item, ms] of [
      [8, 8],
      [200, 800],
    ] as const) {
      const done = queue.submit([item], { client: 'c' });
      const run = await pool.nextRun();
      clock.advance(ms);
      answer(run);
      await Promise.all(done);
    }
    // Ten short items: one running, nine queued, 80 tokens of short work in all = 80 ms.
    const shorts = queue.submit(
      Array.from({ length: 10 }, () => 8),
      { client: 'c' },
    );
    const running = await pool.nextRun();
    assert.equal(queue.expectedWaitMs('c', 200, 1, 0, 200), 80, 'short work ahead at the short rate (at the long rate: 320 ms)');
    // Before tokenising, with a lower bound of the new items' tokens: the request's own work counts too.
    assert.equal(queue.refuseEarly({ client: 'c' }, 1), undefined, '80 ms ahead');
    assert.equal(queue.refuseEarly({ client: 'c' }, 1, [200]), undefined, '80 + 800 ms');
    assert.equal(queue.refuseEarly({ client: 'c' }, 2, [250, 250])?.code, ErrorCode.OVERLOADED, '80 + 2 × 1000 ms');
    // A long item behind them: 80 + 200 × 4 = 880 ms, within the 1000 ms bound (priced at the long rate the
    // queue ahead made it 1,120 ms: refused).
    let refused: unknown;
    const long = queue.submit([200], { client: 'c' }).map((p) =>
      p.catch((e: unknown) => {
        refused = e;
      }),
    );
    await flush();
    assert.equal(refused, undefined, 'the long item is admitted');
    answer(running);
    await runAll(pool, 10);
    await Promise.all([...shorts, ...long]);
  });

  test('paced refusals: OVERLOADED is delivered refusalPaceMs after the submit, not at once', async () => {
    const { clock, pool, queue } = setup(4, { maxQueueItems: 2, refusalPaceMs: 250 });
    const held = queue.submit([1, 2]);
    const running = await pool.nextRun();
    let settled = false;
    const refused = Promise.allSettled(queue.submit([3, 4, 5])).then((r) => {
      settled = true;
      return r;
    });
    await flush();
    assert.equal(settled, false, 'not answered at once');
    clock.advance(249);
    await flush();
    assert.equal(settled, false);
    clock.advance(1);
    const r = await refused;
    assert.ok(r.every((x) => x.status === 'rejected' && (x.reason as PolyrayError).code === ErrorCode.OVERLOADED));
    assert.equal(queue.rejected, 3);
    // retryAfterMs counts from the answer: the pace already waited is taken off, at least 100 ms left.
    assert.equal((r[0] as PromiseRejectedResult).reason.extensions.retryAfterMs, 100);
    const later = queue.paced(new PolyrayError(ErrorCode.OVERLOADED, 'busy', { retryAfterMs: 1000 }));
    clock.advance(250);
    await assert.rejects(later, (e: PolyrayError) => e.code === ErrorCode.OVERLOADED && e.extensions['retryAfterMs'] === 750 && e.message === 'busy');
    answer(running);
    await Promise.all(held);
  });

  test('a queue emptied by callers giving up is idle: the time until the next batch is not measured as its cost', async () => {
    const { clock, pool, queue } = setup(4, { maxQueueWaitMs: 1000 });
    const first = queue.submit([1, 2, 3, 4]);
    const run = await pool.nextRun();
    // Items queued behind the running batch, whose caller then goes away.
    const gone = new AbortController();
    const quit = queue.submit([5, 6], { signal: gone.signal });
    clock.advance(40);
    answer(run);
    await Promise.all(first);
    gone.abort();
    await Promise.allSettled(quit);
    assert.equal(queue.length, 0);
    clock.advance(5000);
    const later = queue.submit([7, 8, 9, 10]);
    const next = await pool.nextRun();
    clock.advance(40);
    answer(next);
    await Promise.all(later);
    assert.equal(queue.msPerCost, 10, 'the 5 s the queue stood empty are not a batch cost');
  });

  test('a batch whose worker died goes back to the front once, for a fresh worker; a second death fails it', async () => {
    const { pool, queue } = setup(4);
    const died = () => new PolyrayError(ErrorCode.INFERENCE_FAILED, 'The inference worker stopped during this batch', { reason: 'worker-exit' });
    const ps = queue.submit([1, 2], { client: 'a' });
    (await pool.nextRun()).reject(died());
    const again = await pool.nextRun();
    assert.deepEqual(itemsOf(again), [1, 2], 'the same items, run again');
    answer(again);
    assert.deepEqual(await Promise.all(ps), [1, 2]);
    assert.equal(queue.retried, 2);
    const twice = queue.submit([3], { client: 'a' });
    (await pool.nextRun()).reject(died());
    (await pool.nextRun()).reject(died());
    const r = await Promise.allSettled(twice);
    assert.equal(((r[0] as PromiseRejectedResult).reason as PolyrayError).code, ErrorCode.INFERENCE_FAILED);
  });

  test('property: whatever clients, weights and classes submit, every item runs exactly once, each client in its own order', async () => {
    const submits = fc.array(
      fc.record({ client: fc.constantFrom('a', 'b', 'c', 'd'), n: fc.integer({ min: 1, max: 12 }), weight: fc.constantFrom(1, 2, 5), batch: fc.boolean() }),
      { minLength: 1, maxLength: 12 },
    );
    await fc.assert(
      fc.asyncProperty(submits, fc.integer({ min: 1, max: 6 }), async (subs, maxItems) => {
        const { pool, queue } = setup(maxItems);
        let next = 1;
        const order = new Map<string, number[]>();
        const batchOf = new Map<number, boolean>();
        const all: Promise<number>[] = [];
        for (const s of subs) {
          const items = range(next, s.n);
          next += s.n;
          order.set(s.client, [...(order.get(s.client) ?? []), ...items]);
          for (const x of items) batchOf.set(x, s.batch);
          all.push(...queue.submit(items, { client: s.client, weight: s.weight, priority: s.batch ? 'batch' : 'interactive' }));
        }
        const runs = await runAll(pool, next - 1);
        const ran = runs.flat();
        assert.deepEqual(
          [...ran].sort((x, y) => x - y),
          range(1, next - 1),
          'each item once',
        );
        assert.deepEqual(await Promise.all(all), range(1, next - 1), 'each caller gets its own item back');
        await flush();
        assert.equal(queue.length, 0);
        // Within one client and one class, items run in the order they were submitted.
        for (const s of subs) {
          const mine = ran.filter((x) => order.get(s.client)!.includes(x));
          const sameClass = (x: number) => batchOf.get(x);
          for (const cls of [true, false]) {
            const seq = mine.filter((x) => sameClass(x) === cls);
            assert.deepEqual(
              seq,
              [...seq].sort((x, y) => x - y),
            );
          }
        }
      }),
      { numRuns: 150 },
    );
  });
});
