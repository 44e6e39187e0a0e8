/**
 * `polyray simulate`: replays a trace (or a synthetic workload) for a grid of cache settings, prices
 * each with the cost model and recommends one. See docs/CACHE-POLICY.md.
 */
import { createWriteStream } from 'node:fs';
import { parseFlags } from '../cli-args.ts';
import type { PolyrayConfig } from '../config/index.ts';
import { createProgressWriter, type ProgressStream } from '../models/progress.ts';
import { DEFAULT_PRICES, parsePrices, type CostPrices } from './cost.ts';
import {
  defaultGrid,
  describeSetting,
  formatBytes,
  formatDuration,
  gridSettings,
  parseDuration,
  parseGrid,
  parseSize,
  recommend,
  type Recommendation,
} from './grid.ts';
import { openTrace } from './read.ts';
import { Estimator, uncertainty, type EstimatedResult, type EstimateReport } from './estimate.ts';
import type { SimSetting } from './simulator.ts';
import { parseSynthetic, zipfTrace } from './synthetic.ts';
import type { TraceRecord } from './trace.ts';

export const SIMULATE_USAGE = `usage: polyray simulate (--trace FILE|DIR|redis://HOST:PORT/?stream=KEY | --synthetic zipf:...) [options]

  --trace LOCATION       a JSONL trace file, a folder of rotated trace files, or a Redis Stream
  --synthetic SPEC       zipf:s=1.1,n=100000,churn=0.01,requests=1e6[,rps=100,seed=1,bytes=3072,ms=4]
  --grid SPEC            mem=16MB,64MB;ttl=5m,1h,none;gttl=none,1d,7d (defaults around the current config)
  --current SPEC         the setting to compare with, same syntax (default: from the configuration)
  --prices SPEC          compute=15,memory=0.375,global=1,memhit=2e-5,globalhit=2e-3 (W, W/GiB, J)
  --top N                rows of the table (default 12)
  --json                 print the whole report as JSON on stdout
  --save-trace FILE      also write the replayed records as JSONL (e.g. to keep a synthetic trace)
`;

export interface SimulateIo {
  out: (s: string) => void;
  progress?: ProgressStream;
}

export interface SimulateOutcome {
  report: EstimateReport;
  recommendation: Recommendation;
  /** 95 % half-width of the saving (joules over the trace); 0 for a trace that is not sampled. */
  savingError: number;
  seconds: number;
}

export function currentSetting(config: PolyrayConfig): SimSetting {
  const r = config.cache.redis;
  return { memoryBytes: config.cache.memory.maxBytes, memoryTtlMs: config.cache.memory.ttlMs, globalTtlMs: r.kind === 'none' ? null : r.ttlMs };
}

function parseCurrent(spec: string, base: SimSetting): SimSetting {
  const out = { ...base };
  for (const part of spec.split(/[;\s]+/).filter(Boolean)) {
    const [k, v] = part.split('=') as [string, string | undefined];
    if (!v) throw new TypeError(`--current: "${part}" must look like name=value`);
    if (k === 'mem' || k === 'memory') out.memoryBytes = parseSize(v);
    else if (k === 'ttl' || k === 'memttl') out.memoryTtlMs = parseDuration(v);
    else if (k === 'gttl' || k === 'globalttl') out.globalTtlMs = /^none$/i.test(v) ? null : parseDuration(v) || null;
    else throw new TypeError(`--current: unknown name "${k}" (mem, ttl, gttl)`);
  }
  return out;
}

