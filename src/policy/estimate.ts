/**
 * Error bars for a sampled trace's predictions: the simulator (simulator.ts) run once on the whole sample
 * and once per independent sub-sample (random groups).
 *
 * A key sampled by hash (r < 1) is put in one of `groups` sub-samples by a second, independent hash of its
 * trace key; each sub-sample is then itself a key sample at rate r / groups and is simulated as one (its
 * records weighted by groups / r). Records at rate 1 — heavy keys, or a trace that is not sampled — carry
 * no sampling error and go to every sub-sample. The spread of the sub-samples' predictions estimates the
 * variance of one prediction at rate r / groups; a prediction at rate r has (1 − r) / (groups − r) times
 * that variance (sampling variance goes as (1 − p) / p). The error bar is the 95 % half-width,
 * Student's t with groups − 1 degrees of freedom times that standard error.
 *
 * Any figure derived from the results has its error the same way (`uncertainty`): the saving of a
 * recommendation, for one, is computed per sub-sample, so what is common to both settings cancels.
 *
 * Calibration (`finish(measured)`): the trace records what really answered each sampled lookup, so the
 * sample's own measured rates can be set beside the rates the service measured for all keys over the same
 * records (Tracer.measuredOverWindow). Their difference is this sample's luck, and it is shared by every
 * setting simulated on the same keys: it is subtracted from every predicted rate (a control variate). On
 * the Zipf test workload at rate 0.1 it cut the worst error over 20 salts from ~2.6 to ~1.4 points
 * (bench/RESULTS.md). Costs are not calibrated. Each sub-sample is calibrated with its own measured rates,
 * so the error bars are those of the calibrated prediction.
 *
 * Cost: each record is replayed twice (once in its sub-sample), rate-1 records groups + 1 times; a trace
 * wholly at rate 1 builds no sub-samples at all.
 */
import { hash53 } from './hash.ts';
import { Simulator, type SimReport, type SimResult, type SimulatorOptions, type TraceSummary } from './simulator.ts';
import type { TraceRecord } from './trace.ts';

export interface EstimatorOptions extends SimulatorOptions {
  /** Independent sub-samples for the error bars, ≥ 2. Default 10. */
  groups?: number;
}

export const DEFAULT_GROUPS = 10;

/** 95 % half-widths of a result's figures (0 when the trace is not sampled). */
export interface Uncertainty {
  memoryHitRate: number;
  globalHitRate: number;
  computeRate: number;
  costPerHour: number;
}

export interface EstimatedResult extends SimResult {
  error: Uncertainty;
}

export interface EstimateReport extends SimReport {
  results: EstimatedResult[];
  /** The sub-samples' results (same order as `results`, calibrated like them); empty when nothing was sampled below rate 1. */
  replicates: SimResult[][];
  /** Rates added to every prediction by calibration (0 without). */
  calibration: MeasuredShares | null;
}

/** Shares of items by what answered them, as measured (joins and repeats within a call count as memory hits). */
export interface MeasuredShares {
  memoryHitRate: number;
  globalHitRate: number;
  computeRate: number;
}

/** The measured shares a trace summary holds for its sampled keys. */
export function sampledShares(t: TraceSummary): MeasuredShares {
  return { memoryHitRate: t.measured.MEMORY + t.measured.JOINED, globalHitRate: t.measured.GLOBAL, computeRate: t.measured.COMPUTED };
}

/** `r` with `offset` added to its rates (kept within 0..1). */
function shift(r: SimResult, offset: MeasuredShares | null): SimResult {
  if (!offset) return r;
  const c = (x: number) => Math.min(1, Math.max(0, x));
  return {
    ...r,
    memoryHitRate: c(r.memoryHitRate + offset.memoryHitRate),
    globalHitRate: c(r.globalHitRate + offset.globalHitRate),
    computeRate: c(r.computeRate + offset.computeRate),
  };
}

function offsetOf(measured: MeasuredShares | undefined, t: TraceSummary): MeasuredShares | null {
  if (!measured || t.items === 0) return null;
  const s = sampledShares(t);
  return {
    memoryHitRate: measured.memoryHitRate - s.memoryHitRate,
    globalHitRate: measured.globalHitRate - s.globalHitRate,
    computeRate: measured.computeRate - s.computeRate,
  };
}

