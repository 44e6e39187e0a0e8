/**
 * Entry sizes the simulator charges to each tier. They mirror the implementations:
 *
 * - memory: `src/cache/memory.ts` bounds its LRU by `vector bytes + 2 × key length + 96` (a JS string
 *   is UTF-16, 96 bytes of node/map overhead). `test/policy-simulator.test.ts` checks this formula
 *   against a real `MemoryCache`, so the two cannot drift apart silently.
 * - global: the Redis value is an 8-byte header + the vector (float32, or half of it as float16); the key
 *   is the prefix + cache key; Redis adds about 64 bytes per key (dict entry, robj, sds headers, expiry).
 */

export const MEMORY_ENTRY_OVERHEAD_BYTES = 96;
export const REDIS_VALUE_HEADER_BYTES = 8;
export const REDIS_KEY_OVERHEAD_BYTES = 64;

/** Bytes the memory tier counts for one entry (same formula as `MemoryCache`'s sizeCalculation). */
export function memoryEntryBytes(vectorBytes: number, keyLength: number): number {
  return vectorBytes + keyLength * 2 + MEMORY_ENTRY_OVERHEAD_BYTES;
}

/** Estimated bytes Redis holds for one entry of the global tier. */
export function globalEntryBytes(vectorBytes: number, keyLength: number, encoding: 'float32' | 'float16', keyPrefixLength: number): number {
  const value = REDIS_VALUE_HEADER_BYTES + (encoding === 'float16' ? Math.ceil(vectorBytes / 2) : vectorBytes);
  return value + keyPrefixLength + keyLength + REDIS_KEY_OVERHEAD_BYTES;
}
