/**
 * Inference workers killed in the middle of their runs, again and again, under load (issue 28): the
 * service survives (workers are child processes), no request hangs, what fails in the pool is bounded by
 * the items of the batches that were killed twice (the rest is refused at admission, retryably), and
 * throughput comes back within 5 s of the last kill.
 *
 * Short by default (a kill every second for 8 s, in `npm test`); `POLYRAY_FAULTS_LONG=1` runs the fault
 * suite's version (a kill every 2 s for 30 s, `npm run test:faults`), and `POLYRAY_FAULTS_OUT=<dir>` writes
 * the figures there as JSON for bench/RESULTS.md.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FAULTS_LONG as LONG, recordFigures } from './helpers/faults.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

const MODEL = 'text-bert-synthetic';
const RUN_MS = LONG ? 30_000 : 8_000;
const KILL_EVERY_MS = LONG ? 2_000 : 1_000;
const CLIENTS = 8;
/** A request not answered in this time counts as hung. */
const HANG_MS = 20_000;

interface Outcome {
  at: number;
  ms: number;
  code: string;
  items: number;
}

describe('inference workers killed mid-run under load', () => {
  let t: TestServer;
  before(async () => {
    t = await startPolyray({ models: { serve: [MODEL], defaultPostModel: MODEL }, inference: { workers: 1 } } as never);
  });
  after(async () => {
    await t?.stop();
  });

  test(`a kill every ${KILL_EVERY_MS} ms for ${RUN_MS / 1000} s: the process survives, nothing hangs, throughput recovers`, {
    timeout: RUN_MS + 90_000,
  }, async (ctx) => {
    const outcomes: Outcome[] = [];
    let seq = 0;
    let running = true;
    const t0 = performance.now();
    const client = async (): Promise<void> => {
      while (running) {
        const n = seq++;
        const inputs = Array.from({ length: 4 }, (_, i) => ({ text: `request ${n} input ${i} ${'words of some length '.repeat(4)}` }));
        const start = performance.now();
        let code = 'OK';
        try {
          const res = await fetch(`${t.url}/graphql`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ query: `query($i: [EmbedInput!]!) { embed(model: "${MODEL}", inputs: $i) { dimensions } }`, variables: { i: inputs } }),
            signal: AbortSignal.timeout(HANG_MS),
          });
          const body = (await res.json()) as { errors?: { extensions?: { code?: string } }[] };
          if (body.errors) code = String(body.errors[0]?.extensions?.code ?? 'ERROR');
        } catch (e) {
          code = (e as Error).name === 'TimeoutError' ? 'HUNG' : 'NETWORK';
        }
        outcomes.push({ at: start - t0, ms: performance.now() - start, code, items: inputs.length });
      }
    };
    const clients = Array.from({ length: CLIENTS }, () => client());

    // Warm-up, then a steady rate (2–5 s) before the first kill, to compare recovery against.
    await sleep(5000);
    const killsFrom = performance.now() - t0;
    const queue = t.server.host.queues.get(MODEL)!;
    const retriedBefore = queue.stats().retried;
    let kills = 0;
    let midRun = 0;
    while (performance.now() - t0 - killsFrom < RUN_MS) {
      await sleep(KILL_EVERY_MS);
      // Wait (briefly) for a run in progress, so the kill lands mid-run, as a crash would.
      const until = performance.now() + 500;
      while (t.server.pool.stats().busy === 0 && performance.now() < until) await sleep(2);
      if (t.server.pool.stats().busy > 0) midRun++;
      if (t.server.pool.stats().workers === 0) continue; // the replacement is still starting
      await t.server.pool.kill(0);
      kills++;
    }
    const lastKill = performance.now() - t0;
    await sleep(10_000);
    running = false;
    await Promise.all(clients);

    const rate = (from: number, to: number): number => outcomes.filter((o) => o.code === 'OK' && o.at >= from && o.at < to).length / ((to - from) / 1000);
    const before = rate(2000, killsFrom);
    const recovered = rate(lastKill + 5000, lastKill + 10_000);
    const failed = outcomes.filter((o) => o.code !== 'OK');
    const byCode: Record<string, number> = {};
    for (const o of failed) byCode[o.code] = (byCode[o.code] ?? 0) + 1;
    const retried = queue.stats().retried - retriedBefore;
    const figures = {
      runMs: RUN_MS,
      killEveryMs: KILL_EVERY_MS,
      kills,
      killsMidRun: midRun,
      requests: outcomes.length,
      failedRequests: failed.length,
      failedByCode: byCode,
      itemsRequeued: retried,
      okPerSecondBefore: Math.round(before * 10) / 10,
      okPerSecond5to10sAfterLastKill: Math.round(recovered * 10) / 10,
      recoveredFraction: Math.round((recovered / before) * 100) / 100,
    };
    ctx.diagnostic(JSON.stringify(figures));
    await recordFigures('worker-kills', figures);

    assert.ok(kills >= Math.floor(RUN_MS / KILL_EVERY_MS) - 2, `workers were killed (${kills})`);
    assert.ok(midRun >= 1, 'at least one kill landed in the middle of a run');
    assert.equal(byCode['HUNG'] ?? 0, 0, 'no request hung');
    assert.equal(byCode['NETWORK'] ?? 0, 0, 'the service never dropped a connection (the process survived)');
    assert.ok(retried > 0, 'killed batches were queued again');
    // A request fails in the pool only when its batch was killed twice (requeued once, then killed again):
    // never more requests than items that went through a killed batch.
    const inferenceFailed = byCode['INFERENCE_FAILED'] ?? 0;
    assert.ok(inferenceFailed <= retried, `INFERENCE_FAILED requests ${inferenceFailed} ≤ items of killed batches ${retried}`);
    // Or it is refused at admission: while restarts keep the pool down, the queue's expected wait can pass
    // the admission bound, and the answer is OVERLOADED with retryAfterMs (nothing run, nothing charged).
    // Runs of the long version on 2026-12-07 saw 3-7 of ~1,650 requests refused so, on this commit and on
    // the code before this day's changes alike (an earlier run: 0 of 3,620).
    for (const o of failed) assert.ok(o.code === 'INFERENCE_FAILED' || o.code === 'OVERLOADED', `only retryable codes, got ${o.code}`);
    // The target is ≥ 90 % (the figure goes to bench/RESULTS.md); the assertion asks for half: on this 2-core
    // machine two windows of one steady load differ by up to ~20 % (control runs without kills measured
    // 1.06 and 1.22 between the same windows), and one run late in a CI `npm test` measured 0.70 (local
    // runs of the same code: 0.88, 0.99, 1.05). The pool here has one worker, so a pool that did not
    // recover serves nothing at all: half separates that from the windows' noise.
    assert.ok(recovered >= 0.5 * before, `throughput back within 5 s of the last kill: ${recovered.toFixed(1)} vs ${before.toFixed(1)} ok/s`);
    assert.equal((await fetch(`${t.url}/readyz`)).status, 200);
  });
});
