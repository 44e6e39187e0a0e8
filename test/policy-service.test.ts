/**
 * The policy loop through the real service: a Zipf workload over GraphQL, the service's own trace
 * (rate 1.0, JSONL in a temp folder), the simulator's predicted memory hit rate against the rate the
 * service measured, the admin query `cachePolicy`, and auto-apply of TTLs within bounds; then, at the
 * default sample rate, the live prediction for the running setting and a 4x memory tier against services
 * running each (three text sets).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { MemoryCache } from '../src/cache/memory.ts';
import type { DeepPartial, PolyrayConfig } from '../src/config/index.ts';
import { createLogger } from '../src/log.ts';
import { PolicyController } from '../src/policy/controller.ts';
import { DEFAULT_PRICES } from '../src/policy/cost.ts';
import { openTrace } from '../src/policy/read.ts';
import { Simulator } from '../src/policy/simulator.ts';
import { memoryEntryBytes } from '../src/policy/sizes.ts';
import { zipfIds, zipfTrace } from '../src/policy/synthetic.ts';
import { Ring, type TraceRecord } from '../src/policy/trace.ts';
import { TtlOverrideCache } from '../src/policy/ttl-override.ts';
import type { ServiceStats } from '../src/service/types.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

const EMBED = `query($inputs: [EmbedInput!]!) { embed(model: "text-glove", inputs: $inputs) { source } }`;
/** text-glove: 100 float32 = 400 bytes, key `text-glove@<16>:<43>` = 71 characters. */
const ENTRY = memoryEntryBytes(400, 71);
const MEMORY_ENTRIES = 150;
const MEMORY_TTL_MS = 1500;
/** Allowed gap between the simulated and the measured memory hit rate (full trace). */
const TOLERANCE = 0.02;

