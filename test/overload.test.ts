/**
 * Overload bounded by time (issue 28), on a replica in a child process: about ten times what it can
 * compute, from 48 closed-loop connections sending 8 new ~96-token texts each, plus callers that give up
 * after 300 ms. Accepted requests are answered within the admission bound (POLYRAY_QUEUE_MAX_WAIT_MS) plus
 * the batch running when they were admitted (and tokenisation and HTTP under a loaded event loop); the rest are refused with OVERLOADED and a Retry-After, answered
 * after the refusal pace (POLYRAY_QUEUE_REFUSAL_PACE_MS, 250 ms); a connection that retries at once is held to
 * one refusal per pace; abandoned requests' queued
 * inputs are dropped, never computed; latency is back to normal within 5 s of the load stopping.
 *
 * 8 s of load in `npm test`; `POLYRAY_FAULTS_LONG=1` runs 30 s (`npm run test:faults`), and
 * `POLYRAY_FAULTS_OUT=<dir>` writes the figures there as JSON.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type ChildServer, startChildServer } from './helpers/child-server.ts';
import { FAULTS_LONG as LONG, recordFigures } from './helpers/faults.ts';

const MODEL = 'text-bert-synthetic';
const WINDOW_MS = LONG ? 30_000 : 8_000;
const CONNECTIONS = 48;
const QUITTERS = 8;
const MAX_WAIT_MS = 2000;

/**
 * n random lower-case words of 3–7 letters, from one draw of random bytes (a draw per word made the load
 * generator, which shares the two cores with the service, take ~60 % of a core).
 */
const text = (n: number): string => {
  const b = randomBytes(n * 8);
  let i = 0;
  const words: string[] = [];
  for (let w = 0; w < n; w++) {
    const len = 3 + (b[i++]! % 5);
    let word = '';
    for (let k = 0; k < len; k++) word += String.fromCharCode(97 + (b[i++]! % 26));
    words.push(word);
  }
  return words.join(' ');
};

const p = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

