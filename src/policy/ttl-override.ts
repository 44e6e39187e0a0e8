/**
 * A cache tier wrapper whose TTL for new entries can change at run time (the policy's auto-apply).
 *
 * `setMany` gives entries without their own `ttlMs` the override, when one is set; everything else is
 * passed through. Entries already stored keep the TTL they were written with.
 */
import type { Cache, CacheEntry, TierStats } from '../cache/cache.ts';

export class TtlOverrideCache implements Cache {
  readonly name: string;
  /** TTL in ms for new entries; undefined = the tier's own default. */
  ttlMs: number | undefined;

  constructor(readonly inner: Cache) {
    this.name = inner.name;
  }

  getMany(keys: readonly string[]): Promise<(Float32Array | undefined)[]> {
    return this.inner.getMany(keys);
  }

  setMany(entries: readonly CacheEntry[]): Promise<void> {
    const ttl = this.ttlMs;
    if (ttl === undefined) return this.inner.setMany(entries);
    return this.inner.setMany(entries.map((e) => (e.ttlMs === undefined ? { ...e, ttlMs: ttl } : e)));
  }

  stats(): TierStats {
    return this.inner.stats();
  }

  onRead(observer: (ms: number) => void): void {
    this.inner.onRead?.(observer);
  }

  async flush(): Promise<void> {
    await this.inner.flush?.();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
