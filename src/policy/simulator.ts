/**
 * The cache simulator: replays a trace through the two-tier cache for many settings at once and prices
 * each with the cost model (`cost.ts`).
 *
 * Tiers, exactly as the service runs them (`src/cache/tiered.ts`, `memory.ts`, `redis.ts`):
 *   lookup(key) at time t:
 *     memory: LRU bounded in bytes (entry bytes from `sizes.ts`). An entry older than the memory TTL
 *             (age > ttl, lru-cache's rule) is deleted when read and counts as a miss; it is not
 *             purged otherwise, so it keeps its bytes until the LRU evicts it. A hit makes it most
 *             recently used (its TTL is not renewed).
 *     global: a hit while age ≤ TTL (Redis expires a key once now > set + ttl); a global hit back-fills
 *             memory (`set`, which renews the memory entry's age). No global tier: `globalTtlMs: null`.
 *     miss:   computed, then written to memory and (if there is one) global.
 *   `set` of a new entry links it as most recently used, then evicts least recently used entries until
 *   it fits; an entry larger than the whole memory tier is not stored (lru-cache's maxEntrySize).
 *
 * One pass over the trace drives every setting, each with its own state in typed arrays indexed by an
 * interned key id (about 25 bytes per distinct key per setting), so a grid of ~100 settings replays a
 * million records in seconds.
 *
 * Sampling: a trace sampled by key hash at rate r holds a fraction r of the keys with their complete
 * reuse pattern, so it behaves like the full stream in a cache r times as large: the memory tier is
 * simulated at memoryBytes × r, and every count, byte-hour and joule is scaled by 1/r. Hit rates need no
 * scaling. (The global tier is bounded by TTL only, so it needs no size scaling.)
 *
 * Length: one dense concept; the replay loop, its model of the tiers and its pricing change together.
 */
import { price, type CostBreakdown, type CostPrices } from './cost.ts';
import { globalEntryBytes, memoryEntryBytes } from './sizes.ts';
import type { TraceRecord } from './trace.ts';
import type { Source } from '../service/types.ts';

export interface SimSetting {
  /** Memory tier size in bytes, as configured for the full (unsampled) stream. */
  memoryBytes: number;
  /** Memory tier TTL in ms; 0 = no expiry. */
  memoryTtlMs: number;
  /** Global tier TTL in ms; null = no global tier. */
  globalTtlMs: number | null;
}

export interface SimResult {
  setting: SimSetting;
  /** Items looked up (scaled to the full stream). */
  items: number;
  memoryHits: number;
  globalHits: number;
  computes: number;
  memoryHitRate: number;
  globalHitRate: number;
  computeRate: number;
  /** Inference ms spent on computes (scaled). */
  computeMs: number;
  memoryByteHours: number;
  globalByteHours: number;
  cost: CostBreakdown;
  /** cost.total per hour of trace time. */
  costPerHour: number;
}

export interface TraceSummary {
  records: number;
  /** Items (records weighted by their `n`), unscaled. */
  items: number;
  distinctKeys: number;
  sampleRate: number;
  firstT: number;
  lastT: number;
  spanMs: number;
  /** Item shares by the tier that really answered, as recorded in the trace. */
  measured: Record<Source, number>;
  models: string[];
  /** Records whose time went backwards (replayed at the previous time). */
  reordered: number;
}

export interface SimReport {
  trace: TraceSummary;
  results: SimResult[];
}

export interface SimulatorOptions {
  settings: SimSetting[];
  prices: CostPrices;
  /** Sample rate of the trace; default: the `r` of its first record. */
  sampleRate?: number;
  /** Encoding of the global tier (its entry size). Default float32. */
  globalEncoding?: 'float32' | 'float16';
  /** Redis key prefix length (its entry size). Default 11 (`polyray:v1:`). */
  globalKeyPrefixLength?: number;
}

const NONE = -1;

/**
 * The state of every setting that shares one memory size.
 *
 * Why settings can share: the LRU order and the set of entries held do not depend on the TTLs. A hit
 * moves an entry to the tail; a stale read deletes it and the back-fill or compute right after puts it
 * back at the tail, freeing and taking the same bytes, so nothing else is evicted — the same end state
 * as a hit. So one LRU per memory size serves all its TTLs; what the TTL changes is only whether a read
 * is a hit, and when the entry was last set (`memAt`, per memory TTL). A memory miss then consults the
 * global tier of each global TTL (`gAt`, per memory TTL × global TTL). Arrays are key-major, so one
 * record touches a few contiguous cache lines per memory size.
 */
