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
 * Sampling: a record sampled at rate r (its `r`) stands for 1/r keys like it, each with its complete reuse
 * pattern (sampling is by key hash). So the key is replayed with weight w = 1/r: it takes w × its entry
 * bytes in the memory tier (simulated at its full size) and every lookup counts w items. With one rate for
 * the whole trace this is SHARDS' "a cache r times as large, counts × 1/r"; with heavy keys traced at rate
 * 1 (sampler.ts) each key carries its own weight. A key whose rate changes (it became heavy, or stopped
 * being) is resized in place. The global tier is bounded by TTL only, so it needs no size scaling.
 *
 * Length: one dense concept; the replay loop, its model of the tiers and its pricing change together.
 */
import { grown } from '../typed-arrays.ts';
import { price, type CostBreakdown, type CostPrices } from './cost.ts';
import { globalEntryBytes, memoryEntryBytes } from './sizes.ts';
import { TRACE_SOURCES, type TraceRecord, type TraceSource } from './trace.ts';

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
  /** The smallest rate of the trace (the hash-sample rate; heavy keys are at rate 1). */
  sampleRate: number;
  /** Share of the (weighted) items from records at rate 1 when the sample rate is below 1: the heavy keys. */
  exactShare: number;
  firstT: number;
  lastT: number;
  spanMs: number;
  /** Item shares by the tier that really answered, as recorded in the trace, each record weighted by 1/r. */
  measured: Record<TraceSource, number>;
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
  /** Treat every record as sampled at this rate, whatever its `r` (a synthetic trace: 1). Default: each record's `r`. */
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
  /** Weighted memory entry bytes per key id (shared with the simulator, replaced when it grows). */
  sizes: Float64Array;

  constructor(memMax: number, ttls: number[], gttls: (number | null)[][], sizes: Float64Array) {
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
    this.prev = grown(this.prev, cap);
    this.next = grown(this.next, cap);
    this.inMem = grown(this.inMem, cap);
    this.memAt = grown(this.memAt, cap * T);
    if (this.hasGlobal) {
      const gAt = new Float64Array(cap * C);
      gAt.fill(-Infinity, this.gAt.length);
      gAt.set(this.gAt);
      this.gAt = gAt;
    }
  }

  /**
   * One lookup of key `k` at `t` by `n` inputs of one call, each standing for `w` items (1 / its sample
   * rate); `ms` of inference if computed. The first input meets the tiers; the other n − 1 are answered by
   * its lookup and count as memory hits (the trace counts them as JOINED: measured and simulated alike).
   */
  access(k: number, t: number, n: number, ms: number, gSize: number, w: number): void {
    if (!Number.isNaN(this.lastT)) this.memByteMs += this.memUsed * (t - this.lastT);
    this.lastT = t;
    const items = w;
    this.items += n * w;
    const present = this.inMem[k] === 1;
    const size = this.sizes[k]!;
    const stored = present || size <= this.memMax;
    if (present) {
      this.#toTail(k);
      // The key grew (its rate fell): evict as a set of the larger entry would.
      while (this.memUsed > this.memMax && this.head !== k) this.#evictHead();
    } else if (stored) this.#insert(k, size);
    const T = this.ttls.length;
    const C = this.gTtl.length;
    const mBase = k * T;
    const gBase = k * C;
    for (let ti = 0; ti < T; ti++) {
      const ttl = this.ttls[ti]!;
      if (present && (ttl === 0 || t - this.memAt[mBase + ti]! <= ttl)) {
        this.memHits[ti] = this.memHits[ti]! + items;
        continue;
      }
      if (stored) this.memAt[mBase + ti] = t;
      const end = this.gStart[ti + 1]!;
      for (let slot = this.gStart[ti]!; slot < end; slot++) {
        const gt = this.gTtl[slot]!;
        if (gt > 0) {
          if (t - this.gAt[gBase + slot]! <= gt) {
            this.gHits[slot] = this.gHits[slot]! + items;
            continue;
          }
          this.gAt[gBase + slot] = t;
          this.gByteMs[slot] = this.gByteMs[slot]! + gSize * gt * w;
        }
        this.computes[slot] = this.computes[slot]! + items;
        this.computeMs[slot] = this.computeMs[slot]! + ms * w;
      }
    }
    if (n > 1) for (let ti = 0; ti < T; ti++) this.memHits[ti] = this.memHits[ti]! + (n - 1) * w;
  }

  /**
   * A write without a lookup: an entry stored beside a computed one (an image's feature beside its
   * embedding). Every tier stores it: memory links it as most recently used with a fresh age, the global
   * tier restarts its TTL.
   */
  fill(k: number, t: number, gSize: number, w: number): void {
    if (!Number.isNaN(this.lastT)) this.memByteMs += this.memUsed * (t - this.lastT);
    this.lastT = t;
    const size = this.sizes[k]!;
    if (this.inMem[k] === 1) {
      this.#toTail(k);
      while (this.memUsed > this.memMax && this.head !== k) this.#evictHead();
    } else if (size <= this.memMax) this.#insert(k, size);
    else return;
    const T = this.ttls.length;
    const C = this.gTtl.length;
    for (let ti = 0; ti < T; ti++) this.memAt[k * T + ti] = t;
    if (!this.hasGlobal) return;
    for (let slot = 0; slot < C; slot++) {
      const gt = this.gTtl[slot]!;
      if (gt <= 0) continue;
      this.gAt[k * C + slot] = t;
      this.gByteMs[slot] = this.gByteMs[slot]! + gSize * gt * w;
    }
  }

  /** A present key's weighted size changed from `from` to `to` bytes. */
  resize(k: number, from: number, to: number): void {
    if (this.inMem[k] === 1) this.memUsed += to - from;
  }

  /** Closes the books at `end`: global entries still alive are charged only up to it (at the key's last weight). */
  finish(end: number, gSize: Int32Array, weight: Float64Array, keys: number): void {
    if (!Number.isNaN(this.lastT) && end > this.lastT) this.memByteMs += this.memUsed * (end - this.lastT);
    if (!this.hasGlobal) return;
    const C = this.gTtl.length;
    for (let slot = 0; slot < C; slot++) {
      const gt = this.gTtl[slot]!;
      if (gt <= 0) continue;
      for (let k = 0; k < keys; k++) {
        const over = this.gAt[k * C + slot]! + gt - end;
        if (over > 0) this.gByteMs[slot] = this.gByteMs[slot]! - gSize[k]! * weight[k]! * Math.min(over, gt);
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

function buildGroups(settings: SimSetting[], sizes: Float64Array): { groups: SizeGroup[]; refs: SettingRef[] } {
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
    const g = new SizeGroup(mem, [...byTtl.keys()], [...byTtl.values()], sizes);
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
  /** Entry bytes (unweighted), weighted bytes (× the key's weight), global bytes, weight, per key id. */
  #baseSize = new Int32Array(0);
  #memSize = new Float64Array(0);
  #gSize = new Int32Array(0);
  #weight = new Float64Array(0);
  #msOf = new Float64Array(0);
  #modelOf = new Uint16Array(0);
  readonly #models: string[] = [];
  readonly #modelIdx = new Map<string, number>();
  readonly #modelMs: { sum: number; count: number }[] = [];
  #records = 0;
  #items = 0;
  #weighted = 0;
  #exact = 0;
  #minRate = 1;
  #firstT = NaN;
  #lastT = NaN;
  #reordered = 0;
  readonly #measured: Record<TraceSource, number> = { MEMORY: 0, GLOBAL: 0, COMPUTED: 0, JOINED: 0 };

  constructor(options: SimulatorOptions) {
    if (options.settings.length === 0) throw new TypeError('Simulator needs at least one setting');
    if (options.sampleRate !== undefined && !(options.sampleRate > 0 && options.sampleRate <= 1))
      throw new TypeError(`Simulator sampleRate must be in (0, 1], received ${options.sampleRate}`);
    this.#o = { globalEncoding: 'float32', globalKeyPrefixLength: 11, ...options, sampleRate: options.sampleRate };
  }

  /** The smallest rate replayed so far (1 before any record). */
  get sampleRate(): number {
    return this.#o.sampleRate ?? this.#minRate;
  }

  /** Replays one record in every setting. Records are expected in time order. */
  add(rec: TraceRecord): void {
    if (this.#refs.length === 0) this.#build();
    const rate = this.#o.sampleRate ?? rec.r;
    const w = rate > 0 && rate < 1 ? 1 / rate : 1;
    if (rate < this.#minRate) this.#minRate = rate;
    let k = this.#ids.get(rec.k);
    let m = this.#modelIdx.get(rec.m);
    if (m === undefined) {
      m = this.#models.length;
      this.#models.push(rec.m);
      this.#modelIdx.set(rec.m, m);
      this.#modelMs.push({ sum: 0, count: 0 });
    }
    const isNew = k === undefined;
    if (k === undefined) {
      k = this.#ids.size;
      this.#ids.set(rec.k, k);
      if (k >= this.#cap) this.#grow(Math.max(1024, this.#cap * 2));
      this.#baseSize[k] = memoryEntryBytes(rec.b, rec.kl);
      this.#memSize[k] = this.#baseSize[k]! * w;
      this.#weight[k] = w;
      this.#gSize[k] = globalEntryBytes(rec.b, rec.kl, this.#o.globalEncoding, this.#o.globalKeyPrefixLength);
      this.#msOf[k] = NaN;
      this.#modelOf[k] = m;
    } else if (this.#weight[k] !== w) {
      const from = this.#memSize[k]!;
      const to = this.#baseSize[k]! * w;
      for (const g of this.#groups) g.resize(k, from, to);
      this.#memSize[k] = to;
      this.#weight[k] = w;
    }
    let t = rec.t;
    if (this.#records === 0) this.#firstT = t;
    else if (t < this.#lastT) {
      t = this.#lastT;
      this.#reordered++;
    }
    this.#lastT = t;
    this.#records++;
    const gSize = this.#gSize[k]!;
    const groups = this.#groups;
    if (rec.f === 1) {
      for (let i = 0; i < groups.length; i++) groups[i]!.fill(k, t, gSize, w);
      return;
    }
    // A key first seen above the trace's base rate was promoted (it became heavy) and its earlier lookups
    // were not traced: what the service measured says whether it had been cached. If it had, it is
    // warmed (stored) before this lookup, instead of replaying as a cold miss that never happened.
    if (isNew && rate > this.#minRate && rec.src !== 'COMPUTED') for (let i = 0; i < groups.length; i++) groups[i]!.fill(k, t, gSize, w);
    const n = rec.n ?? 1;
    this.#items += n;
    this.#weighted += n * w;
    if (w === 1) this.#exact += n;
    this.#measured[rec.src] += w;
    this.#measured.JOINED += (n - 1) * w;
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
    for (let i = 0; i < groups.length; i++) groups[i]!.access(k, t, n, ms, gSize, w);
  }

  #build(): void {
    const { groups, refs } = buildGroups(this.#o.settings, this.#memSize);
    this.#groups = groups;
    this.#refs = refs;
    for (const g of groups) g.grow(this.#cap);
  }

  #grow(cap: number): void {
    this.#baseSize = grown(this.#baseSize, cap);
    this.#memSize = grown(this.#memSize, cap);
    this.#gSize = grown(this.#gSize, cap);
    this.#weight = grown(this.#weight, cap);
    this.#msOf = grown(this.#msOf, cap);
    this.#modelOf = grown(this.#modelOf, cap);
    for (const g of this.#groups) {
      g.grow(cap);
      g.sizes = this.#memSize;
    }
    this.#cap = cap;
  }

  summary(): TraceSummary {
    const total = this.#weighted;
    const share = (x: number) => (total > 0 ? x / total : 0);
    const measured = {} as Record<TraceSource, number>;
    for (const s of TRACE_SOURCES) measured[s] = share(this.#measured[s]);
    return {
      records: this.#records,
      items: this.#items,
      distinctKeys: this.#ids.size,
      sampleRate: this.sampleRate,
      exactShare: this.sampleRate < 1 ? share(this.#exact) : 0,
      firstT: this.#firstT,
      lastT: this.#lastT,
      spanMs: this.#records > 0 ? this.#lastT - this.#firstT : 0,
      measured,
      models: [...this.#models],
      reordered: this.#reordered,
    };
  }

  /** Results of every setting, in the order the settings were given; counts and costs stand for the full stream. */
  finish(): SimReport {
    const trace = this.summary();
    if (this.#refs.length === 0) this.#build();
    const hours = trace.spanMs / 3_600_000;
    for (const g of this.#groups) g.finish(this.#lastT, this.#gSize, this.#weight, this.#ids.size);
    const results = this.#refs.map(({ setting, group: g, ti, slot }): SimResult => {
      const items = g.items;
      const memoryHits = g.memHits[ti]!;
      const globalHits = g.gHits[slot]!;
      const computes = g.computes[slot]!;
      const computeMs = g.computeMs[slot]!;
      const memoryByteHours = g.memByteMs / 3_600_000;
      const globalByteHours = g.gByteMs[slot]! / 3_600_000;
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