describe('simulated vs measured hit rate on the real service', () => {
  let dir: string;
  let s: TestServer;
  let measured: { items: number; memory: number; computed: number };
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-policy-'));
    s = await startPolyray({
      models: { serve: ['text-glove'] },
      batching: { maxWaitUs: 0 },
      cache: { memory: { maxBytes: MEMORY_ENTRIES * ENTRY, ttlMs: MEMORY_TTL_MS } },
      trace: { sampleRate: 1, dir, flushMs: 100 },
      policy: { intervalMs: 3_600_000 },
    } as DeepPartial<PolyrayConfig>);
    const before = s.server.text.stats();
    // Zipf(1.0) over 1500 posts with a little churn; 8 distinct posts per request, one request at a time.
    const ids = [...zipfIds({ n: 1500, s: 1.0, churn: 0.002, requests: 4000, seed: 11 })];
    for (let i = 0; i < ids.length; i += 8) {
      const batch = [...new Set(ids.slice(i, i + 8))];
      const r = await s.gql(EMBED, { inputs: batch.map((id) => ({ text: `post ${id} about the river and the mountain` })) });
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    }
    const now = s.server.text.stats();
    measured = {
      items: now.items - before.items,
      memory: now.bySource.MEMORY - before.bySource.MEMORY,
      computed: now.bySource.COMPUTED - before.bySource.COMPUTED,
    };
    await s.server.tracer.flush();
  });
  after(async () => {
    await s?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test(`the simulator predicts the memory hit rate within ${TOLERANCE * 100} percentage points`, async (t) => {
    const setting = { memoryBytes: MEMORY_ENTRIES * ENTRY, memoryTtlMs: MEMORY_TTL_MS, globalTtlMs: null };
    const records: TraceRecord[] = [];
    for await (const r of (await openTrace(dir)).records()) records.push(r);
    assert.equal(records.length, measured.items, 'one record per item (no repeats within a request)');
    const sim = new Simulator({ settings: [setting], prices: DEFAULT_PRICES });
    for (const r of records) sim.add(r);
    const { trace, results } = sim.finish();
    const real = measured.memory / measured.items;
    const predicted = results[0]!.memoryHitRate;
    t.diagnostic(`measured memory hit rate ${(real * 100).toFixed(2)} %, simulated ${(predicted * 100).toFixed(2)} % over ${measured.items} items`);
    assert.ok(real > 0.2 && real < 0.9, `the workload exercises the cache (${real})`);
    assert.ok(Math.abs(predicted - real) <= TOLERANCE, `simulated ${predicted} vs measured ${real}`);
    // The trace's own record of the tiers is the service's count, exactly.
    assert.ok(Math.abs(trace.measured.MEMORY - real) < 1e-12);
    assert.ok(
      records.filter((r) => r.src === 'COMPUTED').every((r) => r.ms > 0 && r.tok > 0),
      'computed items carry their measured cost',
    );
    assert.ok(
      records.every((r) => r.c === 'local-dev'),
      'the client id reaches the trace',
    );

    // Sampling by key hash at 0.5 simulates the same cache at half the size.
    const half = records.filter((r) => parseInt(r.k, 16) / 2 ** 53 < 0.5).map((r) => ({ ...r, r: 0.5 }));
    const sampled = new Simulator({ settings: [setting], prices: DEFAULT_PRICES });
    for (const r of half) sampled.add(r);
    const fromSample = sampled.finish().results[0]!.memoryHitRate;
    t.diagnostic(`from a 50 % key sample (${half.length} records): simulated ${(fromSample * 100).toFixed(2)} %`);
    assert.ok(Math.abs(fromSample - real) <= 0.05, `sampled prediction ${fromSample} vs measured ${real}`);
  });

  test('cachePolicy: the recommendation from the live window, for the admin (the local development client)', async () => {
    const live = await s.server.policy.recompute();
    assert.ok(live, 'enough samples to simulate');
    const r = await s.gql<{
      cachePolicy: Record<string, unknown> & { current: Record<string, number>; recommended: Record<string, number>; candidates: unknown[] };
    }>(
      `{ cachePolicy { computedAt windowSamples sampleRate savingFraction savingJoulesPerHour autoApply
          savingJoulesPerHourError significant measuredMemoryHitRate
          current { memoryBytes memoryTtlSeconds globalTtlSeconds memoryHitRate memoryHitRateError joulesPerHour joulesPerHourError computeJoulesPerHour storageJoulesPerHour servingJoulesPerHour }
          recommended { memoryBytes memoryTtlSeconds memoryHitRate joulesPerHour }
          candidates { memoryBytes memoryTtlSeconds joulesPerHour } } }`,
    );
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    const p = r.data!.cachePolicy;
    assert.equal(p.windowSamples, measured.items);
    assert.equal(p.sampleRate, 1);
    assert.equal(p.autoApply, false);
    assert.equal(p.current.memoryBytes, MEMORY_ENTRIES * ENTRY);
    assert.equal(p.current.memoryTtlSeconds, MEMORY_TTL_MS / 1000);
    assert.equal(p.current.globalTtlSeconds, null);
    assert.ok(Math.abs(p.current.memoryHitRate! - measured.memory / measured.items) <= TOLERANCE);
    // Rate 1: no sampling error; the window's measured rate is the service's count.
    assert.equal(p.current.memoryHitRateError, 0);
    assert.equal(p.savingJoulesPerHourError, 0);
    assert.ok(Math.abs((p.measuredMemoryHitRate as number) - measured.memory / measured.items) < 1e-9);
    assert.ok(p.candidates.length > 20);
    assert.ok(p.recommended.joulesPerHour! <= p.current.joulesPerHour!);
    const sum = p.current.computeJoulesPerHour! + p.current.storageJoulesPerHour! + p.current.servingJoulesPerHour!;
    assert.ok(Math.abs(sum - p.current.joulesPerHour!) < 1e-6 * sum);
  });
});