class SizeGroup {
  readonly memMax: number;
  /** Memory TTLs of this size (ms, 0 = none). */
  readonly ttls: Float64Array;
  /** Global slot range of each memory TTL: [gStart[i], gStart[i + 1]). */
  readonly gStart: Int32Array;
  /** Global TTL of each slot (ms; -1 = no global tier). */
  readonly gTtl: Float64Array;
  readonly hasGlobal: boolean;
  prev = new Int32Array(0);
  next = new Int32Array(0);
  inMem = new Uint8Array(0);
  memAt = new Float64Array(0);
  gAt = new Float64Array(0);
  head = NONE;
  tail = NONE;
  memUsed = 0;
  memByteMs = 0;
  lastT = NaN;
  items = 0;
  readonly memHits: Float64Array;
  readonly gHits: Float64Array;
  readonly computes: Float64Array;
  readonly computeMs: Float64Array;
  readonly gByteMs: Float64Array;
  /** Memory entry bytes per key id (shared with the simulator, replaced when it grows). */
  sizes: Int32Array;

  constructor(memMax: number, ttls: number[], gttls: (number | null)[][], sizes: Int32Array) {
    this.memMax = memMax;
    this.ttls = Float64Array.from(ttls);
    this.gStart = new Int32Array(ttls.length + 1);
    const flat: number[] = [];
    gttls.forEach((g, i) => {
      this.gStart[i] = flat.length;
      for (const x of g) flat.push(x === null ? -1 : x);
    });
    this.gStart[ttls.length] = flat.length;
    this.gTtl = Float64Array.from(flat);
    this.hasGlobal = flat.some((x) => x > 0);
    this.memHits = new Float64Array(ttls.length);
    this.gHits = new Float64Array(flat.length);
    this.computes = new Float64Array(flat.length);
    this.computeMs = new Float64Array(flat.length);
    this.gByteMs = new Float64Array(flat.length);
    this.sizes = sizes;
  }

  grow(cap: number): void {
    const T = this.ttls.length;
    const C = this.gTtl.length;
    const i32 = (a: Int32Array) => {
      const b = new Int32Array(cap);
      b.set(a);
      return b;
    };
    this.prev = i32(this.prev);
    this.next = i32(this.next);
    const inMem = new Uint8Array(cap);
    inMem.set(this.inMem);
    this.inMem = inMem;
    const memAt = new Float64Array(cap * T);
    memAt.set(this.memAt);
    this.memAt = memAt;
    if (this.hasGlobal) {
      const gAt = new Float64Array(cap * C);
      gAt.fill(-Infinity, this.gAt.length);
      gAt.set(this.gAt);
      this.gAt = gAt;
    }
  }

  access(k: number, t: number, n: number, ms: number, gSize: number): void {
    if (!Number.isNaN(this.lastT)) this.memByteMs += this.memUsed * (t - this.lastT);
    this.lastT = t;
    this.items += n;
    const present = this.inMem[k] === 1;
    const size = this.sizes[k]!;
    const stored = present || size <= this.memMax;
    if (present) this.#toTail(k);
    else if (stored) this.#insert(k, size);
    const T = this.ttls.length;
    const C = this.gTtl.length;
    const mBase = k * T;
    const gBase = k * C;
    for (let ti = 0; ti < T; ti++) {
      const ttl = this.ttls[ti]!;
      if (present && (ttl === 0 || t - this.memAt[mBase + ti]! <= ttl)) {
        this.memHits[ti] = this.memHits[ti]! + n;
        continue;
      }
      if (stored) this.memAt[mBase + ti] = t;
      const end = this.gStart[ti + 1]!;
      for (let slot = this.gStart[ti]!; slot < end; slot++) {
        const gt = this.gTtl[slot]!;
        if (gt > 0) {
          if (t - this.gAt[gBase + slot]! <= gt) {
            this.gHits[slot] = this.gHits[slot]! + n;
            continue;
          }
          this.gAt[gBase + slot] = t;
          this.gByteMs[slot] = this.gByteMs[slot]! + gSize * gt;
        }
        this.computes[slot] = this.computes[slot]! + n;
        this.computeMs[slot] = this.computeMs[slot]! + ms;
      }
    }
  }

  /** Closes the books at `end`: global entries still alive are charged only up to it. */
  finish(end: number, gSize: Int32Array, keys: number): void {
    if (!Number.isNaN(this.lastT) && end > this.lastT) this.memByteMs += this.memUsed * (end - this.lastT);
    if (!this.hasGlobal) return;
    const C = this.gTtl.length;
    for (let slot = 0; slot < C; slot++) {
      const gt = this.gTtl[slot]!;
      if (gt <= 0) continue;
      for (let k = 0; k < keys; k++) {
        const over = this.gAt[k * C + slot]! + gt - end;
        if (over > 0) this.gByteMs[slot] = this.gByteMs[slot]! - gSize[k]! * Math.min(over, gt);
      }
    }
  }

