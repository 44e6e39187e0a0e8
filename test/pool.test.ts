import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { InferencePool, type Lease, type RunResult } from '../src/runtime/pool.ts';
import { silentLogger } from '../src/log.ts';

const MODEL = path.resolve('models/text-glove/model.onnx');

/** Nice value of every thread of a process (this one by default), by thread id (field 19 of /proc/PID/task/TID/stat). */
function threadNice(pid: number | 'self' = 'self'): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      // Fields after the command name (which may hold spaces) start at state, field 3.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(tid), Number(fields[16]));
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

async function withPool(
  niceness: number,
  intraOpThreads: number,
  body: (pool: InferencePool, before: Set<number>) => Promise<void>,
  pipelineDepth = 1,
  isolation: 'process' | 'thread' = 'thread',
): Promise<void> {
  const before = new Set(threadNice().keys());
  const pool = new InferencePool({ workers: 1, intraOpThreads, niceness, pipelineDepth, isolation, logger: silentLogger() });
  try {
    const loaded = await pool.start([{ name: 'text-glove', path: MODEL, providers: ['cpu'], allowSpinning: false }]);
    assert.equal(loaded[0]?.ok, true);
    await body(pool, before);
  } finally {
    await pool.close();
  }
}

/** One glove run of `rows` rows of the token ids given (padded to 4). */
function gloveRun(lease: Lease, rows: number[][]): Promise<RunResult> {
  const n = rows.length;
  const ids = new BigInt64Array(n * 4);
  const mask = new BigInt64Array(n * 4);
  rows.forEach((r, i) => {
    r.forEach((id, j) => {
      ids[i * 4 + j] = BigInt(id);
      mask[i * 4 + j] = 1n;
    });
  });
  return lease.run(
    'text-glove',
    [
      { name: 'input_ids', type: 'int64', data: ids, dims: [n, 4] },
      { name: 'attention_mask', type: 'int64', data: mask, dims: [n, 4] },
    ],
    'embedding',
  );
}

async function runOnce(pool: InferencePool): Promise<void> {
  const lease = await pool.acquire();
  try {
    const r = await gloveRun(lease, [[2, 3, 4]]);
    assert.equal(r.dims[1], 100);
  } finally {
    lease.release();
  }
}

/** Resolves true when `p` settles within `ms`, false otherwise. */
const settlesWithin = (p: Promise<unknown>, ms: number): Promise<boolean> =>
  Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

describe('inference thread priority (worker threads, and worker processes)', {
  skip: process.platform === 'linux' ? false : 'nice is per thread on Linux only',
}, () => {
  test('niceness lowers the worker and its ONNX Runtime threads, never the main thread', async () => {
    await withPool(10, 2, async (pool, before) => {
      await runOnce(pool);
      assert.equal(pool.stats().niceness, 10);
      const now = threadNice();
      assert.equal(now.get(process.pid), 0, 'main thread keeps nice 0');
      const lowered = [...now].filter(([tid, nice]) => !before.has(tid) && nice === 10);
      // The worker thread itself plus at least one intra-op thread of ONNX Runtime (intra 2 → one extra thread).
      assert.ok(lowered.length >= 2, `expected >= 2 threads at nice 10, found ${lowered.length}: ${JSON.stringify([...now])}`);
      const earlier = [...now].filter(([tid]) => before.has(tid));
      assert.ok(
        earlier.every(([, nice]) => nice === 0),
        'threads that existed before the pool keep their priority',
      );
    });
  });

  test('a worker process: niceness lowers its ONNX Runtime threads; every thread of the service keeps nice 0', async () => {
    await withPool(
      10,
      2,
      async (pool, before) => {
        await runOnce(pool);
        assert.equal(pool.stats().niceness, 10);
        // Threads of this process that existed before may be a previous test's leftovers; none the pool started is lowered.
        const started = [...threadNice()].filter(([tid]) => !before.has(tid));
        assert.ok(
          started.every(([, nice]) => nice === 0),
          `no thread of the service process is lowered: ${JSON.stringify(started)}`,
        );
        const [pid] = pool.workerPids();
        assert.ok(pid !== undefined && pid !== process.pid, 'the worker is a process of its own');
        const lowered = [...threadNice(pid)].filter(([, nice]) => nice === 10);
        // The worker's main thread plus at least one intra-op thread of ONNX Runtime.
        assert.ok(lowered.length >= 2, `expected >= 2 threads at nice 10 in the worker, found ${lowered.length}`);
      },
      1,
      'process',
    );
  });

  test('niceness 0 leaves the threads it starts alone', async () => {
    await withPool(0, 2, async (pool, before) => {
      await runOnce(pool);
      assert.equal(pool.stats().niceness, 0);
      const started = [...threadNice()].filter(([tid]) => !before.has(tid));
      assert.ok(started.length >= 2, 'the worker and an intra-op thread were started');
      assert.ok(
        started.every(([, nice]) => nice === 0),
        JSON.stringify(started),
      );
    });
  });
});

describe('worker pipeline depth', () => {
  test('depth 1: a worker holds one lease; the next acquire waits for its release', async () => {
    await withPool(0, 1, async (pool) => {
      const a = await pool.acquire();
      const b = pool.acquire();
      assert.equal(await settlesWithin(b, 100), false, 'second lease granted while the first is held');
      a.release();
      assert.equal(await settlesWithin(b, 1000), true);
      (await b).release();
    });
  });

  test('depth 2: two batches queue on one worker, run in order, and return their own results', async () => {
    await withPool(
      0,
      1,
      async (pool) => {
        const a = await pool.acquire();
        const b = await pool.acquire();
        const c = pool.acquire();
        assert.equal(await settlesWithin(c, 100), false, 'a third lease exceeds depth 2');
        const rowsA = [
          [5, 6, 7],
          [8, 9],
        ];
        const rowsB = [[10, 11, 12, 13]];
        const [ra, rb] = await Promise.all([gloveRun(a, rowsA), gloveRun(b, rowsB)]);
        assert.deepEqual(ra.dims, [2, 100]);
        assert.deepEqual(rb.dims, [1, 100]);
        // Each result is its own batch's: the same rows run alone give the same vectors.
        a.release();
        const alone = await gloveRun(b, rowsB);
        assert.deepEqual([...alone.data], [...rb.data]);
        assert.notDeepEqual([...ra.data.slice(0, 100)], [...rb.data]);
        b.release();
        (await c).release();
        assert.equal(pool.stats().runs, 3);
      },
      2,
    );
  });

  test('rejects a depth below 1', () => {
    assert.throws(
      () => new InferencePool({ workers: 1, intraOpThreads: 1, pipelineDepth: 0, logger: silentLogger() }),
      /pipelineDepth must be an integer >= 1/,
    );
  });
});
