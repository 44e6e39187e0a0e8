/**
 * `npm run bench:sim` — how far a sampled cache simulation can be trusted (issue 29), and what tracing
 * costs on the hit path.
 *
 * Accuracy: the issue's workload as a trace (Zipf(1.0) over 20,000 keys, 80,000 lookups, text-glove entries,
 * the source of each lookup from a real lru-cache of 1 MiB). The rate-1 simulation is the truth; the trace
 * is sampled by a real `Tracer` with 20 hash salts at each rate and simulated for the running setting and
 * for memory tiers 4× larger and 4× smaller. Rows: "before" (hash sampling only, counts scaled by 1/r: the
 * old method), "heavy keys" (heavy keys at rate 1, each record weighed by its own rate: what `polyray
 * simulate` does on a trace file) and "heavy keys + calibration" (what the live policy does, with the
 * rates the service measured for all keys). Error = predicted − true memory hit rate, in points.
 *
 * Cost: `CachedInference` (the pipeline every request goes through) answering 64-key calls from a memory
 * tier, without a trace sink, with a `Tracer` at 0.1 and at 1; vectors per second, best of three
 * alternating rounds, in one process.
 *
 * Writes bench/sim-results.json and the "Sampled simulation" section of bench/RESULTS.md. Options: --quick
 * (5 salts, shorter cost rounds), --out DIR.
 */
import { LRUCache } from 'lru-cache';
import { benchCli, publish } from './cli.ts';
import { gitState, hostInfo } from './conditions.ts';
import type { CacheEntry } from '../src/cache/cache.ts';
import { MemoryCache } from '../src/cache/memory.ts';
import { TieredCache } from '../src/cache/tiered.ts';
import { createLogger } from '../src/log.ts';
import { DEFAULT_PRICES } from '../src/policy/cost.ts';
import { Estimator, sampledShares, type EstimateReport } from '../src/policy/estimate.ts';
import { resample } from '../src/policy/resample.ts';
import { DEFAULT_SAMPLER } from '../src/policy/sampler.ts';
import { memoryEntryBytes } from '../src/policy/sizes.ts';
import type { SimSetting } from '../src/policy/simulator.ts';
import { zipfIds, zipfTrace } from '../src/policy/synthetic.ts';
import { Tracer, type TraceRecord } from '../src/policy/trace.ts';
import { CachedInference, type Computed, type InferenceAdapter, type Keyed } from '../src/service/pipeline.ts';

const cli = benchCli();
const { quick, out: OUT, log } = cli;
const MB = 1024 ** 2;
const KL = 71;
const RATES = [1, 0.25, 0.1, 0.01];
const SALTS = quick ? 5 : 20;
const SIZES = [MB, 4 * MB, MB / 4];

type Method = 'before' | 'heavy' | 'calibrated';
interface AccuracyRow {
  method: Method;
  rate: number;
  /** Per setting (1 MiB, 4 MiB, 256 KiB): mean |error| and worst |error| in points, error bars covering the truth. */
  settings: { memoryBytes: number; meanAbs: number; worstAbs: number; covered: number }[];
  /** Records traced per lookup. */
  traced: number;
}

function workload(): TraceRecord[] {
  const full = [
    ...zipfTrace({ s: 1.0, n: 20_000, churn: 0, requests: 80_000, rps: 100, seed: 7, bytes: 400, ms: 0.04, tokens: 8, model: 'text-glove', clients: 1 }),
  ].map((r) => ({ ...r, kl: KL }));
  const entry = memoryEntryBytes(400, KL);
  const lru = new LRUCache<string, true>({ maxSize: MB, sizeCalculation: () => entry });
  for (const r of full) {
    if (lru.get(r.k)) r.src = 'MEMORY';
    else lru.set(r.k, true);
  }
  return full;
}

