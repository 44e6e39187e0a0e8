import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { InferencePool } from '../src/runtime/pool.ts';
import { silentLogger } from '../src/log.ts';

const MODEL = path.resolve('models/text-glove/model.onnx');

/** Nice value of every thread of this process, by thread id (field 19 of /proc/self/task/TID/stat). */
function threadNice(): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      // Fields after the command name (which may hold spaces) start at state, field 3.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(tid), Number(fields[16]));
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

async function withPool(niceness: number, intraOpThreads: number, body: (pool: InferencePool, before: Set<number>) => Promise<void>): Promise<void> {
  const before = new Set(threadNice().keys());
  const pool = new InferencePool({ workers: 1, intraOpThreads, niceness, logger: silentLogger() });
  try {
    const loaded = await pool.start([{ name: 'text-glove', path: MODEL, providers: ['cpu'], allowSpinning: false }]);
    assert.equal(loaded[0]?.ok, true);
    await body(pool, before);
  } finally {
    await pool.close();
  }
}

async function runOnce(pool: InferencePool): Promise<void> {
  const lease = await pool.acquire();
  try {
    const ids = new BigInt64Array([2n, 3n, 4n, 0n]);
    const mask = new BigInt64Array([1n, 1n, 1n, 0n]);
    const r = await lease.run('text-glove', [
      { name: 'input_ids', type: 'int64', data: ids, dims: [1, 4] },
      { name: 'attention_mask', type: 'int64', data: mask, dims: [1, 4] },
    ], 'embedding');
    assert.equal(r.dims[1], 100);
  } finally {
    lease.release();
  }
}

describe('inference thread priority', { skip: process.platform === 'linux' ? false : 'nice is per thread on Linux only' }, () => {
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
      assert.ok(earlier.every(([, nice]) => nice === 0), 'threads that existed before the pool keep their priority');
    });
  });

  test('niceness 0 leaves the threads it starts alone', async () => {
    await withPool(0, 2, async (pool, before) => {
      await runOnce(pool);
      assert.equal(pool.stats().niceness, 0);
      const started = [...threadNice()].filter(([tid]) => !before.has(tid));
      assert.ok(started.length >= 2, 'the worker and an intra-op thread were started');
      assert.ok(started.every(([, nice]) => nice === 0), JSON.stringify(started));
    });
  });
});
