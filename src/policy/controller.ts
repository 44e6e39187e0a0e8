/**
 * The live cache policy: closes MultiRay's loop inside the service.
 *
 * - Every `intervalMs` (default a minute) it simulates the tracer's in-memory window of recent samples
 *   for a grid around the running setting, off the request path: the replay yields to the event loop
 *   every few thousand records, so requests never wait behind it for more than a few milliseconds.
 * - Every prediction carries its 95 % error bar (estimate.ts: independent sub-samples of the key sample),
 *   and its rates are calibrated by what the service measured for all keys over the window.
 * - The result is `latest()`, served by the admin query `cachePolicy` and the dashboard, beside what was
 *   measured over the same window: the rates the sampled keys really had (their trace records) and the
 *   rates of all keys (the tracer's counts since the window's first record).
 * - With auto-apply on, the recommended TTLs (memory and, with Redis, global), clamped to
 *   [minTtlMs, maxTtlMs], become the TTLs of new cache entries — only when the saving exceeds its error
 *   bar, so a change is never made for sampling noise; every change (and every change withheld) is
 *   logged. The memory size is only recommended: the LRU cannot be resized in place.
 * - Every `seriesIntervalMs` it records the items answered by each tier since the last point (a ring of
 *   360 points: an hour at the default 10 s), for the dashboard's hit-rate chart.
 */
import type { PolyrayConfig } from '../config/index.ts';
import type { Logger } from '../log.ts';
import type { ServiceStats, Source } from '../service/types.ts';
import { price } from './cost.ts';
import { estimateStream, uncertainty, type EstimatedResult } from './estimate.ts';
import { describeSetting, gridSettings, recommend, sameSetting, type Grid } from './grid.ts';
import type { SimSetting } from './simulator.ts';
import { type MeasuredWindow, Ring, type TraceSource, type TraceWindow } from './trace.ts';
import type { TtlOverrideCache } from './ttl-override.ts';

/** Schedule, auto-apply bounds and prices come straight from the configuration's `policy` section. */
export interface PolicyControllerOptions
  extends Pick<PolyrayConfig['policy'], 'intervalMs' | 'seriesIntervalMs' | 'autoApply' | 'minTtlMs' | 'maxTtlMs' | 'prices'> {
  /** Recent trace samples (the tracer's window); undefined when tracing is off. */
  window: TraceWindow | undefined;
  /** What the tracer counted of all keys over that window (`Tracer.measuredOverWindow`). */
  measured?: () => MeasuredWindow;
  sampleRate: number;
  memory: { maxBytes: number; ttlMs: number; tier: TtlOverrideCache | undefined };
  /** The global tier; null without one. */
  global: { ttlMs: number; encoding: 'float32' | 'float16'; keyPrefixLength: number; tier: TtlOverrideCache | undefined } | null;
  /** The service's counters (per-source item totals). */
  stats: () => ServiceStats;
  logger: Logger;
  /** Fewest window records worth simulating. Default 50. */
  minRecords?: number;
  now?: () => number;
}

/** Measured shares over the window, for comparison with the simulated ones: joins and repeats count as memory hits. */
export interface MeasuredRates {
  items: number;
  memoryHitRate: number;
  globalHitRate: number;
  computeRate: number;
  /** Of `memoryHitRate`: answered by a join or a repeat within the call (no lookup of their own). */
  joinedRate: number;
}

export interface LivePolicy {
  computedAt: number;
  windowRecords: number;
  windowSpanMs: number;
  /** Hash-sample rate of the window (heavy keys are traced at rate 1). */
  sampleRate: number;
  /** Share of the window's items from keys traced at rate 1 (heavy keys). */
  exactShare: number;
  /** Models in the window (the simulated population: text and image models alike). */
  models: string[];
  current: EstimatedResult;
  recommended: EstimatedResult;
  /** Joules per hour saved by the recommendation (scaled to the full stream). */
  savingPerHour: number;
  /** 95 % half-width of `savingPerHour`. */
  savingPerHourError: number;
  savingFraction: number;
  /** Whether auto-apply would act: a saving larger than its error bar. */
  significant: boolean;
  /** Measured over the same window: the sampled keys (trace records, weighted by 1/rate) and all keys (the tracer's counts). */
  measured: { sampledKeys: MeasuredRates; allKeys: (MeasuredRates & { sinceT: number }) | null };
  results: EstimatedResult[];
  /** Milliseconds the simulation took (wall time, including its yields). */
  tookMs: number;
}

export interface SeriesPoint {
  t: number;
  memory: number;
  global: number;
  computed: number;
}

export interface UsageRow {
  client: string;
  model: string;
  /** Items looked up (scaled to the full stream by 1/sample rate). */
  items: number;
  computed: number;
  inferenceMs: number;
  /** Energy in joules by the cost model: compute + serving (storage is not per client). */
  joules: number;
}