function accuracy(full: TraceRecord[]): AccuracyRow[] {
  const settings: SimSetting[] = SIZES.map((memoryBytes) => ({ memoryBytes, memoryTtlMs: 3_600_000, globalTtlMs: null }));
  const predict = (records: TraceRecord[], measured?: ReturnType<typeof sampledShares>): EstimateReport => {
    const est = new Estimator({ settings, prices: DEFAULT_PRICES });
    for (const r of records) est.add(r);
    return est.finish(measured);
  };
  const whole = predict(full);
  const truth = whole.results.map((r) => r.memoryHitRate);
  const measured = sampledShares(whole.trace);
  log(`truth: ${truth.map((x) => (x * 100).toFixed(2)).join(' / ')} % memory hits at 1 MiB / 4 MiB / 256 KiB`);
  const rows: AccuracyRow[] = [];
  for (const rate of RATES) {
    const errs: Record<Method, number[][]> = { before: settings.map(() => []), heavy: settings.map(() => []), calibrated: settings.map(() => []) };
    const covered: Record<Method, number[]> = { before: settings.map(() => 0), heavy: settings.map(() => 0), calibrated: settings.map(() => 0) };
    const traced: Record<Method, number> = { before: 0, heavy: 0, calibrated: 0 };
    for (let salt = 1; salt <= SALTS; salt++) {
      const plain = resample(full, { rate, salt, sampler: { ...DEFAULT_SAMPLER, heavyShare: 0 } });
      const heavy = resample(full, { rate, salt });
      const before = predict(plain);
      const uncalibrated = predict(heavy);
      const calibrated = predict(heavy, measured);
      traced.before += plain.length / full.length / SALTS;
      traced.heavy += heavy.length / full.length / SALTS;
      traced.calibrated = traced.heavy;
      settings.forEach((_, i) => {
        const b = before.results[i]!;
        const h = uncalibrated.results[i]!;
        const c = calibrated.results[i]!;
        for (const [m, x, bar] of [
          ['before', b.memoryHitRate, b.error.memoryHitRate],
          ['heavy', h.memoryHitRate, h.error.memoryHitRate],
          ['calibrated', c.memoryHitRate, c.error.memoryHitRate],
        ] as const) {
          errs[m][i]!.push(x - truth[i]!);
          if (Math.abs(x - truth[i]!) <= bar || (rate >= 1 && x === truth[i])) covered[m][i]!++;
        }
      });
    }
    for (const method of ['before', 'heavy', 'calibrated'] as const) {
      const row: AccuracyRow = {
        method,
        rate,
        traced: traced[method],
        settings: settings.map((s, i) => {
          const e = errs[method][i]!.map((x) => Math.abs(x) * 100);
          return { memoryBytes: s.memoryBytes, meanAbs: e.reduce((a, x) => a + x, 0) / e.length, worstAbs: Math.max(...e), covered: covered[method][i]! };
        }),
      };
      rows.push(row);
      log(
        `  rate ${rate} ${method}: ${row.settings.map((x) => `${x.meanAbs.toFixed(2)}/${x.worstAbs.toFixed(2)}`).join('  ')} (traced ${(row.traced * 100).toFixed(1)} %)`,
      );
    }
  }
  return rows;
}