export async function runSimulate(argv: string[], config: PolyrayConfig, io: SimulateIo): Promise<SimulateOutcome> {
  const values = parseFlags(argv, { strings: ['trace', 'synthetic', 'grid', 'current', 'prices', 'top', 'save-trace'], booleans: ['json'] });
  if ((values.trace === undefined) === (values.synthetic === undefined))
    throw new TypeError(`name exactly one of --trace and --synthetic\n\n${SIMULATE_USAGE}`);
  const prices: CostPrices = values.prices ? parsePrices(values.prices, config.policy?.prices ?? DEFAULT_PRICES) : (config.policy?.prices ?? DEFAULT_PRICES);
  const current = values.current ? parseCurrent(values.current, currentSetting(config)) : currentSetting(config);
  const grid = values.grid ? parseGrid(values.grid, defaultGrid(current)) : defaultGrid(current);
  const settings = gridSettings(grid, current);
  const r = config.cache.redis;
  const sim = new Estimator({
    settings,
    prices,
    ...(values.synthetic ? { sampleRate: 1 } : {}),
    globalEncoding: r.kind === 'none' ? 'float32' : r.encoding,
    globalKeyPrefixLength: r.kind === 'none' ? 'polyray:v1:'.length : r.keyPrefix.length,
  });
  const bar = createProgressWriter(io.progress ? { stream: io.progress } : {});
  const save = values['save-trace'] ? createWriteStream(values['save-trace']) : undefined;
  const t0 = performance.now();
  let describe: string;
  let skipped = 0;
  const feed = async (rec: TraceRecord) => {
    sim.add(rec);
    if (save && !save.write(`${JSON.stringify(rec)}\n`)) await new Promise<void>((res) => save.once('drain', () => res()));
  };
  if (values.synthetic) {
    const spec = parseSynthetic(values.synthetic);
    describe = `synthetic ${values.synthetic}`;
    let i = 0;
    for (const rec of zipfTrace(spec)) {
      if (save) await feed(rec);
      else sim.add(rec);
      if (++i % 16384 === 0) bar.update({ step: 'replay', done: i, total: spec.requests });
    }
    bar.update({ step: 'replay', done: spec.requests, total: spec.requests });
  } else {
    const source = await openTrace(values.trace!, {
      onProgress: (p) => bar.update({ step: 'replay', done: p.done, total: p.total }),
      ...(config.trace?.redisStream ? { defaultStreamKey: config.trace.redisStream } : {}),
    });
    describe = source.describe;
    for await (const rec of source.records()) await feed(rec);
    skipped = source.skipped;
  }
  bar.finish();
  if (save) await new Promise<void>((res, rej) => save.end((e?: Error | null) => (e ? rej(e) : res())));
  const report = sim.finish();
  if (report.trace.records === 0) throw new Error(`the trace (${describe}) holds no records`);
  const recommendation = recommend(report.results, current);
  const cur = report.results.indexOf(recommendation.current as EstimatedResult);
  const best = report.results.indexOf(recommendation.recommended as EstimatedResult);
  const savingError = uncertainty(report, (rs) => rs[cur]!.cost.total - rs[best]!.cost.total);
  const seconds = (performance.now() - t0) / 1000;
  if (values.json) {
    const { replicates: _, ...rest } = report;
    io.out(
      `${JSON.stringify({ source: describe, skipped, prices, ...rest, recommendation: { ...summarise(recommendation), savingError }, seconds }, null, 2)}\n`,
    );
  } else {
    io.out(
      formatReport(report, recommendation, savingError, {
        describe,
        skipped,
        seconds,
        top: values.top ? Number(values.top) : 12,
        synthetic: values.synthetic !== undefined,
      }),
    );
  }
  return { report, recommendation, savingError, seconds };
}

