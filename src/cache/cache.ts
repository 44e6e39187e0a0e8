/**
 * The `Cache` interface every tier implements (memory, Redis, tiered composition).
 *
 * Values are full-precision embedding vectors (`Float32Array`), stored once per model version. Keys are
 * opaque strings built by `src/cache/keys.ts` (model@version + content hash); a tier must not interpret
 * them beyond using them as keys.
 *
 * Contract:
 * - `getMany(keys)` returns an array of the same length, `undefined` for a miss. A tier that fails
 *   (unreachable, timed out, corrupt value) returns misses for what it could not read and reports the
 *   failure through its stats, it never throws to the caller.
 * - `setMany(entries)` stores the vectors; it may complete asynchronously and never throws to the caller.
 */
export interface Cache {
  /** Stable name of the tier, used in stats and logs: "memory", "global", ... */
  readonly name: string;
  getMany(keys: readonly string[]): Promise<(Float32Array | undefined)[]>;
  setMany(entries: readonly CacheEntry[]): Promise<void>;
  /** Current counters of this tier. */
  stats(): TierStats;
  /** Reports each read's latency in ms (the tier-read histogram); optional, one observer. */
  onRead?(observer: (ms: number) => void): void;
  /** Waits until writes accepted so far have reached the tier (write-behind tiers); optional. */
  flush?(): Promise<void>;
  /** Releases connections and timers (after flushing pending writes). */
  close(): Promise<void>;
}

export interface CacheEntry {
  key: string;
  value: Float32Array;
  /** Time to live in milliseconds; the tier's default when absent. */
  ttlMs?: number;
}

export interface TierStats {
  tier: string;
  hits: number;
  misses: number;
  errors: number;
  /** Bytes currently held, where the tier can tell; -1 if unknown. */
  bytes: number;
  /** Number of entries currently held, where the tier can tell; -1 if unknown. */
  entries: number;
  /** Number of getMany calls served. */
  reads: number;
  /** Number of setMany calls served. */
  writes: number;
  /** Sum of read latencies in milliseconds (divide by `reads` for the mean). */
  readMsTotal: number;
  healthy: boolean;
}

export function emptyStats(tier: string): TierStats {
  return { tier, hits: 0, misses: 0, errors: 0, bytes: -1, entries: -1, reads: 0, writes: 0, readMsTotal: 0, healthy: true };
}
