/**
 * The cache simulator against hand-computed traces (exact hit counts per tier, LRU eviction by bytes,
 * TTL expiry, sampling scale, byte-hours), against lru-cache itself on random traces, the cost formula,
 * grids, synthetic workloads and the CLI.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import { LRUCache } from 'lru-cache';
import { MemoryCache } from '../src/cache/memory.ts';
import { loadConfig } from '../src/config/index.ts';
import { runSimulate } from '../src/policy/cli.ts';
import { DEFAULT_PRICES, parsePrices, price } from '../src/policy/cost.ts';
import { defaultGrid, gridSettings, parseDuration, parseGrid, parseSize, recommend } from '../src/policy/grid.ts';
import { Estimator, sampledShares, uncertainty, type MeasuredShares } from '../src/policy/estimate.ts';
import { resample } from '../src/policy/resample.ts';
import { Simulator, type SimResult, type SimSetting } from '../src/policy/simulator.ts';
import { globalEntryBytes, memoryEntryBytes } from '../src/policy/sizes.ts';
import { parseSynthetic, zipfTrace } from '../src/policy/synthetic.ts';
import type { TraceRecord } from '../src/policy/trace.ts';

const KL = 71; // text-glove@<16 hex>:<43 base64url>
const E = memoryEntryBytes(400, KL); // 638
const G = globalEntryBytes(400, KL, 'float32', 11);

function rec(k: string, t: number, extra: Partial<TraceRecord> = {}): TraceRecord {
  return { t, k, kl: KL, m: 'text-glove', b: 400, tok: 3, ms: 0.5, src: 'COMPUTED', r: 1, ...extra };
}

function run(settings: SimSetting[], records: TraceRecord[], sampleRate?: number): SimResult[] {
  const sim = new Simulator({ settings, prices: DEFAULT_PRICES, ...(sampleRate ? { sampleRate } : {}) });
  for (const r of records) sim.add(r);
  return sim.finish().results;
}

const seq = (keys: string, step = 1) => [...keys].map((k, i) => rec(k, i * step));

describe('entry sizes', () => {
  test('the memory formula is the one MemoryCache bounds itself with', async () => {
    const m = new MemoryCache({ maxBytes: 1 << 20, ttlMs: 0 });
    let expected = 0;
    for (const [dims, key] of [
      [100, `text-glove@b73c56c6f3ab2804:${'x'.repeat(43)}`],
      [768, `text-bert@0123:${'y'.repeat(43)}`],
      [3, 'k'],
    ] as const) {
      await m.setMany([{ key, value: new Float32Array(dims) }]);
      expected += memoryEntryBytes(dims * 4, key.length);
    }
    assert.equal(m.stats().bytes, expected);
    assert.equal(E, 638);
  });
});

describe('simulator: hand-computed traces', () => {
  test('LRU by bytes, memory only: A B A C B A in a tier of two entries', () => {
    const [r] = run([{ memoryBytes: 2 * E, memoryTtlMs: 0, globalTtlMs: null }], seq('ABACBA'));
    // A miss; B miss; A hit [B A]; C miss evicts B [A C]; B miss evicts A [C B]; A miss evicts C.
    assert.equal(r!.memoryHits, 1);
    assert.equal(r!.globalHits, 0);
    assert.equal(r!.computes, 5);
    assert.equal(r!.items, 6);
  });

  test('a large entry evicts as many least recently used entries as its bytes need', () => {
    const big = memoryEntryBytes(1000, KL); // 1238 = almost two small entries
    const records = [rec('A', 0), rec('B', 1), rec('C', 2), rec('D', 3, { b: 1000 }), rec('C', 4), rec('A', 5), rec('D', 6, { b: 1000 })];
    const [r] = run([{ memoryBytes: 3 * E, memoryTtlMs: 0, globalTtlMs: null }], records);
    // [A B C] 1914 B; D (1238) needs used <= 676: evicts A, B -> [C D]; C hit -> [D C];
    // A (638) needs used <= 1276: evicts D -> [C A]; D misses again.
    assert.equal(r!.memoryHits, 1);
    assert.equal(r!.computes, 6);
    assert.ok(big > E);
  });

  test('an entry larger than the whole tier is never stored', () => {
    const [r] = run([{ memoryBytes: E - 1, memoryTtlMs: 0, globalTtlMs: null }], seq('AAAA'));
    assert.equal(r!.memoryHits, 0);
    assert.equal(r!.computes, 4);
  });

  test('memory TTL: a read older than the TTL misses; a hit does not renew the TTL', () => {
    const s = { memoryBytes: 10 * E, memoryTtlMs: 1000, globalTtlMs: null };
    const [a] = run([s], [rec('A', 0), rec('A', 500), rec('A', 1000), rec('A', 1001), rec('A', 1500)]);
    // 0 miss (set@0); 500 hit; 1000 hit (age = ttl is still fresh); 1001 stale -> miss (set@1001); 1500 hit.
    assert.equal(a!.memoryHits, 3);
    assert.equal(a!.computes, 2);
    const [b] = run([s], [rec('A', 0), rec('A', 900), rec('A', 1100)]);
    assert.equal(b!.memoryHits, 1, 'the hit at 900 did not renew the entry');
    assert.equal(b!.computes, 2);
  });

  test('global tier: memory misses are global hits within its TTL, with back-fill', () => {
    const s = { memoryBytes: E, memoryTtlMs: 0, globalTtlMs: 10_000 };
    const [r] = run([s], [rec('A', 0), rec('B', 1), rec('A', 2), rec('B', 3), rec('A', 20_000)]);
    // A, B computed (memory holds one entry); A and B are global hits (each back-fills memory, evicting
    // the other); at 20 s A's global entry (written at 0) has expired: computed again.
    assert.equal(r!.memoryHits, 0);
    assert.equal(r!.globalHits, 2);
    assert.equal(r!.computes, 3);
    // Global byte-hours: A@0 and B@1 live their full 10 s; A@20000 is charged only up to the trace end.
    assert.ok(Math.abs(r!.globalByteHours - (G * 20_000) / 3_600_000) < 1e-9);
  });

  test('memory byte-hours integrate the bytes held over time', () => {
    const [r] = run([{ memoryBytes: 1 << 20, memoryTtlMs: 0, globalTtlMs: null }], [rec('A', 0), rec('B', 3_600_000), rec('A', 7_200_000)]);
    // A alone for an hour, A + B for an hour.
    assert.equal(r!.memoryByteHours, E + 2 * E);
    assert.equal(r!.memoryHits, 1);
  });

  test('a sampled trace is simulated at size × r and scaled by 1 / r', () => {
    const records = seq('ABACBA').map((x) => ({ ...x, r: 0.5 }));
    const [r] = run([{ memoryBytes: 4 * E, memoryTtlMs: 0, globalTtlMs: null }], records);
    // 4 entries at r = 0.5 hold 2 sampled entries: the pattern of the first test, counts doubled.
    assert.equal(r!.memoryHits, 2);
    assert.equal(r!.computes, 10);
    assert.equal(r!.items, 12);
    assert.equal(r!.memoryHitRate, 1 / 6);
  });

  test('repeats of a key within one call (n) count as items answered by its one lookup (memory hits, JOINED as measured)', () => {
    const sim = new Simulator({ settings: [{ memoryBytes: 10 * E, memoryTtlMs: 0, globalTtlMs: null }], prices: DEFAULT_PRICES });
    for (const r of [rec('A', 0, { n: 3 }), rec('A', 1, { n: 2, src: 'MEMORY', ms: 0 })]) sim.add(r);
    const { trace, results } = sim.finish();
    const r = results[0]!;
    assert.equal(r.items, 5);
    assert.equal(r.computes, 1);
    assert.equal(r.memoryHits, 4);
    assert.equal(r.computeMs, 0.5);
    assert.deepEqual(trace.measured, { COMPUTED: 1 / 5, MEMORY: 1 / 5, GLOBAL: 0, JOINED: 3 / 5 });
  });

  test('a fill (f: 1) is stored in every tier without counting an item', () => {
    const s = { memoryBytes: 10 * E, memoryTtlMs: 0, globalTtlMs: 10_000 };
    const [r] = run([s], [rec('A', 0), rec('F', 0, { f: 1, ms: 0 }), rec('F', 5, { src: 'MEMORY', ms: 0 })]);
    assert.equal(r!.items, 2);
    assert.equal(r!.memoryHits, 1, 'the filled entry is read from memory');
    assert.equal(r!.computes, 1);
  });

  test('each record weighs 1 / its own rate: a heavy key at rate 1 beside keys sampled at 0.5', () => {
    // H (rate 1) stands for itself; A and B (rate 0.5) for two keys each, so each takes 2 E of memory.
    const records = [rec('H', 0), rec('A', 1, { r: 0.5 }), rec('H', 2), rec('B', 3, { r: 0.5 }), rec('A', 4, { r: 0.5 }), rec('H', 5)];
    const sim = new Simulator({ settings: [{ memoryBytes: 3 * E, memoryTtlMs: 0, globalTtlMs: null }], prices: DEFAULT_PRICES });
    for (const r of records) sim.add(r);
    const { trace, results } = sim.finish();
    const r = results[0]!;
    // [H A(2E)] full; H hit; B (2E) evicts A then H? LRU order H, A: evicting A frees 2E, enough: [H B];
    // A misses (evicting H then B as needed: needs 2E, has E free, evicts H) -> [B A]; H misses.
    assert.equal(r.items, 1 + 2 + 1 + 2 + 2 + 1);
    assert.equal(r.memoryHits, 1);
    assert.equal(trace.sampleRate, 0.5);
    assert.equal(trace.exactShare, 3 / 9);
  });

  test('a key never seen computed is charged the model mean, or the default before any', () => {
    const records = [rec('A', 0, { src: 'MEMORY', ms: 0 }), rec('B', 1, { ms: 3 }), rec('C', 2, { src: 'GLOBAL', ms: 0 })];
    const [r] = run([{ memoryBytes: 10 * E, memoryTtlMs: 0, globalTtlMs: null }], records);
    assert.equal(r!.computeMs, DEFAULT_PRICES.defaultComputeMs + 3 + 3);
  });

  test('records out of time order are replayed at the previous time', () => {
    const sim = new Simulator({ settings: [{ memoryBytes: 10 * E, memoryTtlMs: 0, globalTtlMs: null }], prices: DEFAULT_PRICES });
    for (const r of [rec('A', 10), rec('B', 5), rec('A', 20)]) sim.add(r);
    const { trace } = sim.finish();
    assert.equal(trace.reordered, 1);
    assert.equal(trace.spanMs, 10);
  });
});

/** Reference: the service's semantics on a real lru-cache (memory) and a Map with expiry (Redis). */
function reference(s: SimSetting, records: TraceRecord[]): { mem: number; glob: number; comp: number } {
  let now = 0;
  const lru = new LRUCache<string, Float32Array>({
    maxSize: s.memoryBytes,
    sizeCalculation: (v) => v.byteLength + KL * 2 + 96,
    ...(s.memoryTtlMs > 0 ? { ttl: s.memoryTtlMs, ttlAutopurge: false } : {}),
    ttlResolution: 0,
    perf: { now: () => now },
  });
  const global = new Map<string, number>();
  const out = { mem: 0, glob: 0, comp: 0 };
  for (const r of records) {
    now = 1000 + r.t; // lru-cache reads a start time of 0 as "no TTL"
    if (lru.get(r.k)) out.mem++;
    else {
      const g = global.get(r.k);
      if (s.globalTtlMs !== null && g !== undefined && now <= g + s.globalTtlMs)
        out.glob++; // Redis: expired once now > set + ttl
      else {
        out.comp++;
        if (s.globalTtlMs !== null) global.set(r.k, now);
      }
      lru.set(r.k, new Float32Array(r.b / 4));
    }
  }
  return out;
}