const MIN = 60_000;
const HOUR = 3_600_000;

export class PolicyController {
  readonly #o: PolicyControllerOptions & { now: () => number; minRecords: number };
  #latest: LivePolicy | undefined;
  #running: Promise<LivePolicy | undefined> | undefined;
  readonly #series = new Ring<SeriesPoint>(360);
  #last: Record<Source, number> | undefined;
  #timers: NodeJS.Timeout[] = [];
  #lastAdvice = '';
  #lastWithheld = '';

  constructor(options: PolicyControllerOptions) {
    this.#o = { minRecords: 50, now: Date.now, ...options };
  }

  start(): void {
    if (this.#timers.length > 0) return;
    const a = setInterval(
      () => void this.recompute().catch((e: unknown) => this.#o.logger.warn({ err: (e as Error).message }, 'cache policy recomputation failed')),
      this.#o.intervalMs,
    );
    const b = setInterval(() => this.sample(), this.#o.seriesIntervalMs);
    a.unref();
    b.unref();
    this.#timers = [a, b];
    this.sample();
  }

  stop(): void {
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
  }

  get autoApply(): boolean {
    return this.#o.autoApply;
  }

  get sampleRate(): number {
    return this.#o.sampleRate;
  }

  /** The setting the service runs with now (configured size, TTLs as applied). */
  effective(): SimSetting {
    const m = this.#o.memory;
    const g = this.#o.global;
    return {
      memoryBytes: m.maxBytes,
      memoryTtlMs: m.tier?.ttlMs ?? m.ttlMs,
      globalTtlMs: g === null ? null : (g.tier?.ttlMs ?? g.ttlMs),
    };
  }

  /** Candidate settings around the running one; TTLs inside the auto-apply bounds when it is on. */
  grid(current: SimSetting): Grid {
    const inBounds = (ttls: number[]) => {
      if (!this.#o.autoApply) return ttls;
      const { minTtlMs: lo, maxTtlMs: hi } = this.#o;
      return [...new Set([lo, ...ttls.filter((t) => t > lo && t < hi), hi])];
    };
    return {
      memoryBytes: [0.25, 0.5, 1, 2, 4].map((f) => Math.max(1024, Math.round(current.memoryBytes * f))),
      memoryTtlMs: inBounds([MIN, 5 * MIN, 15 * MIN, HOUR, 4 * HOUR, 24 * HOUR, current.memoryTtlMs].filter((t) => t > 0)),
      globalTtlMs: current.globalTtlMs === null ? [null] : inBounds([HOUR, 6 * HOUR, 24 * HOUR, 72 * HOUR, 168 * HOUR, current.globalTtlMs]),
    };
  }

  latest(): LivePolicy | undefined {
    return this.#latest;
  }

  /** Simulates the window now (one run at a time); undefined when the window is too small. */
  recompute(): Promise<LivePolicy | undefined> {
    this.#running ??= this.#recompute().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #recompute(): Promise<LivePolicy | undefined> {
    const records = this.#o.window?.toArray() ?? [];
    if (records.length < this.#o.minRecords) return undefined;
    // Taken with the window, so both cover the same records.
    const all = this.#o.measured?.();
    const t0 = performance.now();
    const current = this.effective();
    const settings = gridSettings(this.grid(current), current);
    const g = this.#o.global;
    const allRates = all && all.items > 0 ? rates(all.bySource, all.items) : undefined;
    const report = await estimateStream(records, {
      ...(allRates ? { measured: allRates } : {}),
      settings,
      prices: this.#o.prices,
      globalEncoding: g?.encoding ?? 'float32',
      globalKeyPrefixLength: g?.keyPrefixLength ?? 11,
      yieldEvery: 2000,
    });
    const rec = recommend(report.results, current);
    const hours = report.trace.spanMs / HOUR;
    const cur = report.results.indexOf(rec.current as EstimatedResult);
    const best = report.results.indexOf(rec.recommended as EstimatedResult);
    const savingPerHour = hours > 0 ? rec.saving / hours : rec.saving;
    const savingPerHourError = uncertainty(report, (rs) => rs[cur]!.costPerHour - rs[best]!.costPerHour);
    const m = report.trace.measured;
    const live: LivePolicy = {
      computedAt: this.#o.now(),
      windowRecords: report.trace.records,
      windowSpanMs: report.trace.spanMs,
      sampleRate: report.trace.sampleRate,
      exactShare: report.trace.exactShare,
      models: report.trace.models,
      current: rec.current as EstimatedResult,
      recommended: rec.recommended as EstimatedResult,
      savingPerHour,
      savingPerHourError,
      savingFraction: rec.savingFraction,
      significant: rec.saving > 0 && savingPerHour > savingPerHourError,
      measured: {
        // The trace's measured shares are already fractions of its (weighted) items.
        sampledKeys: { ...rates(m, 1), items: report.trace.items },
        allKeys: all && allRates ? { ...allRates, sinceT: all.sinceT } : null,
      },
      results: report.results,
      tookMs: performance.now() - t0,
    };
    this.#latest = live;
    const advice = describeSetting(rec.recommended.setting);
    if (advice !== this.#lastAdvice) {
      this.#lastAdvice = advice;
      this.#o.logger.info(
        { current: describeSetting(current), recommended: advice, savingPercent: +(rec.savingFraction * 100).toFixed(2), windowRecords: live.windowRecords },
        'cache policy recommendation',
      );
    }
    if (this.#o.autoApply) {
      if (live.significant || sameSetting(rec.recommended.setting, current)) this.#apply(rec.recommended.setting);
      else if (rec.saving > 0 && advice !== this.#lastWithheld) {
        this.#lastWithheld = advice;
        this.#o.logger.info(
          { recommended: advice, savingJoulesPerHour: +savingPerHour.toPrecision(3), errorJoulesPerHour: +savingPerHourError.toPrecision(3) },
          'cache policy change withheld: the saving is within its error bar',
        );
      }
    }
    return live;
  }

  #clamp(ttl: number): number {
    return Math.min(this.#o.maxTtlMs, Math.max(this.#o.minTtlMs, ttl === 0 ? Infinity : ttl));
  }

  #apply(target: SimSetting): void {
    const m = this.#o.memory;
    const memTtl = this.#clamp(target.memoryTtlMs);
    const before = this.effective();
    if (m.tier && memTtl !== before.memoryTtlMs) {
      m.tier.ttlMs = memTtl;
      this.#o.logger.info({ tier: 'memory', fromSeconds: before.memoryTtlMs / 1000, toSeconds: memTtl / 1000 }, 'cache policy applied a new TTL');
    }
    const g = this.#o.global;
    if (g?.tier && target.globalTtlMs !== null) {
      const gTtl = this.#clamp(target.globalTtlMs);
      if (gTtl !== before.globalTtlMs) {
        g.tier.ttlMs = gTtl;
        this.#o.logger.info({ tier: 'global', fromSeconds: (before.globalTtlMs ?? 0) / 1000, toSeconds: gTtl / 1000 }, 'cache policy applied a new TTL');
      }
    }
    if (target.memoryBytes !== before.memoryBytes && !sameSetting(target, before)) {
      this.#o.logger.debug({ recommendedMemoryBytes: target.memoryBytes }, 'memory size is only recommended (set POLYRAY_MEMORY_CACHE_MB)');
    }
  }

  /** Adds a point to the hit-rate series: items per tier since the previous point. */
  sample(): void {
    const s = this.#o.stats().bySource;
    const prev = this.#last;
    this.#last = { ...s };
    if (!prev) return;
    this.#series.push({ t: this.#o.now(), memory: s.MEMORY - prev.MEMORY, global: s.GLOBAL - prev.GLOBAL, computed: s.COMPUTED - prev.COMPUTED });
  }

  series(): SeriesPoint[] {
    return this.#series.toArray();
  }

  /** Items and energy per client and model in the window, scaled to the full stream. */
  usage(): UsageRow[] {
    const rows = new Map<string, UsageRow>();
    const p = this.#o.prices;
    for (const r of this.#o.window?.toArray() ?? []) {
      const client = r.c ?? 'unknown';
      const id = `${client}\u0000${r.m}`;
      let row = rows.get(id);
      if (!row) {
        row = { client, model: r.m, items: 0, computed: 0, inferenceMs: 0, joules: 0 };
        rows.set(id, row);
      }
      const w = (r.n ?? 1) / r.r;
      row.items += w;
      if (r.src === 'COMPUTED') row.computed += w;
      row.inferenceMs += r.ms / r.r;
      row.joules += price(
        { computeMs: r.ms / r.r, memoryByteHours: 0, globalByteHours: 0, memoryHits: r.src === 'MEMORY' ? w : 0, globalHits: r.src === 'GLOBAL' ? w : 0 },
        p,
      ).total;
    }
    return [...rows.values()].sort((a, b) => b.joules - a.joules);
  }
}

/** Shares of `bySource` (weighted counts) of `items`, joins counted as memory hits. */
function rates(bySource: Record<TraceSource, number>, items: number): MeasuredRates {
  const share = (x: number) => (items > 0 ? x / items : 0);
  return {
    items,
    memoryHitRate: share(bySource.MEMORY + bySource.JOINED),
    globalHitRate: share(bySource.GLOBAL),
    computeRate: share(bySource.COMPUTED),
    joinedRate: share(bySource.JOINED),
  };
}
