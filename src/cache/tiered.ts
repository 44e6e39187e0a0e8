/**
 * Tiered read-through: memory → global (→ …). The first tier that has a key answers it; tiers above it
 * are back-filled. Writes go to every tier (slow tiers queue them off the request path themselves).
 *
 * A tier that fails returns misses (see the `Cache` contract), so a broken global tier turns into
 * computes, never into client errors.
 */
import { inSpan, tracing } from '../telemetry/tracing.ts';
import type { Cache, CacheEntry, TierStats } from './cache.ts';

export interface TieredHit {
  value: Float32Array;
  /** Name of the tier that answered ("memory", "global", ...). */
  tier: string;
}

export class TieredCache {
  readonly #tiers: readonly Cache[];

  constructor(tiers: readonly Cache[]) {
    if (tiers.length === 0) throw new TypeError('TieredCache needs at least one tier, received an empty list');
    this.#tiers = tiers;
  }

  get tierNames(): string[] {
    return this.#tiers.map((t) => t.name);
  }

  /** One read per tier for all keys still missing after the tiers above it. */
  async lookup(keys: readonly string[]): Promise<(TieredHit | undefined)[]> {
    const out: (TieredHit | undefined)[] = new Array(keys.length).fill(undefined);
    let missing = keys.map((_, i) => i);
    for (let t = 0; t < this.#tiers.length && missing.length > 0; t++) {
      const tier = this.#tiers[t]!;
      const asked = missing.map((i) => keys[i]!);
      const values = tracing.on
        ? await inSpan('polyray.cache.read', { 'polyray.cache.tier': tier.name, 'polyray.keys': asked.length }, async (span) => {
            const v = await tier.getMany(asked);
            span?.setAttribute('polyray.hits', v.filter(Boolean).length);
            return v;
          })
        : await tier.getMany(asked);
      const stillMissing: number[] = [];
      const backfill: CacheEntry[] = [];
      missing.forEach((idx, j) => {
        const v = values[j];
        if (v) {
          out[idx] = { value: v, tier: tier.name };
          if (t > 0) backfill.push({ key: keys[idx]!, value: v });
        } else {
          stillMissing.push(idx);
        }
      });
      if (backfill.length > 0) {
        // Only the tiers above the one that answered need the value.
        await Promise.all(this.#tiers.slice(0, t).map((upper) => upper.setMany(backfill)));
      }
      missing = stillMissing;
    }
    return out;
  }

  async store(entries: readonly CacheEntry[]): Promise<void> {
    if (entries.length === 0) return;
    await Promise.all(this.#tiers.map((t) => t.setMany(entries)));
  }

  /** Waits for write-behind tiers to persist what they have accepted. */
  async flush(): Promise<void> {
    await Promise.all(this.#tiers.map((t) => t.flush?.()));
  }

  stats(): TierStats[] {
    return this.#tiers.map((t) => t.stats());
  }

  /** Reports every tier read's latency (ms) with the tier's name (the tier-read histogram). */
  observeReads(observer: (tier: string, ms: number) => void): void {
    for (const t of this.#tiers) {
      const tier = t.stats().tier;
      t.onRead?.((ms) => observer(tier, ms));
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.#tiers.map((t) => t.close()));
  }
}