/** Seed of the sub-sample hash: any seed other than the sampling one gives independent groups. */
const GROUP_SEED = 0x9a0b;

export class Estimator {
  readonly #o: EstimatorOptions;
  readonly #groups: number;
  readonly #full: Simulator;
  #subs: Simulator[] | undefined;

  constructor(options: EstimatorOptions) {
    const groups = options.groups ?? DEFAULT_GROUPS;
    if (!Number.isSafeInteger(groups) || groups < 2) throw new TypeError(`Estimator groups must be an integer >= 2, received ${groups}`);
    this.#o = options;
    this.#groups = groups;
    this.#full = new Simulator(options);
  }

  add(rec: TraceRecord): void {
    this.#full.add(rec);
    const rate = this.#o.sampleRate ?? rec.r;
    if (rate >= 1) {
      // Exact records: in every sub-sample (the few before the first sampled record are left out of them).
      if (this.#subs) for (const s of this.#subs) s.add(rec);
      return;
    }
    this.#subs ??= Array.from({ length: this.#groups }, () => new Simulator({ ...this.#o, sampleRate: undefined }));
    const g = hash53(rec.k, GROUP_SEED) % this.#groups;
    this.#subs[g]!.add({ ...rec, r: rate / this.#groups });
  }

  /**
   * The predictions with their error bars. `measured`: the rates the service measured for all keys over
   * the records replayed; given, every predicted rate is calibrated by the sample's measured error.
   */
  finish(measured?: MeasuredShares): EstimateReport {
    const full = this.#full.finish();
    const calibration = offsetOf(measured, full.trace);
    const report = { ...full, results: full.results.map((r) => shift(r, calibration)) };
    const replicates =
      this.#subs?.map((s) => {
        const sub = s.finish();
        const offset = offsetOf(measured, sub.trace);
        return sub.results.map((r) => shift(r, offset));
      }) ?? [];
    const rate = report.trace.sampleRate;
    const results = report.results.map((r, i): EstimatedResult => {
      const err = (f: (x: SimResult) => number) => halfWidth(replicates, rate, (rs) => f(rs[i]!));
      return {
        ...r,
        error: {
          memoryHitRate: err((x) => x.memoryHitRate),
          globalHitRate: err((x) => x.globalHitRate),
          computeRate: err((x) => x.computeRate),
          costPerHour: err((x) => x.costPerHour),
        },
      };
    });
    return { ...report, results, replicates, calibration };
  }
}

/** The 95 % half-width of any figure `f` computed from one sub-sample's results. */
export function uncertainty(report: EstimateReport, f: (results: SimResult[]) => number): number {
  return halfWidth(report.replicates, report.trace.sampleRate, f);
}

function halfWidth(replicates: SimResult[][], rate: number, f: (results: SimResult[]) => number): number {
  const b = replicates.length;
  if (b < 2 || rate >= 1) return 0;
  const xs = replicates.map(f);
  const mean = xs.reduce((a, x) => a + x, 0) / b;
  const variance = xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (b - 1);
  return t975(b - 1) * Math.sqrt((variance * (1 - rate)) / (b - rate));
}

/** Student's t, 97.5 % quantile (Cornish–Fisher to the 1/df² term: within 0.01 from 3 degrees of freedom). */
export function t975(df: number): number {
  const z = 1.959964;
  const z3 = z ** 3;
  const z5 = z ** 5;
  return z + (z3 + z) / (4 * df) + (5 * z5 + 16 * z3 + 3 * z) / (96 * df * df);
}

/** Replays an async stream of records with error bars, yielding to the event loop every `yieldEvery` records. */
export async function estimateStream(
  records: AsyncIterable<TraceRecord> | Iterable<TraceRecord>,
  options: EstimatorOptions & { yieldEvery?: number; measured?: MeasuredShares },
): Promise<EstimateReport> {
  const est = new Estimator(options);
  const every = options.yieldEvery ?? 0;
  let i = 0;
  for await (const r of records) {
    est.add(r);
    if (every > 0 && ++i % every === 0) await new Promise<void>((res) => setImmediate(res));
  }
  return est.finish(options.measured);
}