/** Sum of a Prometheus series' samples whose labels include every `match`. */
function metric(text: string, name: string, match: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(match).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('overload bounded by time', () => {
  let s: ChildServer;
  before(async () => {
    s = await startChildServer({ POLYRAY_SERVE_MODELS: MODEL, POLYRAY_DEFAULT_POST_MODEL: MODEL, POLYRAY_QUEUE_MAX_WAIT_MS: String(MAX_WAIT_MS) });
  });
  after(async () => {
    await s?.stop();
  });

  const post = (input: string | string[], signal?: AbortSignal) =>
    fetch(`${s.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, input, encoding_format: 'base64' }),
      ...(signal ? { signal } : {}),
    });
  const one = async (): Promise<number> => {
    const t = performance.now();
    await (await post(text(12))).arrayBuffer();
    return performance.now() - t;
  };

  test(`~10x load for ${WINDOW_MS / 1000} s: accepted wait ≤ bound + a batch, refusals at once, quitters never computed, recovery within 5 s`, {
    timeout: WINDOW_MS + 120_000,
  }, async (ctx) => {
    for (let i = 0; i < 10; i++) await one();
    const base: number[] = [];
    for (let i = 0; i < 20; i++) base.push(await one());
    const baselineMs = p(base, 0.5);

    const end = performance.now() + WINDOW_MS;
    const accepted: number[] = [];
    const refusedMs: number[] = [];
    const retryAfter: number[] = [];
    let other = 0;
    let quitItems = 0;
    let quitRequests = 0;
    const loader = async (): Promise<void> => {
      while (performance.now() < end) {
        const t = performance.now();
        const res = await post(Array.from({ length: 8 }, () => text(90)));
        await res.arrayBuffer();
        const ms = performance.now() - t;
        if (res.status === 200) accepted.push(ms);
        else if (res.status === 503 || res.status === 429) {
          refusedMs.push(ms);
          retryAfter.push(Number(res.headers.get('retry-after-ms')));
          await sleep(100);
        } else other++;
      }
    };
    const quitter = async (): Promise<void> => {
      while (performance.now() < end) {
        quitRequests++;
        quitItems += 4;
        try {
          await (
            await post(
              Array.from({ length: 4 }, () => text(90)),
              AbortSignal.timeout(300),
            )
          ).arrayBuffer();
          quitItems -= 4; // answered within 300 ms after all
          quitRequests--;
        } catch {
          // gave up
        }
      }
    };
    await Promise.all([...Array.from({ length: CONNECTIONS }, () => loader()), ...Array.from({ length: QUITTERS }, () => quitter())]);
    const stopped = performance.now();
    const afterStop: { afterS: number; ms: number }[] = [];
    for (const afterS of [0.5, 1, 2, 5]) {
      await sleep(Math.max(0, stopped + afterS * 1000 - performance.now()));
      afterStop.push({ afterS, ms: await one() });
    }

    const m = await s.metrics({});
    const computed = metric(m, 'polyray_items_total', { model: MODEL, source: 'COMPUTED' });
    const expired = metric(m, 'polyray_queue_items_dropped_total', { model: MODEL, reason: 'expired' });
    // The longest batch run: the smallest histogram bound that holds every observation.
    const total = metric(m, 'polyray_inference_batch_seconds_count', { model: MODEL });
    let batchS = Number.POSITIVE_INFINITY;
    for (const line of m.split('\n')) {
      const b = /^polyray_inference_batch_seconds_bucket\{le="([^"]+)",model="([^"]+)"\} (\d+)/.exec(line);
      if (b && b[2] === MODEL && Number(b[3]) === total) batchS = Math.min(batchS, b[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(b[1]));
    }
    const probes = 10 + 20 + afterStop.length;
    const figures = {
      windowS: WINDOW_MS / 1000,
      connections: CONNECTIONS,
      accepted: accepted.length,
      acceptedP50Ms: Math.round(p(accepted, 0.5)),
      acceptedP99Ms: Math.round(p(accepted, 0.99)),
      longestBatchAtMostMs: batchS * 1000,
      refused: refusedMs.length,
      refusedP99Ms: Math.round(p(refusedMs, 0.99)),
      retryAfterP50Ms: p(retryAfter, 0.5),
      otherErrors: other,
      abandonedRequests: quitRequests,
      abandonedItems: quitItems,
      itemsDroppedUnrun: expired,
      computedItems: computed,
      baselineMs: Math.round(baselineMs * 10) / 10,
      afterStopMs: afterStop.map((x) => ({ afterS: x.afterS, ms: Math.round(x.ms * 10) / 10 })),
    };
    ctx.diagnostic(JSON.stringify(figures));
    await recordFigures('overload', figures);

    assert.ok(accepted.length > 0 && refusedMs.length > 5 * accepted.length, `overloaded (${accepted.length} accepted, ${refusedMs.length} refused)`);
    assert.equal(other, 0, 'no other errors');
    assert.ok(Number.isFinite(batchS), 'batch run times were measured');
    assert.ok(
      p(accepted, 0.99) <= MAX_WAIT_MS + 2 * batchS * 1000 + 500,
      `accepted p99 ${p(accepted, 0.99).toFixed(0)} ms ≤ the bound ${MAX_WAIT_MS} ms + its batch and the one before (≤ ${batchS * 1000} ms each) + 500 ms`,
    );
    // Refused before queueing (and mostly before tokenising), answered after the 250 ms pace: the rest is the
    // loaded event loop's and the HTTP round trip's, under the bound they would otherwise wait (p99 0.7-1.3 s
    // measured on 2 cores).
    assert.ok(p(refusedMs, 0.99) < MAX_WAIT_MS, `refusals answer before the bound (p99 ${p(refusedMs, 0.99).toFixed(0)} ms)`);
    assert.ok(p(retryAfter, 0.5) > 0, 'refusals say when to retry');
    // Abandoned requests: their queued items were dropped (counted), and nothing was computed beyond what
    // accepted requests received and what abandoned requests had already sent to a batch.
    assert.ok(expired > 0, 'queued items of callers that gave up were dropped');
    assert.ok(computed <= accepted.length * 8 + probes + (quitItems - expired), `computed ${computed} ≤ accepted + probes + abandoned items not dropped`);
    const at5 = afterStop.find((x) => x.afterS === 5)!.ms;
    assert.ok(
      at5 <= Math.max(3 * baselineMs, baselineMs + 50),
      `latency back to normal 5 s after the load: ${at5.toFixed(1)} ms vs ${baselineMs.toFixed(1)} ms before`,
    );
  });

  test('a connection that retries at once after a refusal is held to one refusal per pace (250 ms by default)', { timeout: 120_000 }, async (ctx) => {
    // Without pacing such connections came back within a millisecond, hundreds of times a second, and the
    // event loop's work on them took the inference worker's CPU (bench:overload: throughput halved).
    const connections = 16;
    const windowMs = 4000;
    const end = performance.now() + windowMs;
    let accepted = 0;
    let other = 0;
    const refusedMs: number[] = [];
    await Promise.all(
      Array.from({ length: connections }, async () => {
        while (performance.now() < end) {
          const t = performance.now();
          const res = await post(Array.from({ length: 8 }, () => text(90)));
          await res.arrayBuffer();
          if (res.status === 200) accepted++;
          else if (res.status === 429) refusedMs.push(performance.now() - t);
          else other++;
        }
      }),
    );
    const perConnectionPerS = refusedMs.length / connections / (windowMs / 1000);
    ctx.diagnostic(JSON.stringify({ accepted, refused: refusedMs.length, perConnectionPerS, refusedP50Ms: Math.round(p(refusedMs, 0.5)) }));
    assert.ok(refusedMs.length > 0, 'overloaded: some requests were refused');
    assert.ok(accepted > 0, 'and some served');
    assert.equal(other, 0, 'no other errors');
    assert.ok(p(refusedMs, 0.01) >= 245, `refusals are answered after the pace, not at once (fastest 1 %: ${p(refusedMs, 0.01).toFixed(0)} ms)`);
    assert.ok(perConnectionPerS <= 4.2, `at most four refusals per connection per second (${perConnectionPerS.toFixed(2)})`);
    // Let the backlog drain before the replica stops.
    await sleep(3000);
  });
});
