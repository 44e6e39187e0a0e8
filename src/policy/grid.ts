/**
 * Setting grids and the recommendation.
 *
 * Grid syntax (`simulate --grid`): `mem=16MB,64MB,256MB;ttl=5m,1h,none;gttl=none,1d,7d`
 *   mem   memory tier sizes (B, KB, MB, GB; binary units like POLYRAY_MEMORY_CACHE_MB)
 *   ttl   memory TTLs (s, m, h, d; a bare number is seconds; `none` or 0 = no expiry)
 *   gttl  global TTLs (`none` = no global tier)
 * Omitted dimensions take the defaults of `defaultGrid`. The current setting is always simulated too.
 */
import type { SimResult, SimSetting } from './simulator.ts';

export interface Grid {
  memoryBytes: number[];
  memoryTtlMs: number[];
  globalTtlMs: (number | null)[];
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
};
const TIME_UNITS: Record<string, number> = { '': 1000, ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000 };

export function parseSize(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([a-z]*)\s*$/i.exec(s);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new TypeError(`"${s}" is not a size (e.g. 64MB, 1GB, 1048576)`);
  return Math.round(Number(m[1]) * unit);
}

/** Milliseconds; `none` → 0 (no expiry). */
export function parseDuration(s: string): number {
  if (/^\s*(none|off|0)\s*$/i.test(s)) return 0;
  const m = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([a-z]*)\s*$/i.exec(s);
  const unit = m ? TIME_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new TypeError(`"${s}" is not a duration (e.g. 60, 5m, 1h, 7d, none)`);
  return Math.round(Number(m[1]) * unit);
}

export function formatBytes(n: number): string {
  if (n >= 1024 ** 3 && n % 1024 ** 3 === 0) return `${n / 1024 ** 3}GB`;
  if (n >= 1024 ** 2) return `${+(n / 1024 ** 2).toFixed(n % 1024 ** 2 === 0 ? 0 : 1)}MB`;
  if (n >= 1024) return `${+(n / 1024).toFixed(1)}KB`;
  return `${n}B`;
}

export function formatDuration(ms: number | null): string {
  if (ms === null) return 'none';
  if (ms === 0) return 'none';
  for (const [u, f] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= f && ms % f === 0) return `${ms / f}${u}`;
  }
  return `${ms}ms`;
}

export function describeSetting(s: SimSetting): string {
  return `memory ${formatBytes(s.memoryBytes)} ttl ${formatDuration(s.memoryTtlMs)}, global ${s.globalTtlMs === null ? 'none' : `ttl ${formatDuration(s.globalTtlMs)}`}`;
}

const MIB = 1024 ** 2;

/** Defaults around the current setting; the global dimension only when the current setting has one. */
export function defaultGrid(current: SimSetting): Grid {
  return {
    memoryBytes: [1, 4, 16, 64, 256, 1024].map((m) => m * MIB),
    memoryTtlMs: [60, 300, 900, 3600, 14_400, 86_400].map((s) => s * 1000),
    globalTtlMs: current.globalTtlMs === null ? [null] : [3600, 21_600, 86_400, 259_200, 604_800].map((s) => s * 1000),
  };
}

export function parseGrid(spec: string, base: Grid): Grid {
  const grid: Grid = { ...base };
  for (const part of spec.split(/[;\s]+/).filter(Boolean)) {
    const eq = part.indexOf('=');
    const name = part.slice(0, eq).trim().toLowerCase();
    const values = part
      .slice(eq + 1)
      .split(',')
      .map((v) => v.trim())
      .filter(Boolean);
    if (eq < 0 || values.length === 0) throw new TypeError(`--grid: "${part}" must look like name=v1,v2`);
    if (name === 'mem' || name === 'memory') grid.memoryBytes = values.map(parseSize);
    else if (name === 'ttl' || name === 'memttl') grid.memoryTtlMs = values.map(parseDuration);
    else if (name === 'gttl' || name === 'globalttl') grid.globalTtlMs = values.map((v) => (/^\s*none\s*$/i.test(v) ? null : parseDuration(v) || null));
    else throw new TypeError(`--grid: unknown dimension "${name}" (mem, ttl, gttl)`);
  }
  return grid;
}

export function sameSetting(a: SimSetting, b: SimSetting): boolean {
  return a.memoryBytes === b.memoryBytes && a.memoryTtlMs === b.memoryTtlMs && a.globalTtlMs === b.globalTtlMs;
}

/** Every combination of the grid, plus `current` if it is not one of them (first). */
export function gridSettings(grid: Grid, current?: SimSetting): SimSetting[] {
  const out: SimSetting[] = current ? [current] : [];
  for (const memoryBytes of uniq(grid.memoryBytes))
    for (const memoryTtlMs of uniq(grid.memoryTtlMs))
      for (const globalTtlMs of uniq(grid.globalTtlMs)) {
        const s = { memoryBytes, memoryTtlMs, globalTtlMs };
        if (!current || !sameSetting(s, current)) out.push(s);
      }
  return out;
}

function uniq<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}

export interface Recommendation {
  current: SimResult;
  recommended: SimResult;
  /** current − recommended, joules over the trace (scaled to the full stream). */
  saving: number;
  /** saving / current cost, 0..1. */
  savingFraction: number;
}

/**
 * The cheapest setting. Settings within `tolerance` (default 0.5 %) of the cheapest count as equal:
 * then the current one is kept if it is among them (no change for noise), else the one with the least
 * memory and the shortest TTLs.
 */
export function recommend(results: SimResult[], current: SimSetting, tolerance = 0.005): Recommendation {
  const cur = results.find((r) => sameSetting(r.setting, current));
  if (!cur) throw new Error('the current setting was not simulated');
  const min = Math.min(...results.map((r) => r.cost.total));
  const near = results.filter((r) => r.cost.total <= min * (1 + tolerance) + 1e-12);
  let best: SimResult;
  if (near.includes(cur)) best = cur;
  else {
    best = near.reduce((a, b) => {
      const ka = [a.cost.total, a.setting.memoryBytes, a.setting.memoryTtlMs || Infinity, a.setting.globalTtlMs ?? 0];
      const kb = [b.cost.total, b.setting.memoryBytes, b.setting.memoryTtlMs || Infinity, b.setting.globalTtlMs ?? 0];
      // Among near-equal costs prefer less memory, then shorter TTLs; exact cost breaks nothing here.
      for (let i = 1; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i]! < kb[i]! ? a : b;
      return ka[0]! <= kb[0]! ? a : b;
    });
  }
  const saving = cur.cost.total - best.cost.total;
  return { current: cur, recommended: best, saving, savingFraction: cur.cost.total > 0 ? saving / cur.cost.total : 0 };
}
