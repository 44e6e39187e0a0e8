/**
 * The public shapes of the global Redis cache tier (redis.ts): its options with their documented defaults
 * and their validation, and its stats.
 *
 * Everything is checked before a client is built, so a bad option never leaves a connection behind; an
 * invalid value throws a TypeError naming the option and what arrived (never a URL's password).
 */
import { Cluster, Redis } from 'ioredis';
import { createRedisClient, type RedisClient, type RedisNodeAddress } from '../redis/client.ts';
import { emptyStats, type TierStats } from './cache.ts';
import type { VectorEncoding } from './codec.ts';

/** Pino-compatible logger subset. Messages never contain keys or vectors. */
export interface RedisCacheLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface RedisCacheOptions {
  /**
   * Standalone server URL (`redis://[user:pass@]host:port[/db]` or `rediss://...`). Exactly one of `url`,
   * `cluster`, `client` is required.
   */
  url?: string;
  /** Cluster seed nodes (at least one). Exactly one of `url`, `cluster`, `client` is required. */
  cluster?: readonly RedisNodeAddress[];
  /**
   * An already constructed ioredis client (composition root, tests). It must not use ioredis' own
   * `keyPrefix` (slot routing needs the full key; use `keyPrefix` here). Build it with
   * `createRedisClient` (src/redis/client.ts) to get the settings this tier expects (no offline queue).
   */
  client?: RedisClient;
  /** Whether `close()` quits the client. Default: true when the tier built it, false for `client`. */
  closeClient?: boolean;
  /** Prefix of every key this tier touches; must not contain `{`/`}` (would pin all keys to one slot). Default `polyray:v1:`. */
  keyPrefix?: string;
  /** TTL of entries written without `ttlMs`, milliseconds. Default 7 days. */
  defaultTtlMs?: number;
  /** Element type written; reads accept both. Default `'float32'` (exact); `'float16'` halves the bytes (see codec.ts for the error bound). */
  encoding?: VectorEncoding;
  /** Upper bound of one `getMany` round trip, milliseconds; past it the call answers misses. Default 50. */
  readTimeoutMs?: number;
  /** Upper bound of one write batch round trip, milliseconds; past it the batch counts as dropped. Default 1000. */
  writeTimeoutMs?: number;
  /** TCP connect timeout of clients built by this tier, and the grace period before a never-connected tier counts as unhealthy, milliseconds. Default 1000. */
  connectTimeoutMs?: number;
  /** Capacity of the write-behind queue, entries; overflow drops the oldest queued writes (counted). Default 10000. */
  maxWriteQueue?: number;
  /** Entries per flushed batch (one pipeline per node per batch). Default 256. */
  writeBatchSize?: number;
  /** First wait before probing an unhealthy Redis, milliseconds; doubles per failed probe. Default 250. */
  backoffInitialMs?: number;
  /** Cap of the probe backoff, milliseconds: a Redis that answers again is back within this. Default 1000 (one PING a second while down). */
  backoffMaxMs?: number;
  /** Logger for health transitions (logged once per transition). Default: none. */
  logger?: RedisCacheLogger;
  /**
   * Monotonic clock in milliseconds, for read latency, the connect grace period and when a call may
   * trigger a probe (the backoff timer itself is a real `setTimeout`). Default `performance.now`.
   */
  now?: () => number;
}

type Tunables = Required<
  Pick<
    RedisCacheOptions,
    | 'keyPrefix'
    | 'defaultTtlMs'
    | 'encoding'
    | 'readTimeoutMs'
    | 'writeTimeoutMs'
    | 'connectTimeoutMs'
    | 'maxWriteQueue'
    | 'writeBatchSize'
    | 'backoffInitialMs'
    | 'backoffMaxMs'
    | 'now'
  >
>;

export const DEFAULT_REDIS_CACHE_OPTIONS: Readonly<Tunables> = Object.freeze({
  keyPrefix: 'polyray:v1:',
  defaultTtlMs: 7 * 24 * 60 * 60 * 1000,
  encoding: 'float32',
  readTimeoutMs: 50,
  writeTimeoutMs: 1000,
  connectTimeoutMs: 1000,
  maxWriteQueue: 10_000,
  writeBatchSize: 256,
  backoffInitialMs: 250,
  backoffMaxMs: 1000,
  now: () => performance.now(),
});

/** `TierStats` plus the counters specific to this tier. */
export interface RedisTierStats extends TierStats {
  /** Values present in Redis that failed to decode (answered as misses, scheduled for deletion). */
  corrupt: number;
  /** Reads that hit `readTimeoutMs` plus write batches that hit `writeTimeoutMs`. */
  timeouts: number;
  /** Keys answered as misses without asking Redis (unhealthy, not connected yet, closed). */
  skippedKeys: number;
  /** Entries accepted into the write queue. */
  queuedWrites: number;
  /** Entries Redis acknowledged. */
  writtenEntries: number;
  /** Entries lost: queue overflow, written while unhealthy, failed or timed-out batches. */
  droppedWrites: number;
  /** Entries refused by `setMany` (not a Float32Array, ttlMs <= 0 or not finite). */
  rejectedWrites: number;
  /** Entries waiting in the write queue now. */
  writeQueueDepth: number;
  /** Healthy -> unhealthy transitions. */
  unhealthyTransitions: number;
  /** Health probes sent while unhealthy. */
  probes: number;
}