  /** Links a new entry as most recently used, then evicts from the head until it fits (lru-cache #addItemSize). */
  #insert(k: number, size: number): void {
    this.inMem[k] = 1;
    this.prev[k] = this.tail;
    this.next[k] = NONE;
    if (this.tail !== NONE) this.next[this.tail] = k;
    else this.head = k;
    this.tail = k;
    const limit = this.memMax - size;
    while (this.memUsed > limit && this.head !== k) this.#evictHead();
    this.memUsed += size;
  }

  #evictHead(): void {
    const h = this.head;
    const nx = this.next[h]!;
    this.head = nx;
    if (nx !== NONE) this.prev[nx] = NONE;
    else this.tail = NONE;
    this.inMem[h] = 0;
    this.memUsed -= this.sizes[h]!;
  }

  #toTail(k: number): void {
    if (this.tail === k) return;
    const p = this.prev[k]!;
    const nx = this.next[k]!;
    if (p !== NONE) this.next[p] = nx;
    else this.head = nx;
    this.prev[nx] = p; // nx exists: k is not the tail
    this.prev[k] = this.tail;
    this.next[k] = NONE;
    this.next[this.tail] = k;
    this.tail = k;
  }
}

/** Where one setting's figures live: its size group, memory-TTL index and global slot. */
interface SettingRef {
  setting: SimSetting;
  group: SizeGroup;
  ti: number;
  slot: number;
}

function buildGroups(settings: SimSetting[], scale: number, sizes: Int32Array): { groups: SizeGroup[]; refs: SettingRef[] } {
  const bySize = new Map<number, Map<number, (number | null)[]>>();
  for (const s of settings) {
    let byTtl = bySize.get(s.memoryBytes);
    if (!byTtl) {
      byTtl = new Map();
      bySize.set(s.memoryBytes, byTtl);
    }
    let g = byTtl.get(s.memoryTtlMs);
    if (!g) {
      g = [];
      byTtl.set(s.memoryTtlMs, g);
    }
    if (!g.includes(s.globalTtlMs)) g.push(s.globalTtlMs);
  }
  const groups: SizeGroup[] = [];
  const index = new Map<number, SizeGroup>();
  for (const [mem, byTtl] of bySize) {
    const g = new SizeGroup(mem * scale, [...byTtl.keys()], [...byTtl.values()], sizes);
    groups.push(g);
    index.set(mem, g);
  }
  const refs = settings.map((s): SettingRef => {
    const group = index.get(s.memoryBytes)!;
    const ttls = [...bySize.get(s.memoryBytes)!.keys()];
    const ti = ttls.indexOf(s.memoryTtlMs);
    const slot = group.gStart[ti]! + bySize.get(s.memoryBytes)!.get(s.memoryTtlMs)!.indexOf(s.globalTtlMs);
    return { setting: s, group, ti, slot };
  });
  return { groups, refs };
}

export class Simulator {
  readonly #o: Required<Omit<SimulatorOptions, 'sampleRate'>> & { sampleRate: number | undefined };
  #groups: SizeGroup[] = [];
  #refs: SettingRef[] = [];
  readonly #ids = new Map<string, number>();
  #cap = 0;
  #memSize = new Int32Array(0);
  #gSize = new Int32Array(0);
  #msOf = new Float64Array(0);
  #modelOf = new Uint16Array(0);
  readonly #models: string[] = [];
  readonly #modelIdx = new Map<string, number>();
  readonly #modelMs: { sum: number; count: number }[] = [];
  #records = 0;
  #items = 0;
  #firstT = NaN;
  #lastT = NaN;
  #reordered = 0;
  readonly #measured: Record<Source, number> = { MEMORY: 0, GLOBAL: 0, COMPUTED: 0 };
  #rate: number | undefined;

  constructor(options: SimulatorOptions) {
    if (options.settings.length === 0) throw new TypeError('Simulator needs at least one setting');
    this.#o = { globalEncoding: 'float32', globalKeyPrefixLength: 11, ...options, sampleRate: options.sampleRate };
    this.#rate = options.sampleRate;
  }

  get sampleRate(): number {
    return this.#rate ?? 1;
  }

