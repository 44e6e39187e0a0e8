/**
 * The cost model of cache settings, in joules (energy), MultiRay-style: one number per setting that
 * weighs recomputation against storage and serving.
 *
 *   cost = Σ_computed  inferenceMs_i × computeWatts / 1000                      (compute)
 *        + memoryByteHours × memoryWattsPerGiB × 3600 / 2^30                    (memory storage)
 *        + globalByteHours × globalWattsPerGiB × 3600 / 2^30                    (global storage)
 *        + memoryHits × memoryHitJoules + globalHits × globalHitJoules          (serving)
 *
 * - inferenceMs_i is the measured inference time of the item (its token share of the batch's run()),
 *   taken from the trace; a key the trace only ever saw as a hit is charged the model's mean.
 * - byte-hours integrate the bytes each tier holds over time (entry sizes: `sizes.ts`). The memory tier
 *   holds an entry until it is evicted or read after its TTL (lru-cache does not purge expired entries
 *   by itself, and the simulator does exactly what it does); the global tier holds it for its TTL.
 * - a sampled trace (rate r) is simulated at memory size S·r and every count and cost is scaled by 1/r.
 *
 * Defaults: a server drawing 15 W while it infers; DRAM at 0.375 W per GiB (a 16 GiB DDR4 module draws
 * about 6 W); the Redis fleet at 1 W per GiB held (DRAM plus its share of the servers and replicas);
 * a memory hit ≈ 2 µs of a 10 W core (2e-5 J); a global hit ≈ a Redis round trip, 0.2 ms of client,
 * network and server time (2e-3 J). All are configurable (`POLYRAY_PRICE_*`, `simulate --prices`).
 */

export interface CostPrices {
  /** Watts drawn per millisecond of measured inference, i.e. joules per inference-second. */
  computeWatts: number;
  /** Watts per GiB held in the memory tier. */
  memoryWattsPerGiB: number;
  /** Watts per GiB held in the global tier. */
  globalWattsPerGiB: number;
  /** Joules per item served from memory. */
  memoryHitJoules: number;
  /** Joules per item served from the global tier. */
  globalHitJoules: number;
  /** Inference ms assumed for a key whose cost was never measured and no model mean exists yet. */
  defaultComputeMs: number;
}

export const DEFAULT_PRICES: CostPrices = {
  computeWatts: 15,
  memoryWattsPerGiB: 0.375,
  globalWattsPerGiB: 1,
  memoryHitJoules: 2e-5,
  globalHitJoules: 2e-3,
  defaultComputeMs: 1,
};

const GIB = 1024 ** 3;

export interface CostBreakdown {
  compute: number;
  memoryStorage: number;
  globalStorage: number;
  serving: number;
  total: number;
}

export interface CostInputs {
  computeMs: number;
  memoryByteHours: number;
  globalByteHours: number;
  memoryHits: number;
  globalHits: number;
}

export function price(x: CostInputs, p: CostPrices): CostBreakdown {
  const compute = (x.computeMs * p.computeWatts) / 1000;
  const memoryStorage = (x.memoryByteHours / GIB) * p.memoryWattsPerGiB * 3600;
  const globalStorage = (x.globalByteHours / GIB) * p.globalWattsPerGiB * 3600;
  const serving = x.memoryHits * p.memoryHitJoules + x.globalHits * p.globalHitJoules;
  return { compute, memoryStorage, globalStorage, serving, total: compute + memoryStorage + globalStorage + serving };
}

const PRICE_KEYS: Record<string, keyof CostPrices> = {
  compute: 'computeWatts',
  memory: 'memoryWattsPerGiB',
  global: 'globalWattsPerGiB',
  memhit: 'memoryHitJoules',
  globalhit: 'globalHitJoules',
  defaultms: 'defaultComputeMs',
};

/** Parses `compute=15,memory=0.375,global=1,memhit=2e-5,globalhit=2e-3,defaultms=1` over a base. */
export function parsePrices(spec: string, base: CostPrices = DEFAULT_PRICES): CostPrices {
  const out = { ...base };
  for (const part of spec
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const [k, v] = part.split('=');
    const key = PRICE_KEYS[(k ?? '').trim().toLowerCase()];
    const n = Number(v);
    if (!key || !Number.isFinite(n) || n < 0) throw new TypeError(`--prices: "${part}" is not one of ${Object.keys(PRICE_KEYS).join(', ')} = a number >= 0`);
    out[key] = n;
  }
  return out;
}