/** The stats of a tier that has done nothing yet. */
export function newRedisTierStats(tier: string): RedisTierStats {
  const writes = { queuedWrites: 0, writtenEntries: 0, droppedWrites: 0, rejectedWrites: 0, writeQueueDepth: 0 };
  return { ...emptyStats(tier), ...writes, corrupt: 0, timeouts: 0, skippedKeys: 0, unhealthyTransitions: 0, probes: 0 };
}

/** The options after defaults and validation, with the client to use. */
export interface ResolvedRedisCacheOptions extends Tunables {
  client: RedisClient;
  closeClient: boolean;
  logger: RedisCacheLogger | undefined;
}

export function resolveRedisCacheOptions(input: RedisCacheOptions): ResolvedRedisCacheOptions {
  if (input === null || typeof input !== 'object') fail('(options)', 'an object', input);
  const o = { ...DEFAULT_REDIS_CACHE_OPTIONS, ...stripUndefined(input) };
  const targets = (['url', 'cluster', 'client'] as const).filter((k) => input[k] !== undefined);
  if (targets.length !== 1) {
    fail('url | cluster | client', 'exactly one of the three', targets.length === 0 ? 'none' : targets.join(' and '));
  }
  if (typeof o.keyPrefix !== 'string' || /[{}]/.test(o.keyPrefix)) {
    fail('keyPrefix', 'a string without { or }', o.keyPrefix);
  }
  positiveInt('defaultTtlMs', o.defaultTtlMs);
  if (o.encoding !== 'float32' && o.encoding !== 'float16') fail('encoding', "'float32' or 'float16'", o.encoding);
  positiveInt('readTimeoutMs', o.readTimeoutMs, 60_000);
  positiveInt('writeTimeoutMs', o.writeTimeoutMs, 600_000);
  positiveInt('connectTimeoutMs', o.connectTimeoutMs, 600_000);
  positiveInt('maxWriteQueue', o.maxWriteQueue, 10_000_000);
  positiveInt('writeBatchSize', o.writeBatchSize, 100_000);
  positiveInt('backoffInitialMs', o.backoffInitialMs, 3_600_000);
  positiveInt('backoffMaxMs', o.backoffMaxMs, 3_600_000);
  if (o.backoffMaxMs < o.backoffInitialMs) fail('backoffMaxMs', `>= backoffInitialMs (${o.backoffInitialMs})`, o.backoffMaxMs);
  if (typeof o.now !== 'function') fail('now', 'a function returning milliseconds', o.now);
  const logger = input.logger;
  if (
    logger !== undefined &&
    (logger === null ||
      typeof logger !== 'object' ||
      typeof logger.warn !== 'function' ||
      typeof logger.info !== 'function' ||
      typeof logger.error !== 'function')
  ) {
    fail('logger', 'an object with warn, info and error functions', logger);
  }
  if (input.closeClient !== undefined && typeof input.closeClient !== 'boolean') {
    fail('closeClient', 'a boolean', input.closeClient);
  }

  if (input.client !== undefined) {
    const c = input.client as unknown;
    if (!(c instanceof Redis) && !(c instanceof Cluster)) fail('client', 'an ioredis Redis or Cluster instance', c);
    const ioPrefix = input.client.options as { keyPrefix?: unknown; redisOptions?: { keyPrefix?: unknown } } | undefined;
    if (ioPrefix?.keyPrefix || ioPrefix?.redisOptions?.keyPrefix) {
      fail('client', 'a client without its own ioredis keyPrefix (use the keyPrefix option)', 'a client with keyPrefix set');
    }
    return { ...o, client: input.client, closeClient: input.closeClient ?? false, logger };
  }
  // createRedisClient validates the url or the nodes (TypeError naming them) before it connects.
  const target = input.url !== undefined ? { url: input.url } : { cluster: input.cluster! };
  const client = createRedisClient(target, { connectTimeoutMs: o.connectTimeoutMs });
  return { ...o, client, closeClient: input.closeClient ?? true, logger };
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 100 ? `${v.slice(0, 100)}...` : v);
  if (typeof v === 'function') return 'a function';
  if (v === null || typeof v !== 'object') return String(v);
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  return 'an object';
}

function fail(option: string, expected: string, value: unknown): never {
  throw new TypeError(`RedisCache option ${option} must be ${expected}, got ${describe(value)}`);
}

function positiveInt(option: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) {
    fail(option, `an integer between 1 and ${max}`, v);
  }
  return v;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