/** An adapter whose computations return a fixed vector: the cost bench only ever hits. */
class HitAdapter implements InferenceAdapter<string, string, { name: string }> {
  readonly #v = new Float32Array(100);
  key(_h: { name: string }, inputs: readonly string[]): Keyed<string>[] {
    return inputs.map((s) => ({ read: s, flight: s, payload: s }));
  }
  compute(_h: { name: string }, items: readonly string[]): Promise<Computed>[] {
    return items.map(() => Promise.resolve({ outputs: [this.#v], units: 1, inferenceMs: 0.01 }));
  }
  fill(_h: { name: string }, item: Keyed<string>, c: Computed): CacheEntry[] {
    return [{ key: item.flight, value: c.outputs[0]! }];
  }
}

interface CostRow {
  trace: string;
  vectorsPerS: number;
}

async function cost(): Promise<CostRow[]> {
  const logger = createLogger('silent');
  const keys = Array.from({ length: 20_000 }, (_, i) => `text-glove@b73c56c6f3ab2804:${String(i).padStart(43, 'k')}`);
  const ids = [...zipfIds({ n: keys.length, s: 1.0, churn: 0, requests: 64 * 2000, seed: 3 })];
  const calls = Array.from({ length: 2000 }, (_, c) => ids.slice(c * 64, c * 64 + 64).map((i) => keys[i]!));
  const variants: { name: string; rate: number | null; heavyShare?: number }[] = [
    { name: 'off', rate: null },
    { name: 'rate 0.1, hash sampling only (as before)', rate: 0.1, heavyShare: 0 },
    { name: 'rate 0.1 with heavy keys (default)', rate: 0.1 },
    { name: 'rate 1', rate: 1 },
  ];
  const best = new Map<string, number>();
  const rounds = 3;
  const seconds = quick ? 0.5 : 2;
  for (let round = 0; round < rounds; round++) {
    for (const v of variants) {
      const cache = new TieredCache([new MemoryCache({ maxBytes: 64 * MB })]);
      const trace =
        v.rate === null
          ? undefined
          : new Tracer({
              sampleRate: v.rate,
              ...(v.heavyShare === undefined ? {} : { sampler: { heavyShare: v.heavyShare } }),
              writers: [],
              windowRecords: 100_000,
              bufferMax: 1,
              flushMs: 60_000,
              logger,
            });
      const p = new CachedInference(new HitAdapter(), { cache, logger, ...(trace ? { trace } : {}) });
      await cache.store(keys.map((k) => ({ key: k, value: new Float32Array(100) })));
      const H = { name: 'text-glove' };
      let vectors = 0;
      let c = 0;
      const t0 = performance.now();
      while (performance.now() - t0 < seconds * 1000) {
        const inputs = calls[c++ % calls.length]!;
        const answers = await p.run(H, inputs);
        p.trace(
          'text-glove',
          'bench',
          answers,
          answers.map((a) => (a instanceof Error ? a : { vector: a.hit!, source: a.source, tokens: 0, inferenceMs: 0 })),
        );
        vectors += inputs.length;
      }
      const rate = vectors / ((performance.now() - t0) / 1000);
      best.set(v.name, Math.max(best.get(v.name) ?? 0, rate));
      await trace?.close();
    }
  }
  const rows = variants.map((v) => ({ trace: v.name, vectorsPerS: best.get(v.name)! }));
  for (const r of rows) log(`  tracing ${r.trace}: ${Math.round(r.vectorsPerS).toLocaleString('en-US')} vectors/s`);
  return rows;
}

function render(r: {
  startedAt: string;
  git: string;
  cpu: string;
  cores: number;
  quick: boolean;
  salts: number;
  accuracy: AccuracyRow[];
  cost: CostRow[];
}): string {
  const label: Record<Method, string> = {
    before: 'before: hash sample, counts × 1/r',
    heavy: 'heavy keys at rate 1, records weighed by their rate (`simulate`)',
    calibrated: '+ calibration by the measured rates (live policy)',
  };
  const cell = (x: AccuracyRow['settings'][number]) => `${x.meanAbs.toFixed(2)} / ${x.worstAbs.toFixed(2)} (${x.covered}/${r.salts})`;
  const off = r.cost.find((x) => x.trace === 'off')!.vectorsPerS;
  return [
    '## Sampled simulation (issue 29): prediction error by sample rate, and the cost of tracing',
    '',
    `Measured ${r.startedAt} by \`npm run bench:sim\`${r.quick ? ' --quick' : ''} on ${r.cpu}, ${r.cores} cores; source ${r.git}. ` +
      'Workload: Zipf(1.0) over 20,000 keys, 80,000 lookups, text-glove entries (638 B), what answered each lookup from a real lru-cache of 1 MiB. ' +
      `Truth: the rate-1 simulation of the whole trace. Each rate: ${r.salts} hash salts, the trace sampled by a real \`Tracer\`. ` +
      'Cells: mean / worst |predicted − true| memory hit rate in points, and how often the 95 % error bar covered the truth.',
    '',
    '| rate | method | traced / lookups | 1 MiB (running) | 4 MiB | 256 KiB |',
    '| ---: | --- | ---: | ---: | ---: | ---: |',
    ...r.accuracy.map((x) => `| ${x.rate} | ${label[x.method]} | ${(x.traced * 100).toFixed(1)} % | ${x.settings.map(cell).join(' | ')} |`),
    '',
    'Tracing on the hit path: `CachedInference` answering 64-key calls from the memory tier, in process (no HTTP), best of 3 alternating rounds.',
    '',
    '| tracing | vectors/s | vs off |',
    '| --- | ---: | ---: |',
    ...r.cost.map((x) => `| ${x.trace} | ${Math.round(x.vectorsPerS).toLocaleString('en-US')} | ${((x.vectorsPerS / off) * 100).toFixed(1)} % |`),
  ].join('\n');
}

async function main(): Promise<void> {
  const startedAt = new Date().toISOString();
  log('accuracy');
  const acc = accuracy(workload());
  log('cost on the hit path');
  const c = await cost();
  const host = hostInfo();
  const result = { startedAt, git: gitState(cli.root), cpu: host.cpuModel, cores: host.cores, quick, salts: SALTS, accuracy: acc, cost: c };
  publish(OUT, 'sim-results.json', result, 'sampled-simulation', render(result));
}

await main();
