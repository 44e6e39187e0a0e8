/**
 * The memory tier: a per-process LRU bounded in bytes, with a TTL.
 *
 * Small and fast, like MultiRay's per-host RAM cache. Vectors are stored as the Float32Array the caller
 * passes; callers must not mutate a vector after handing it to the cache or after reading it from it.
 */
import { LRUCache } from 'lru-cache';
import { emptyStats, type Cache, type CacheEntry, type TierStats } from './cache.ts';

export interface MemoryCacheOptions {
  /** Upper bound of the bytes held (vector bytes + an estimate of key overhead). Default 256 MiB. */
  maxBytes: number;
  /** Time to live of an entry in milliseconds; 0 means no expiry. Default 1 hour. */
  ttlMs: number;
  /** Clock in milliseconds, injected for tests. Default `performance.now`. */
  now?: () => number;
}

export const DEFAULT_MEMORY_CACHE_OPTIONS: MemoryCacheOptions = {
  maxBytes: 256 * 1024 * 1024,
  ttlMs: 60 * 60 * 1000,
};

/** Per-entry bookkeeping overhead assumed by the byte bound (key string, node, map slot). */
const ENTRY_OVERHEAD_BYTES = 96;

export class MemoryCache implements Cache {
  readonly name = 'memory';
  readonly #lru: LRUCache<string, Float32Array>;
  readonly #stats: TierStats = emptyStats('memory');

  constructor(options: Partial<MemoryCacheOptions> = {}) {
    const o = { ...DEFAULT_MEMORY_CACHE_OPTIONS, ...options };
    if (!Number.isSafeInteger(o.maxBytes) || o.maxBytes < 1024) {
      throw new TypeError(`MemoryCache option maxBytes must be an integer >= 1024, received ${String(o.maxBytes)}`);
    }
    if (!Number.isFinite(o.ttlMs) || o.ttlMs < 0) {
      throw new TypeError(`MemoryCache option ttlMs must be a number >= 0, received ${String(o.ttlMs)}`);
    }
    const now = o.now;
    this.#lru = new LRUCache<string, Float32Array>({
      maxSize: o.maxBytes,
      sizeCalculation: (v, k) => v.byteLength + k.length * 2 + ENTRY_OVERHEAD_BYTES,
      ...(o.ttlMs > 0 ? { ttl: o.ttlMs, ttlAutopurge: false } : {}),
      ...(now ? { perf: { now } } : {}),
    });
  }

  #onRead: ((ms: number) => void) | undefined;

  onRead(observer: (ms: number) => void): void {
    this.#onRead = observer;
  }

  async getMany(keys: readonly string[]): Promise<(Float32Array | undefined)[]> {
    const t0 = performance.now();
    const out = keys.map((k) => this.#lru.get(k));
    let hits = 0;
    for (const v of out) if (v) hits++;
    this.#stats.hits += hits;
    this.#stats.misses += keys.length - hits;
    this.#stats.reads++;
    const ms = performance.now() - t0;
    this.#stats.readMsTotal += ms;
    this.#onRead?.(ms);
    return out;
  }

  async setMany(entries: readonly CacheEntry[]): Promise<void> {
    for (const e of entries) {
      this.#lru.set(e.key, e.value, e.ttlMs !== undefined ? { ttl: e.ttlMs } : undefined);
    }
    this.#stats.writes++;
  }

  stats(): TierStats {
    return { ...this.#stats, bytes: this.#lru.calculatedSize, entries: this.#lru.size };
  }

  clear(): void {
    this.#lru.clear();
  }

  async close(): Promise<void> {
    this.#lru.clear();
  }
}
