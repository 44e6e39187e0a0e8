/**
 * Which keys the trace keeps, and at what rate each record stands for the stream.
 *
 * Two rules, measured to be needed together (docs/CACHE-POLICY.md §1, `npm run bench:sim`):
 *
 * - **Hash sampling** (SHARDS, Waldspurger et al., FAST '15): a key is kept iff `hash / 2^53 < rate`, so a
 *   kept key's reuse pattern is complete and the sample is the same on every replica. Its records stand
 *   for `1 / rate` keys like it.
 * - **Heavy keys at rate 1.** Under skew (Zipf) a handful of keys carry a large share of the lookups;
 *   whether they happen to fall in a hash sample swung a rate-0.1 prediction by ~10 points. A small
 *   Count-Min sketch of recent lookups marks a key heavy once its estimated count reaches `heavyShare` of
 *   all recent lookups (and at least `heavyMinCount`); a heavy key is traced whatever its hash, at rate 1,
 *   i.e. it stands only for itself. The decision does not look at the sample, so each record, weighted by
 *   `1 / its rate`, still counts the stream without bias (Horvitz–Thompson).
 *
 * Heavy keys keep their status until their estimate falls below half the threshold (hysteresis: a key
 * near the threshold does not flap between rates). Memory is fixed: the sketch (2 rows × `width` 32-bit
 * counters, 256 KiB by default) and a set of at most `heavyMaxKeys` heavy hashes. The sketch halves every
 * `halfLifeLookups` lookups so that "heavy" means heavy lately.
 */

/** Options of a `Sampler`; defaults in `DEFAULT_SAMPLER`. */
export interface SamplerOptions {
  /** Fraction of keys sampled by hash, 0..1. */
  rate: number;
  /** Share of recent lookups at which a key is traced at rate 1. 0 = never (plain hash sampling). Default 0.0003. */
  heavyShare?: number;
  /** Fewest estimated lookups for a heavy key (so that the first lookups of a process do not all count as heavy). Default 8. */
  heavyMinCount?: number;
  /** Most keys traced at rate 1 at once. Default 4096. */
  heavyMaxKeys?: number;
  /** Lookups after which the sketch's counts are halved. Default 1,048,576. */
  halfLifeLookups?: number;
  /**
   * Counters per sketch row, a power of two. Default 32,768: a row's noise is about lookups / width, and the
   * threshold (heavyShare × lookups) must stand well above it: 0.0003 × 32,768 ≈ 10×.
   */
  sketchWidth?: number;
}

export const DEFAULT_SAMPLER: Required<Omit<SamplerOptions, 'rate'>> = {
  heavyShare: 0.0003,
  heavyMinCount: 8,
  heavyMaxKeys: 4096,
  halfLifeLookups: 1 << 20,
  sketchWidth: 32_768,
};

const TWO_32 = 2 ** 32;
const TWO_53 = 2 ** 53;

export class Sampler {
  readonly rate: number;
  readonly #o: Required<Omit<SamplerOptions, 'rate'>>;
  readonly #rows: [Uint32Array, Uint32Array];
  readonly #mask: number;
  readonly #heavy = new Set<number>();
  #total = 0;
  #sinceHalving = 0;

  constructor(options: SamplerOptions) {
    const o = { ...DEFAULT_SAMPLER, ...options };
    if (!(o.rate >= 0 && o.rate <= 1)) throw new TypeError(`Sampler rate must be in [0, 1], received ${o.rate}`);
    if (!(o.heavyShare >= 0 && o.heavyShare < 1)) throw new TypeError(`Sampler heavyShare must be in [0, 1), received ${o.heavyShare}`);
    if (!Number.isSafeInteger(o.sketchWidth) || o.sketchWidth < 16 || (o.sketchWidth & (o.sketchWidth - 1)) !== 0)
      throw new TypeError(`Sampler sketchWidth must be a power of two >= 16, received ${o.sketchWidth}`);
    if (!Number.isSafeInteger(o.heavyMaxKeys) || o.heavyMaxKeys < 0)
      throw new TypeError(`Sampler heavyMaxKeys must be an integer >= 0, received ${o.heavyMaxKeys}`);
    if (!(o.halfLifeLookups >= 1)) throw new TypeError(`Sampler halfLifeLookups must be >= 1, received ${o.halfLifeLookups}`);
    this.rate = o.rate;
    this.#o = o;
    this.#rows = [new Uint32Array(o.sketchWidth), new Uint32Array(o.sketchWidth)];
    this.#mask = o.sketchWidth - 1;
  }

  /** Keys traced at rate 1 now. */
  get heavyKeys(): number {
    return this.#heavy.size;
  }

  /**
   * Counts `n` lookups of the key with 53-bit hash `h` and says at what rate its record is kept:
   * 0 = not traced, 1 = traced as itself (heavy, or rate 1), else the hash-sample rate.
   */
  decide(h: number, n = 1): number {
    const rate = this.rate;
    if (rate >= 1) return 1;
    if (rate <= 0) return 0;
    const sampled = h / TWO_53 < rate;
    if (this.#o.heavyShare <= 0) return sampled ? rate : 0;
    const est = this.#count(h, n);
    const threshold = Math.max(this.#o.heavyMinCount, this.#o.heavyShare * this.#total);
    if (this.#heavy.has(h)) {
      if (est >= threshold / 2) return 1;
      this.#heavy.delete(h);
    } else if (est >= threshold && this.#heavy.size < this.#o.heavyMaxKeys) {
      this.#heavy.add(h);
      return 1;
    }
    return sampled ? rate : 0;
  }

  #index(h: number): [number, number] {
    const lo = h >>> 0;
    const hi = Math.floor(h / TWO_32);
    // The second row's index mixes the high bits, so the rows' collisions are independent.
    return [lo & this.#mask, (Math.imul(hi ^ (lo >>> 16), 0x9e3779b1) >>> 7) & this.#mask];
  }

  /** Conservative update of a 2-row Count-Min sketch; returns the key's estimate after it. */
  #count(h: number, n: number): number {
    const [i0, i1] = this.#index(h);
    const [r0, r1] = this.#rows;
    const est = Math.min(r0[i0]!, r1[i1]!) + n;
    if (r0[i0]! < est) r0[i0] = est;
    if (r1[i1]! < est) r1[i1] = est;
    this.#total += n;
    this.#sinceHalving += n;
    if (this.#sinceHalving >= this.#o.halfLifeLookups) this.#halve();
    return est;
  }

  #halve(): void {
    for (const row of this.#rows) for (let i = 0; i < row.length; i++) row[i] = row[i]! >>> 1;
    this.#total /= 2;
    this.#sinceHalving = 0;
    // Heavy keys no longer looked up would otherwise hold their place until seen again.
    const half = Math.max(this.#o.heavyMinCount, this.#o.heavyShare * this.#total) / 2;
    const [r0, r1] = this.#rows;
    for (const h of this.#heavy) {
      const [i0, i1] = this.#index(h);
      if (Math.min(r0[i0]!, r1[i1]!) < half) this.#heavy.delete(h);
    }
  }
}