describe('simulator: equals lru-cache and Redis expiry on random traces, for many settings in one pass', () => {
  test('property', () => {
    const settings: SimSetting[] = [];
    for (const m of [1, 3, 8])
      for (const ttl of [0, 5, 40]) for (const g of [null, 10, 100]) settings.push({ memoryBytes: m * E, memoryTtlMs: ttl, globalTtlMs: g });
    fc.assert(
      fc.property(
        fc.array(fc.record({ key: fc.integer({ min: 0, max: 12 }), gap: fc.integer({ min: 0, max: 12 }), big: fc.boolean() }), {
          minLength: 1,
          maxLength: 150,
        }),
        (steps) => {
          let t = 0;
          // A key always has the same size; keys 0-2 are larger.
          const records = steps.map((s) => {
            t += s.gap;
            return rec(`k${s.key}`, t, { b: s.key < 3 ? 800 : 400 });
          });
          const results = run(settings, records);
          results.forEach((r, i) => {
            const want = reference(settings[i]!, records);
            assert.deepEqual({ mem: r.memoryHits, glob: r.globalHits, comp: r.computes }, want, JSON.stringify(settings[i]));
          });
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('sampled predictions: within 2 points of the whole trace, with error bars that cover it', () => {
  const MB = 1024 ** 2;
  // The workload: Zipf(1.0) over 20,000 texts, 80,000 lookups, text-glove entries, 1 MB memory tier.
  const full = [
    ...zipfTrace({ s: 1.0, n: 20_000, churn: 0, requests: 80_000, rps: 100, seed: 7, bytes: 400, ms: 0.04, tokens: 8, model: 'text-glove', clients: 1 }),
  ].map((r) => ({ ...r, kl: KL }));
  // What a service running the current setting measured for each lookup (a real lru-cache).
  const lru = new LRUCache<string, true>({ maxSize: MB, sizeCalculation: () => E });
  for (const r of full) {
    if (lru.get(r.k)) r.src = 'MEMORY';
    else lru.set(r.k, true);
  }
  // The current setting, and 4× larger and 4× smaller memory tiers.
  const settings: SimSetting[] = [MB, 4 * MB, MB / 4].map((memoryBytes) => ({ memoryBytes, memoryTtlMs: 3_600_000, globalTtlMs: null }));
  const predict = (records: TraceRecord[], measured?: MeasuredShares) => {
    const est = new Estimator({ settings, prices: DEFAULT_PRICES });
    for (const r of records) est.add(r);
    return est.finish(measured);
  };
  const truth = predict(full).results.map((r) => r.memoryHitRate);
  // What the service measured for all keys (the tracer's counts over the window), for calibration.
  const measured = sampledShares(predict(full).trace);
  const SALTS = Array.from({ length: 20 }, (_, i) => i + 1);

  test('at rate 1 the prediction is the truth, with no error bar, and it is what the service measured', () => {
    const r = predict(resample(full, { rate: 1, salt: 1 }));
    assert.deepEqual(
      r.results.map((x) => x.memoryHitRate),
      truth,
    );
    for (const x of r.results) assert.equal(x.error.memoryHitRate, 0);
    assert.ok(Math.abs(truth[0]! - full.filter((x) => x.src === 'MEMORY').length / full.length) < 1e-12);
    assert.ok(truth[0]! > 0.6 && truth[0]! < 0.75 && truth[1]! > truth[0]! && truth[2]! < truth[0]!, `hit rates ${truth}`);
  });

  test('at rate 0.1, for 20 hash salts: every prediction within 2 points, the error bar covers the truth in >= 18 of 20', () => {
    const covered = settings.map(() => 0);
    for (const salt of SALTS) {
      const sampled = resample(full, { rate: 0.1, salt });
      const r = predict(sampled, measured);
      r.results.forEach((x, i) => {
        const err = x.memoryHitRate - truth[i]!;
        assert.ok(Math.abs(err) <= 0.02, `salt ${salt}, ${settings[i]!.memoryBytes} B: predicted ${x.memoryHitRate}, truth ${truth[i]}`);
        assert.ok(x.error.memoryHitRate > 0 && x.error.memoryHitRate < 0.05, `error bar ${x.error.memoryHitRate}`);
        if (Math.abs(err) <= x.error.memoryHitRate) covered[i]!++;
      });
      // Any derived figure has its bar: the difference between two settings, per sub-sample.
      assert.ok(uncertainty(r, (rs) => rs[1]!.memoryHitRate - rs[0]!.memoryHitRate) > 0);
    }
    covered.forEach((c, i) => {
      assert.ok(c >= 18, `${settings[i]!.memoryBytes} B: the error bar covered the truth ${c} of 20 times`);
    });
  });

  test('plain hash sampling (no heavy keys) misses by more than 2 points: the test above can fail', () => {
    let worst = 0;
    for (const salt of SALTS.slice(0, 5)) {
      const r = predict(resample(full, { rate: 0.1, salt, sampler: { heavyShare: 0 } }), measured);
      r.results.forEach((x, i) => {
        worst = Math.max(worst, Math.abs(x.memoryHitRate - truth[i]!));
      });
    }
    assert.ok(worst > 0.02, `worst error ${worst}`);
  });
});

describe('cost model, grids, recommendation', () => {
  test('price: compute ms × W, byte-hours × W/GiB × 3600, hits × J', () => {
    const c = price({ computeMs: 1000, memoryByteHours: 1024 ** 3, globalByteHours: 2 * 1024 ** 3, memoryHits: 1000, globalHits: 10 }, DEFAULT_PRICES);
    assert.equal(c.compute, 15);
    assert.equal(c.memoryStorage, 0.375 * 3600);
    assert.equal(c.globalStorage, 2 * 3600);
    assert.ok(Math.abs(c.serving - (1000 * 2e-5 + 10 * 2e-3)) < 1e-12);
    assert.equal(c.total, c.compute + c.memoryStorage + c.globalStorage + c.serving);
    assert.equal(parsePrices('compute=30,memhit=0').computeWatts, 30);
    assert.throws(() => parsePrices('bogus=1'), /not one of/);
  });

  test('sizes, durations and grid specs', () => {
    assert.equal(parseSize('64MB'), 64 * 1024 ** 2);
    assert.equal(parseSize('1GB'), 1024 ** 3);
    assert.equal(parseSize('4096'), 4096);
    assert.equal(parseDuration('5m'), 300_000);
    assert.equal(parseDuration('60'), 60_000);
    assert.equal(parseDuration('none'), 0);
    assert.throws(() => parseSize('lots'), /not a size/);
    const current = { memoryBytes: 256 * 1024 ** 2, memoryTtlMs: 3_600_000, globalTtlMs: null };
    const g = parseGrid('mem=16MB,64MB;ttl=1h,none;gttl=none,1d', defaultGrid(current));
    assert.deepEqual(g.globalTtlMs, [null, 86_400_000]);
    const settings = gridSettings(g, current);
    assert.equal(settings.length, 1 + 2 * 2 * 2);
    assert.deepEqual(settings[0], current);
  });

  test('recommend: the cheapest; the current one when within 0.5 %', () => {
    const mk = (memoryBytes: number, total: number): SimResult =>
      ({ setting: { memoryBytes, memoryTtlMs: 0, globalTtlMs: null }, cost: { total } }) as unknown as SimResult;
    const results = [mk(1, 100), mk(2, 80), mk(3, 80.2)];
    const r = recommend(results, results[0]!.setting);
    assert.equal(r.recommended, results[1]);
    assert.ok(Math.abs(r.savingFraction - 0.2) < 1e-12);
    const keep = recommend([mk(1, 80.1), mk(2, 80)], { memoryBytes: 1, memoryTtlMs: 0, globalTtlMs: null });
    assert.equal(keep.recommended.setting.memoryBytes, 1);
    assert.equal(keep.saving, 0);
  });
});

describe('synthetic workloads', () => {
  test('deterministic with a seed; Zipf shape; churn brings new keys', () => {
    const spec = parseSynthetic('zipf:s=1.0,n=1000,churn=0,requests=20000,seed=3');
    const a = [...zipfTrace(spec)];
    const b = [...zipfTrace(spec)];
    assert.deepEqual(a.slice(0, 500), b.slice(0, 500));
    const c = [...zipfTrace({ ...spec, seed: 4 })];
    assert.notDeepEqual(
      a.slice(0, 50).map((r) => r.k),
      c.slice(0, 50).map((r) => r.k),
    );
    // P(rank 1) = 1 / H(1000) ≈ 0.1336 for s = 1.
    const h = Array.from({ length: 1000 }, (_, i) => 1 / (i + 1)).reduce((x, y) => x + y, 0);
    const top = a.filter((r) => r.k === `p${(999).toString(16)}`).length / a.length;
    assert.ok(Math.abs(top - 1 / h) < 0.01, `rank-1 share ${top}`);
    for (let i = 1; i < a.length; i++) assert.ok(a[i]!.t >= a[i - 1]!.t);
    const churned = new Set([...zipfTrace({ ...spec, churn: 0.05 })].map((r) => r.k)).size;
    const still = new Set(a.map((r) => r.k)).size;
    assert.ok(churned > still + 500, `${churned} distinct keys with churn vs ${still} without`);
    assert.throws(() => parseSynthetic('zipf:n=0'), /n must be an integer/);
    assert.throws(() => parseSynthetic('uniform:n=3'), /must look like/);
  });
});

describe('polyray simulate', () => {
  test('in process: prints a table, the current and recommended settings and the saving', async () => {
    let out = '';
    const config = loadConfig({ NODE_ENV: 'test' });
    const r = await runSimulate(['--synthetic', 'zipf:s=1.1,n=5000,churn=0.01,requests=50000,rps=20', '--grid', 'mem=1MB,4MB,16MB;ttl=1m,15m,1h'], config, {
      out: (s) => (out += s),
      progress: { write: () => true },
    });
    assert.match(out, /recommended: memory \S+ ttl \S+, global none/);
    assert.match(out, /← current/);
    assert.equal(r.report.results.length, 1 + 3 * 3);
    assert.ok(r.recommendation.recommended.cost.total <= r.recommendation.current.cost.total);
  });

  test('the CLI binary on the default synthetic workload prints a recommendation in under a minute', { timeout: 90_000 }, () => {
    const t0 = Date.now();
    const p = spawnSync(process.execPath, ['--import', 'tsx', 'bin/polyray.ts', 'simulate', '--synthetic', 'zipf:s=1.1,n=100000,churn=0.01,requests=3e5'], {
      encoding: 'utf8',
      env: { ...process.env, NODE_ENV: 'test' },
    });
    assert.equal(p.status, 0, p.stderr);
    assert.match(p.stdout, /recommended: memory/);
    assert.match(p.stderr, /replay \[#+\] 100%/);
    assert.ok(Date.now() - t0 < 60_000);
  });
});