function summarise(r: Recommendation) {
  return { current: r.current.setting, recommended: r.recommended.setting, saving: r.saving, savingFraction: r.savingFraction };
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
/** A rate with its error bar, when it has one: `66.3% ±1.2`. */
const pctErr = (x: number, e: number) => (e > 0 ? `${pct(x)} ±${(e * 100).toFixed(1)}` : pct(x));

/** A trace span for people: seconds, minutes or hours. */
function span(ms: number): string {
  if (ms >= 3_600_000) return `${(ms / 3_600_000).toFixed(2)} h`;
  if (ms >= 60_000) return `${(ms / 60_000).toFixed(1)} min`;
  return `${(ms / 1000).toFixed(1)} s`;
}

/** Joules with a unit that keeps 3–4 significant digits. */
export function formatJoules(j: number): string {
  const a = Math.abs(j);
  if (a >= 1e6) return `${(j / 1e6).toFixed(2)} MJ`;
  if (a >= 1e3) return `${(j / 1e3).toFixed(2)} kJ`;
  if (a >= 1) return `${j.toFixed(1)} J`;
  return `${(j * 1e3).toFixed(2)} mJ`;
}

function formatReport(
  report: EstimateReport,
  rec: Recommendation,
  savingError: number,
  o: { describe: string; skipped: number; seconds: number; top: number; synthetic: boolean },
): string {
  const t = report.trace;
  const lines: string[] = [];
  const hours = t.spanMs / 3_600_000;
  lines.push(
    `trace: ${o.describe}: ${t.records.toLocaleString('en-US')} records, ${t.items.toLocaleString('en-US')} items, ${t.distinctKeys.toLocaleString('en-US')} distinct keys over ${span(t.spanMs)}, sample rate ${t.sampleRate}${o.skipped ? `, ${o.skipped} bad lines skipped` : ''}`,
  );
  if (t.sampleRate < 1) {
    lines.push(
      `  sampled at ${t.sampleRate} by key hash (${pct(t.exactShare)} of items from heavy keys traced at rate 1): each record weighs 1 / its rate; ± = 95 % error bar from ${report.replicates.length} independent sub-samples`,
    );
  }
  if (!o.synthetic) {
    lines.push(
      `  measured by the service for these keys: memory ${pct(t.measured.MEMORY + t.measured.JOINED)} (joined or repeated ${pct(t.measured.JOINED)}), global ${pct(t.measured.GLOBAL)}, computed ${pct(t.measured.COMPUTED)}`,
    );
  }
  lines.push(`${report.results.length} settings simulated in ${o.seconds.toFixed(1)} s; cost = compute + storage + serving energy, per hour of trace`);
  lines.push('');
  const header = ['memory', 'mem ttl', 'global ttl', 'mem hit', 'glob hit', 'computed', 'compute/h', 'storage/h', 'serving/h', 'total/h', ''];
  const perH = (j: number) => formatJoules(hours > 0 ? j / hours : j);
  const row = (x: EstimatedResult): string[] => [
    formatBytes(x.setting.memoryBytes),
    formatDuration(x.setting.memoryTtlMs),
    x.setting.globalTtlMs === null ? 'no tier' : formatDuration(x.setting.globalTtlMs),
    pctErr(x.memoryHitRate, x.error.memoryHitRate),
    pctErr(x.globalHitRate, x.error.globalHitRate),
    pctErr(x.computeRate, x.error.computeRate),
    perH(x.cost.compute),
    perH(x.cost.memoryStorage + x.cost.globalStorage),
    perH(x.cost.serving),
    x.error.costPerHour > 0 ? `${perH(x.cost.total)} ±${formatJoules(x.error.costPerHour)}` : perH(x.cost.total),
    x === rec.recommended && x === rec.current ? '← current, recommended' : x === rec.recommended ? '← recommended' : x === rec.current ? '← current' : '',
  ];
  const sorted = [...report.results].sort((a, b) => a.cost.total - b.cost.total);
  const shown = sorted.slice(0, Math.max(1, o.top));
  if (!shown.includes(rec.current as EstimatedResult)) shown.push(rec.current as EstimatedResult);
  const rows = [header, ...shown.map(row)];
  const widths = header.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows)
    lines.push(
      r
        .map((c, i) => (i < 3 || i === r.length - 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
        .join('  ')
        .trimEnd(),
    );
  lines.push('');
  lines.push(`current:     ${describeSetting(rec.current.setting)}: ${perH(rec.current.cost.total)}/h`);
  lines.push(`recommended: ${describeSetting(rec.recommended.setting)}: ${perH(rec.recommended.cost.total)}/h`);
  lines.push(
    rec.recommended === rec.current
      ? 'saving: none — the current setting is already the cheapest (within 0.5 %)'
      : `saving: ${pct(rec.savingFraction)} (${perH(rec.saving)}/h${savingError > 0 ? ` ±${perH(savingError)}/h` : ''}) versus the current setting${savingError >= rec.saving ? ' — within the error bar: not a reliable saving at this sample rate' : ''}`,
  );
  const longest = Math.max(...report.results.map((x) => Math.max(x.setting.memoryTtlMs, x.setting.globalTtlMs ?? 0)));
  if (longest > t.spanMs) lines.push(`note: TTLs longer than the trace (${span(t.spanMs)}) are judged on this trace only; a longer trace judges them better.`);
  return `${lines.join('\n')}\n`;
}