  /** Replays one record in every setting. Records are expected in time order. */
  add(rec: TraceRecord): void {
    if (this.#rate === undefined) this.#rate = rec.r;
    if (this.#refs.length === 0) this.#build();
    let k = this.#ids.get(rec.k);
    let m = this.#modelIdx.get(rec.m);
    if (m === undefined) {
      m = this.#models.length;
      this.#models.push(rec.m);
      this.#modelIdx.set(rec.m, m);
      this.#modelMs.push({ sum: 0, count: 0 });
    }
    if (k === undefined) {
      k = this.#ids.size;
      this.#ids.set(rec.k, k);
      if (k >= this.#cap) this.#grow(Math.max(1024, this.#cap * 2));
      this.#memSize[k] = memoryEntryBytes(rec.b, rec.kl);
      this.#gSize[k] = globalEntryBytes(rec.b, rec.kl, this.#o.globalEncoding, this.#o.globalKeyPrefixLength);
      this.#msOf[k] = NaN;
      this.#modelOf[k] = m;
    }
    const n = rec.n ?? 1;
    let t = rec.t;
    if (this.#records === 0) this.#firstT = t;
    else if (t < this.#lastT) {
      t = this.#lastT;
      this.#reordered++;
    }
    this.#lastT = t;
    this.#records++;
    this.#items += n;
    this.#measured[rec.src] += n;
    if (rec.src === 'COMPUTED' && rec.ms > 0) {
      this.#msOf[k] = rec.ms;
      const mm = this.#modelMs[m]!;
      mm.sum += rec.ms;
      mm.count++;
    }
    let ms = this.#msOf[k]!;
    if (Number.isNaN(ms)) {
      const mm = this.#modelMs[this.#modelOf[k]!]!;
      ms = mm.count > 0 ? mm.sum / mm.count : this.#o.prices.defaultComputeMs;
    }
    const gSize = this.#gSize[k]!;
    const groups = this.#groups;
    for (let i = 0; i < groups.length; i++) groups[i]!.access(k, t, n, ms, gSize);
  }

  #build(): void {
    const { groups, refs } = buildGroups(this.#o.settings, this.sampleRate, this.#memSize);
    this.#groups = groups;
    this.#refs = refs;
    for (const g of groups) g.grow(this.#cap);
  }

  #grow(cap: number): void {
    const grow32 = (a: Int32Array) => {
      const b = new Int32Array(cap);
      b.set(a);
      return b;
    };
    this.#memSize = grow32(this.#memSize);
    this.#gSize = grow32(this.#gSize);
    const ms = new Float64Array(cap);
    ms.set(this.#msOf);
    this.#msOf = ms;
    const mo = new Uint16Array(cap);
    mo.set(this.#modelOf);
    this.#modelOf = mo;
    for (const g of this.#groups) {
      g.grow(cap);
      g.sizes = this.#memSize;
    }
    this.#cap = cap;
  }

  summary(): TraceSummary {
    const items = this.#items;
    const share = (x: number) => (items > 0 ? x / items : 0);
    return {
      records: this.#records,
      items,
      distinctKeys: this.#ids.size,
      sampleRate: this.sampleRate,
      firstT: this.#firstT,
      lastT: this.#lastT,
      spanMs: this.#records > 0 ? this.#lastT - this.#firstT : 0,
      measured: { MEMORY: share(this.#measured.MEMORY), GLOBAL: share(this.#measured.GLOBAL), COMPUTED: share(this.#measured.COMPUTED) },
      models: [...this.#models],
      reordered: this.#reordered,
    };
  }

  /** Results of every setting, in the order the settings were given. */
  finish(): SimReport {
    const trace = this.summary();
    if (this.#refs.length === 0) this.#build();
    const scale = 1 / this.sampleRate;
    const hours = trace.spanMs / 3_600_000;
    for (const g of this.#groups) g.finish(this.#lastT, this.#gSize, this.#ids.size);
    const results = this.#refs.map(({ setting, group: g, ti, slot }): SimResult => {
      const items = g.items * scale;
      const memoryHits = g.memHits[ti]! * scale;
      const globalHits = g.gHits[slot]! * scale;
      const computes = g.computes[slot]! * scale;
      const computeMs = g.computeMs[slot]! * scale;
      const memoryByteHours = (g.memByteMs / 3_600_000) * scale;
      const globalByteHours = (g.gByteMs[slot]! / 3_600_000) * scale;
      const cost = price({ computeMs, memoryByteHours, globalByteHours, memoryHits, globalHits }, this.#o.prices);
      const rate = (x: number) => (items > 0 ? x / items : 0);
      return {
        setting,
        items,
        memoryHits,
        globalHits,
        computes,
        memoryHitRate: rate(memoryHits),
        globalHitRate: rate(globalHits),
        computeRate: rate(computes),
        computeMs,
        memoryByteHours,
        globalByteHours,
        cost,
        costPerHour: hours > 0 ? cost.total / hours : cost.total,
      };
    });
    return { trace, results };
  }
}

/** Replays an async stream of records, yielding to the event loop every `yieldEvery` records. */
export async function simulateStream(
  records: AsyncIterable<TraceRecord> | Iterable<TraceRecord>,
  options: SimulatorOptions & { yieldEvery?: number },
): Promise<SimReport> {
  const sim = new Simulator(options);
  const every = options.yieldEvery ?? 0;
  let i = 0;
  for await (const r of records) {
    sim.add(r);
    if (every > 0 && ++i % every === 0) await new Promise<void>((res) => setImmediate(res));
  }
  return sim.finish();
}