describe('at the default sample rate: predictions for the running setting and a 4x memory tier, against services running each', () => {
  const ENTRIES = 250;
  const mem = ENTRIES * ENTRY;
  /** Zipf(1.0) over 3,000 texts, 12,000 lookups, 8 distinct texts per request, one request at a time. */
  async function drive(s: TestServer, set: number): Promise<{ items: number; memory: number }> {
    const before = s.server.text.stats();
    const ids = [...zipfIds({ n: 3000, s: 1.0, churn: 0, requests: 12_000, seed: 100 + set })];
    for (let i = 0; i < ids.length; i += 8) {
      const batch = [...new Set(ids.slice(i, i + 8))];
      const r = await s.gql(EMBED, { inputs: batch.map((id) => ({ text: `set ${set}: note ${id} on the weather at the coast` })) });
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    }
    const now = s.server.text.stats();
    return { items: now.items - before.items, memory: now.bySource.MEMORY - before.bySource.MEMORY };
  }
  const start = (maxBytes: number) =>
    startPolyray({
      models: { serve: ['text-glove'] },
      batching: { maxWaitUs: 0 },
      cache: { memory: { maxBytes, ttlMs: 3_600_000 } },
      // The default sample rate; the policy is recomputed by hand.
      policy: { intervalMs: 3_600_000 },
    } as DeepPartial<PolyrayConfig>);

  for (const set of [1, 2, 3]) {
    test(`text set ${set}: both measured memory hit rates within ${TOLERANCE * 100} points of their predictions`, { timeout: 60_000 }, async (t) => {
      let a: TestServer | undefined;
      let b: TestServer | undefined;
      try {
        a = await start(mem);
        assert.equal(a.server.tracer.sampleRate, 0.1, 'the default sample rate');
        const measuredA = await drive(a, set);
        const live = await a.server.policy.recompute();
        assert.ok(live);
        const larger = live.results.find((r) => r.setting.memoryBytes === 4 * mem && r.setting.memoryTtlMs === 3_600_000);
        assert.ok(larger, 'the grid holds the 4x memory tier');
        await a.stop();
        a = undefined;
        b = await start(4 * mem);
        const measuredB = await drive(b, set);
        const realA = measuredA.memory / measuredA.items;
        const realB = measuredB.memory / measuredB.items;
        t.diagnostic(
          `running: measured ${(realA * 100).toFixed(2)} %, predicted ${(live.current.memoryHitRate * 100).toFixed(2)} ±${(live.current.error.memoryHitRate * 100).toFixed(2)}; ` +
            `4x: measured ${(realB * 100).toFixed(2)} %, predicted ${(larger.memoryHitRate * 100).toFixed(2)} ±${(larger.error.memoryHitRate * 100).toFixed(2)}; ` +
            `${live.windowRecords} records for ${measuredA.items} lookups, ${(live.exactShare * 100).toFixed(1)} % of items from heavy keys`,
        );
        assert.ok(realA > 0.2 && realB > realA + 0.05, `the workload exercises the cache (${realA}, ${realB})`);
        assert.ok(Math.abs(live.current.memoryHitRate - realA) <= TOLERANCE, `running: predicted ${live.current.memoryHitRate}, measured ${realA}`);
        assert.ok(Math.abs(larger.memoryHitRate - realB) <= TOLERANCE, `4x: predicted ${larger.memoryHitRate}, measured ${realB}`);
        assert.ok(live.current.error.memoryHitRate > 0, 'a sampled window has an error bar');
        assert.ok(
          live.measured.allKeys && Math.abs(live.measured.allKeys.memoryHitRate - realA) < 1e-9,
          'the measured rate over the window is the service count',
        );
      } finally {
        await a?.stop();
        await b?.stop();
      }
    });
  }
});

describe('auto-apply', () => {
  test('recommended TTLs are applied to new entries within the bounds, and every change is logged', async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
        cb();
      },
    });
    let now = 1000;
    const memory = new MemoryCache({ maxBytes: 1 << 20, ttlMs: 0, now: () => now });
    const tier = new TtlOverrideCache(memory);
    // Expensive computes re-requested over ~2.8 hours: long TTLs win, capped by the 20-minute bound.
    const window = new Ring<TraceRecord>(100_000);
    for (const r of zipfTrace({ s: 1.1, n: 2000, churn: 0, requests: 20_000, rps: 2, seed: 5, bytes: 400, ms: 50, tokens: 8, model: 'text-glove', clients: 1 }))
      window.push(r);
    const stats = (): ServiceStats => ({ calls: 0, cacheLookups: 0, items: 0, bySource: { MEMORY: 0, GLOBAL: 0, COMPUTED: 0 }, joined: 0, byModel: {} });
    const policy = new PolicyController({
      window,
      sampleRate: 1,
      memory: { maxBytes: 64 * 1024 ** 2, ttlMs: 60_000, tier },
      global: null,
      intervalMs: 60_000,
      seriesIntervalMs: 10_000,
      autoApply: true,
      minTtlMs: 120_000,
      maxTtlMs: 1_200_000,
      prices: DEFAULT_PRICES,
      stats,
      logger: createLogger('info', sink),
    });
    const live = await policy.recompute();
    assert.ok(live);
    assert.equal(live.recommended.setting.memoryTtlMs, 1_200_000, 'the longest TTL the bounds allow');
    assert.equal(tier.ttlMs, 1_200_000);
    assert.equal(policy.effective().memoryTtlMs, 1_200_000);
    const change = lines.find((l) => l['msg'] === 'cache policy applied a new TTL');
    assert.ok(change, 'the change is logged');
    assert.deepEqual([change['tier'], change['fromSeconds'], change['toSeconds']], ['memory', 60, 1200]);
    // Every candidate TTL is inside the bounds.
    for (const r of live.results) if (r.setting !== live.current.setting) assert.ok(r.setting.memoryTtlMs >= 120_000 && r.setting.memoryTtlMs <= 1_200_000);
    // New entries get the applied TTL.
    await tier.setMany([{ key: 'a', value: new Float32Array(4) }]);
    now += 1_199_000;
    assert.ok((await memory.getMany(['a']))[0], 'fresh before the applied TTL');
    now += 2000;
    await new Promise((r) => setTimeout(r, 5)); // lru-cache caches its clock for 1 ms of real time
    assert.equal((await memory.getMany(['a']))[0], undefined, 'expired after it');
    // Recomputing with the same recommendation changes and logs nothing.
    const before = lines.length;
    await policy.recompute();
    assert.equal(lines.filter((l, i) => i >= before && l['msg'] === 'cache policy applied a new TTL').length, 0);
  });

  test('a saving within its error bar is withheld, not applied, and the withholding is logged once', async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
        cb();
      },
    });
    const memory = new MemoryCache({ maxBytes: 1 << 20, ttlMs: 0 });
    const tier = new TtlOverrideCache(memory);
    // One key in 16 sampled (each record stands for 16), and TTL candidates a second apart: whatever the
    // longer TTL saves is far inside the spread of the sub-samples.
    const window = new Ring<TraceRecord>(100_000);
    for (const r of zipfTrace({ s: 1.1, n: 2000, churn: 0, requests: 20_000, rps: 2, seed: 5, bytes: 400, ms: 50, tokens: 8, model: 'text-glove', clients: 1 }))
      if (Number.parseInt(r.k.slice(1), 16) % 16 === 0) window.push({ ...r, r: 1 / 16 });
    const stats = (): ServiceStats => ({ calls: 0, cacheLookups: 0, items: 0, bySource: { MEMORY: 0, GLOBAL: 0, COMPUTED: 0 }, joined: 0, byModel: {} });
    const policy = new PolicyController({
      window,
      sampleRate: 1 / 16,
      memory: { maxBytes: 64 * 1024 ** 2, ttlMs: 60_000, tier },
      global: null,
      intervalMs: 60_000,
      seriesIntervalMs: 10_000,
      autoApply: true,
      minTtlMs: 60_000,
      maxTtlMs: 61_000,
      prices: DEFAULT_PRICES,
      stats,
      logger: createLogger('info', sink),
    });
    const live = await policy.recompute();
    assert.ok(live);
    assert.notEqual(live.recommended.setting.memoryTtlMs, 60_000, 'the longer TTL saves something');
    assert.ok(live.savingPerHour > 0);
    assert.ok(live.savingPerHour <= live.savingPerHourError, `saving ${live.savingPerHour} within its error ${live.savingPerHourError}`);
    assert.equal(live.significant, false);
    assert.equal(tier.ttlMs, undefined, 'nothing applied');
    assert.equal(policy.effective().memoryTtlMs, 60_000);
    assert.equal(lines.filter((l) => l['msg'] === 'cache policy applied a new TTL').length, 0);
    assert.equal(lines.filter((l) => l['msg'] === 'cache policy change withheld: the saving is within its error bar').length, 1);
    await policy.recompute();
    assert.equal(
      lines.filter((l) => l['msg'] === 'cache policy change withheld: the saving is within its error bar').length,
      1,
      'logged once per recommendation',
    );
  });
});
