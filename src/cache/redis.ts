/**
 * The global cache tier: embedding vectors in Redis (standalone) or Redis Cluster.
 *
 * Owns: the ioredis client settings for this tier, key prefixing, slot-aware batching of reads and
 * writes, the bounded write-behind queue, and the tier's health gate (unhealthy -> instant misses until a
 * backed-off probe succeeds). Value bytes are the codec's business (`./codec.ts`).
 *
 * Cost model. A `getMany` is one round trip per Redis node it touches: a single `MGET` on standalone; on
 * Cluster the keys are grouped by the node that serves their hash slot and each node gets one pipeline
 * holding one `MGET` per slot (Cluster rejects multi-key commands across slots, even on one node). Writes
 * never block the caller: `setMany` encodes and enqueues; a flusher sends batches of pipelined
 * `SET key value PX ttl`, again one pipeline per node.
 *
 * Failure model (per the `Cache` contract nothing here throws to the caller). Every read is bounded by
 * `readTimeoutMs`; a timeout or error answers misses for what was not read (on Cluster, nodes that did
 * answer in time still give their hits), counts an error and turns the tier unhealthy. While unhealthy,
 * calls skip Redis entirely (instant misses, writes dropped and counted) and one `PING` probe per backoff
 * step (exponential, `backoffInitialMs` .. `backoffMaxMs`) decides when to trust Redis again. A reconnect
 * reported by ioredis triggers a probe at once. On Cluster the health is per tier, not per node: a master
 * that stops answering makes the tier unhealthy. Before the first connection (up to `connectTimeoutMs`)
 * the tier is "warming": reads miss, writes wait in the queue, nothing counts as an error.
 */
import { Redis, Cluster } from 'ioredis';
import type { Cache, CacheEntry, TierStats } from './cache.ts';
import { decodeVector, encodeVector, type VectorEncoding } from './codec.ts';

/** Pino-compatible logger subset. Messages never contain keys or vectors. */
export interface RedisCacheLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface RedisNodeAddress {
  host: string;
  port: number;
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
   * `createRedisClient` to get the settings this tier expects (no unbounded offline queue).
   */
  client?: Redis | Cluster;
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
  /** Cap of the probe backoff, milliseconds. Default 10000. */
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
  backoffMaxMs: 10_000,
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

// ---------------------------------------------------------------------------------------------------
// Client construction

/**
 * Builds an ioredis client with the settings this tier relies on: no offline queue (commands fail fast
 * while disconnected instead of piling up), one retry per request, bounded connect time, and automatic
 * reconnection with capped backoff (ioredis reconnects by itself; the tier's probe notices).
 */
export function createRedisClient(
  target: { url: string } | { cluster: readonly RedisNodeAddress[] },
  opts: { connectTimeoutMs?: number } = {},
): Redis | Cluster {
  const connectTimeout = opts.connectTimeoutMs ?? DEFAULT_REDIS_CACHE_OPTIONS.connectTimeoutMs;
  if ('url' in target) {
    return new Redis(target.url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout,
      // Reconnect forever, 100 ms .. 2 s apart: an outage must heal without a restart.
      retryStrategy: (times: number) => Math.min(100 * times, 2000),
    });
  }
  return new Cluster(
    target.cluster.map((n) => ({ host: n.host, port: n.port })),
    {
      enableOfflineQueue: false,
      scaleReads: 'master',
      slotsRefreshTimeout: Math.max(connectTimeout, 1000),
      clusterRetryStrategy: (times: number) => Math.min(100 * times, 2000),
      // ioredis' default drops a lost node's connection and waits for a MOVED; a master that restarts in
      // place (same slots) would then stay unreachable, so reconnect node connections too.
      clusterNodeRetryStrategy: (times: number) => Math.min(100 * times, 2000),
      redisOptions: { connectTimeout, maxRetriesPerRequest: 1 },
    },
  );
}

// ---------------------------------------------------------------------------------------------------
// Hash slots (CRC16/XMODEM of the key or of its hash tag, mod 16384), as Redis Cluster computes them.
// Implemented here rather than importing ioredis' transitive `cluster-key-slot`, which this package does
// not declare; test/redis-cluster.test.ts checks it against the server's CLUSTER KEYSLOT.

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

function crc16(bytes: Uint8Array, start: number, end: number): number {
  let crc = 0;
  for (let i = start; i < end; i++) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >>> 8) ^ bytes[i]!) & 0xff]!;
  return crc;
}

/** Same as `crc16` over the char codes of an ASCII string (saves encoding the key on the hot path). */
function crc16Ascii(s: string, start: number, end: number): number {
  let crc = 0;
  for (let i = start; i < end; i++) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >>> 8) ^ s.charCodeAt(i)) & 0xff]!;
  return crc;
}

/** Redis Cluster hash slot (0..16383) of `key`, honouring `{hash tags}` (first `{`, next `}`, non-empty). */
export function keySlot(key: string): number {
  // '{' and '}' are ASCII, so their positions are the same in the string and in its UTF-8 bytes only when
  // everything before them is ASCII; non-ASCII keys are therefore hashed over their encoded bytes.
  if (/^[\x00-\x7f]*$/.test(key)) {
    const open = key.indexOf('{');
    if (open >= 0) {
      const close = key.indexOf('}', open + 1);
      if (close > open + 1) return crc16Ascii(key, open + 1, close) & 0x3fff;
    }
    return crc16Ascii(key, 0, key.length) & 0x3fff;
  }
  const bytes = Buffer.from(key, 'utf8');
  const open = bytes.indexOf(0x7b);
  if (open >= 0) {
    const close = bytes.indexOf(0x7d, open + 1);
    if (close > open + 1) return crc16(bytes, open + 1, close) & 0x3fff;
  }
  return crc16(bytes, 0, bytes.length) & 0x3fff;
}

// ---------------------------------------------------------------------------------------------------
// Option validation

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

function redactUrl(url: string): string {
  // The URL may carry a password: never echo it back in an error message.
  return url.replace(/\/\/[^@/]*@/, '//***@');
}

interface Resolved extends Tunables {
  client: Redis | Cluster;
  closeClient: boolean;
  logger: RedisCacheLogger | undefined;
}

function resolveOptions(input: RedisCacheOptions): Resolved {
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

  // Everything is validated before a client is built, so a bad option never leaves a connection behind.
  let client: Redis | Cluster;
  let owns: boolean;
  if (input.client !== undefined) {
    const c = input.client as unknown;
    if (!(c instanceof Redis) && !(c instanceof Cluster)) fail('client', 'an ioredis Redis or Cluster instance', c);
    const ioPrefix = (input.client.options as { keyPrefix?: unknown; redisOptions?: { keyPrefix?: unknown } } | undefined);
    if (ioPrefix?.keyPrefix || ioPrefix?.redisOptions?.keyPrefix) {
      fail('client', 'a client without its own ioredis keyPrefix (use the keyPrefix option)', 'a client with keyPrefix set');
    }
    client = input.client;
    owns = false;
  } else if (input.url !== undefined) {
    const url = input.url;
    let ok = false;
    if (typeof url === 'string') {
      try {
        const u = new URL(url);
        ok = (u.protocol === 'redis:' || u.protocol === 'rediss:') && u.hostname !== '';
      } catch {
        ok = false;
      }
    }
    if (!ok) fail('url', 'a redis:// or rediss:// URL with a host', typeof url === 'string' ? redactUrl(url) : url);
    client = createRedisClient({ url }, { connectTimeoutMs: o.connectTimeoutMs });
    owns = true;
  } else {
    const nodes = input.cluster;
    if (!Array.isArray(nodes) || nodes.length === 0) fail('cluster', 'a non-empty array of { host, port }', nodes);
    nodes.forEach((n: unknown, i: number) => {
      const node = n as Partial<RedisNodeAddress> | null;
      if (node === null || typeof node !== 'object' || typeof node.host !== 'string' || node.host === '') {
        fail(`cluster[${i}].host`, 'a non-empty string', node?.host);
      }
      if (typeof node.port !== 'number' || !Number.isInteger(node.port) || node.port < 1 || node.port > 65535) {
        fail(`cluster[${i}].port`, 'an integer between 1 and 65535', node.port);
      }
    });
    client = createRedisClient({ cluster: nodes }, { connectTimeoutMs: o.connectTimeoutMs });
    owns = true;
  }
  return { ...o, client, closeClient: input.closeClient ?? owns, logger };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Write-behind queue

interface PendingWrite {
  key: string; // prefixed
  value: Buffer; // encoded
  ttlMs: number;
}

/** Fixed-capacity FIFO; pushing into a full queue evicts the oldest entry (returned to count it). */
class BoundedQueue<T> {
  private readonly buf: (T | undefined)[];
  private head = 0;
  private size = 0;
  constructor(private readonly capacity: number) {
    this.buf = new Array<T | undefined>(capacity);
  }
  get length(): number {
    return this.size;
  }
  /** Adds `x`; returns true when the oldest entry had to be dropped for it. */
  push(x: T): boolean {
    if (this.size === this.capacity) {
      this.buf[this.head] = x; // overwrite the oldest, which is at head
      this.head = (this.head + 1) % this.capacity;
      return true;
    }
    this.buf[(this.head + this.size) % this.capacity] = x;
    this.size++;
    return false;
  }
  take(n: number): T[] {
    const k = Math.min(n, this.size);
    const out = new Array<T>(k);
    for (let i = 0; i < k; i++) {
      out[i] = this.buf[this.head]!;
      this.buf[this.head] = undefined;
      this.head = (this.head + 1) % this.capacity;
    }
    this.size -= k;
    return out;
  }
  /** Empties the queue; returns how many entries were removed. */
  clear(): number {
    const n = this.size;
    this.take(n);
    return n;
  }
}

// ---------------------------------------------------------------------------------------------------

const TIMED_OUT = Symbol('timed out');

/** Settles like `p`, or resolves `TIMED_OUT` after `ms`; a rejection of `p` after the timeout is swallowed. */
function within<T>(p: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms);
  });
  p.catch(() => undefined);
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function errorSummary(e: unknown): string {
  // ioredis and Redis error texts name the condition, not the command's arguments, so they are safe to
  // log; the cap keeps a pathological message from flooding the log.
  if (e instanceof Error) return `${e.name}: ${e.message}`.slice(0, 200);
  return String(e).slice(0, 200);
}

type Raw = Buffer | null | undefined; // undefined: not read (node failed / timed out)

export class RedisCache implements Cache {
  readonly name = 'global';

  private readonly o: Resolved;
  private readonly client: Redis | Cluster;
  private readonly isCluster: boolean;
  private readonly queue: BoundedQueue<PendingWrite>;
  private readonly s: RedisTierStats;

  private healthy = true;
  private everReady: boolean;
  private readonly createdAt: number;
  private unhealthySince = 0;
  private backoffMs: number;
  private nextProbeAt = 0;
  private probeTimer: NodeJS.Timeout | undefined;
  private probing = false;

  private flushing = false;
  private flushScheduled = false;
  private flushWaiters: (() => void)[] = [];
  private readonly pendingDeletes = new Set<Promise<unknown>>();

  private closing = false;
  private closed: Promise<void> | undefined;

  private readonly onReady = () => {
    this.everReady = true;
    // Cluster node connections are opened lazily by ioredis; open them now so the first reads do not pay
    // connect + ready check inside their readTimeoutMs.
    if (this.isCluster) void this.ping();
    // ioredis reconnected by itself: confirm with a probe now rather than waiting out the backoff.
    if (!this.healthy) void this.probe();
  };
  private readonly onConnectionLost = () => {
    // Only a connection we had counts as lost; failed attempts before the first one are the grace period's.
    if (this.everReady && this.healthy && !this.closing) {
      this.s.errors++;
      this.markUnhealthy('connection lost', undefined);
    }
  };
  // Without an 'error' listener ioredis prints every reconnect failure; the health gate reports instead.
  private readonly onClientError = () => undefined;

  constructor(options: RedisCacheOptions) {
    this.o = resolveOptions(options);
    this.client = this.o.client;
    this.isCluster = this.client instanceof Cluster;
    this.queue = new BoundedQueue(this.o.maxWriteQueue);
    this.backoffMs = this.o.backoffInitialMs;
    this.createdAt = this.o.now();
    this.everReady = this.client.status === 'ready';
    this.s = {
      tier: this.name,
      hits: 0,
      misses: 0,
      errors: 0,
      bytes: -1,
      entries: -1,
      reads: 0,
      writes: 0,
      readMsTotal: 0,
      healthy: true,
      corrupt: 0,
      timeouts: 0,
      skippedKeys: 0,
      queuedWrites: 0,
      writtenEntries: 0,
      droppedWrites: 0,
      rejectedWrites: 0,
      writeQueueDepth: 0,
      unhealthyTransitions: 0,
      probes: 0,
    };
    this.client.on('ready', this.onReady);
    this.client.on('error', this.onClientError);
    if (!this.isCluster) this.client.on('close', this.onConnectionLost);
    else this.client.on('node error', this.onClientError);
    if (this.client.status === 'wait') this.client.connect().catch(() => undefined); // lazyConnect clients
  }

  // -------------------------------------------------------------------------------------------------
  // Reads

  async getMany(keys: readonly string[]): Promise<(Float32Array | undefined)[]> {
    const start = this.o.now();
    this.s.reads++;
    const out = new Array<Float32Array | undefined>(keys.length).fill(undefined);
    if (keys.length === 0) return out;
    try {
      if (this.gate() !== 'go') {
        this.s.misses += keys.length;
        this.s.skippedKeys += keys.length;
        return out;
      }
      const full = keys.map((k) => this.o.keyPrefix + k);
      const raw = new Array<Raw>(full.length).fill(undefined);
      const work = this.isCluster ? this.readCluster(full, raw) : this.readStandalone(full, raw);
      const result = await within(work, this.o.readTimeoutMs);
      if (result === TIMED_OUT) {
        this.s.timeouts++;
        this.s.errors++;
        this.markUnhealthy('read timed out', undefined);
      } else if (result !== undefined) {
        this.s.errors++;
        this.markUnhealthy('read failed', result);
      }
      // Whatever arrived in time is used (on Cluster, nodes that answered still give hits).
      let corrupt: string[] | undefined;
      for (let i = 0; i < raw.length; i++) {
        const r = raw[i];
        if (r) {
          const v = decodeVector(r);
          if (v) {
            out[i] = v;
            this.s.hits++;
            continue;
          }
          this.s.corrupt++;
          this.s.errors++;
          (corrupt ??= []).push(full[i]!);
        }
        this.s.misses++;
      }
      if (corrupt) this.deleteKeys(corrupt);
      return out;
    } catch (e) {
      // Defensive: nothing above should throw, but the contract forbids leaking anything to the caller.
      this.s.errors++;
      this.markUnhealthy('read failed', e);
      return new Array<Float32Array | undefined>(keys.length).fill(undefined);
    } finally {
      this.s.readMsTotal += this.o.now() - start;
    }
  }

  /** Fills `raw`; resolves with the first error (undefined when all went well), never rejects. */
  private async readStandalone(full: string[], raw: Raw[]): Promise<unknown> {
    try {
      const values = await (this.client as Redis).mgetBuffer(full);
      for (let i = 0; i < values.length; i++) raw[i] = values[i] ?? null;
      return undefined;
    } catch (e) {
      return e ?? new Error('read failed');
    }
  }

  private async readCluster(full: string[], raw: Raw[]): Promise<unknown> {
    const cluster = this.client as Cluster;
    let groups: Map<string, Map<number, number[]>>;
    try {
      groups = groupByNode(cluster, full);
    } catch (e) {
      return e;
    }
    const settled = await Promise.allSettled(
      [...groups.values()].map(async (bySlot) => {
        const pipeline = cluster.pipeline();
        const order: number[][] = [];
        for (const idx of bySlot.values()) {
          pipeline.mgetBuffer(idx.map((i) => full[i]!));
          order.push(idx);
        }
        const results = await pipeline.exec();
        if (!results) throw new Error('pipeline discarded');
        let firstErr: unknown;
        results.forEach(([err, value], j) => {
          if (err) {
            firstErr ??= err;
            return;
          }
          const values = value as (Buffer | null)[];
          order[j]!.forEach((i, k) => (raw[i] = values[k] ?? null));
        });
        if (firstErr) throw firstErr;
      }),
    );
    const failed = settled.find((r) => r.status === 'rejected');
    return failed ? (failed as PromiseRejectedResult).reason ?? new Error('read failed') : undefined;
  }

  // -------------------------------------------------------------------------------------------------
  // Writes

  setMany(entries: readonly CacheEntry[]): Promise<void> {
    this.s.writes++;
    try {
      if (entries.length === 0) return Promise.resolve();
      if (this.gate() === 'skip') {
        this.s.droppedWrites += entries.length;
        return Promise.resolve();
      }
      for (const e of entries) {
        const ttl = e.ttlMs === undefined ? this.o.defaultTtlMs : e.ttlMs;
        if (!(e.value instanceof Float32Array) || typeof e.key !== 'string' || !(ttl > 0) || !Number.isFinite(ttl)) {
          this.s.rejectedWrites++;
          continue;
        }
        // Encoding now snapshots the vector: the caller may reuse its array after we return.
        const w: PendingWrite = { key: this.o.keyPrefix + e.key, value: encodeVector(e.value, this.o.encoding), ttlMs: Math.ceil(ttl) };
        if (this.queue.push(w)) this.s.droppedWrites++;
        this.s.queuedWrites++;
      }
      this.scheduleFlush();
    } catch {
      this.s.errors++;
    }
    return Promise.resolve();
  }

  /** Resolves once every write queued so far has been sent (or dropped) and pending deletes are done. Never rejects. */
  async flush(): Promise<void> {
    if (this.queue.length > 0 || this.flushing || this.flushScheduled) {
      const done = new Promise<void>((resolve) => this.flushWaiters.push(resolve));
      this.scheduleFlush();
      await done;
    }
    while (this.pendingDeletes.size > 0) await Promise.allSettled([...this.pendingDeletes]);
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.flushing) return;
    this.flushScheduled = true;
    // setImmediate, not a microtask: writes from the same tick (several setMany calls) share a batch.
    setImmediate(() => {
      this.flushScheduled = false;
      void this.runFlusher();
    });
  }

  private async runFlusher(): Promise<void> {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.queue.length > 0) {
        if (this.healthy && !this.isReady() && this.inGrace()) {
          // Not connected yet: hold the writes until the first connection (bounded by the grace period).
          await new Promise((r) => setTimeout(r, 10));
          continue;
        }
        if (!this.healthy || !this.isReady()) {
          if (this.healthy && !this.closing) {
            this.s.errors++;
            this.markUnhealthy('not connected', undefined);
          }
          this.s.droppedWrites += this.queue.clear();
          break;
        }
        const batch = this.queue.take(this.o.writeBatchSize);
        const result = await within(this.isCluster ? this.writeCluster(batch) : this.writeStandalone(batch), this.o.writeTimeoutMs);
        if (result === undefined) {
          this.s.writtenEntries += batch.length;
        } else {
          this.s.droppedWrites += batch.length;
          this.s.errors++;
          if (result === TIMED_OUT) this.s.timeouts++;
          this.markUnhealthy(result === TIMED_OUT ? 'write timed out' : 'write failed', result === TIMED_OUT ? undefined : result);
        }
      }
    } catch {
      this.s.errors++;
      this.s.droppedWrites += this.queue.clear();
    } finally {
      this.flushing = false;
      if (this.queue.length > 0) {
        this.scheduleFlush();
      } else {
        const waiters = this.flushWaiters;
        this.flushWaiters = [];
        for (const w of waiters) w();
      }
    }
  }

  private async writeStandalone(batch: PendingWrite[]): Promise<unknown> {
    try {
      const pipeline = (this.client as Redis).pipeline();
      for (const w of batch) pipeline.set(w.key, w.value, 'PX', w.ttlMs);
      const results = await pipeline.exec();
      if (!results) return new Error('pipeline discarded');
      return results.find(([err]) => err)?.[0] ?? undefined;
    } catch (e) {
      return e ?? new Error('write failed');
    }
  }

  private async writeCluster(batch: PendingWrite[]): Promise<unknown> {
    const cluster = this.client as Cluster;
    let groups: Map<string, Map<number, number[]>>;
    try {
      groups = groupByNode(cluster, batch.map((w) => w.key));
    } catch (e) {
      return e;
    }
    const settled = await Promise.allSettled(
      [...groups.values()].map(async (bySlot) => {
        const pipeline = cluster.pipeline();
        for (const idx of bySlot.values()) for (const i of idx) pipeline.set(batch[i]!.key, batch[i]!.value, 'PX', batch[i]!.ttlMs);
        const results = await pipeline.exec();
        if (!results) throw new Error('pipeline discarded');
        const err = results.find(([e]) => e)?.[0];
        if (err) throw err;
      }),
    );
    const failed = settled.find((r) => r.status === 'rejected');
    return failed ? (failed as PromiseRejectedResult).reason ?? new Error('write failed') : undefined;
  }

  /**
   * Deletes corrupt values in the background so the next write can replace them. A valid value written
   * between our read and this delete would be lost too; that costs one later miss, never a wrong answer.
   */
  private deleteKeys(full: string[]): void {
    if (!this.healthy || !this.isReady()) return;
    const p = (this.isCluster ? Promise.all(full.map((k) => this.client.unlink(k))) : this.client.unlink(...full))
      .catch(() => undefined)
      .finally(() => this.pendingDeletes.delete(p));
    this.pendingDeletes.add(p);
  }

  // -------------------------------------------------------------------------------------------------
  // Health

  private isReady(): boolean {
    return this.client.status === 'ready';
  }

  private inGrace(): boolean {
    return !this.everReady && this.o.now() - this.createdAt < this.o.connectTimeoutMs;
  }

  /**
   * Whether a call may go to Redis now: 'go'; 'warming' before the first connection (within
   * connectTimeoutMs: reads miss, writes wait in the queue); 'skip' while unhealthy or closing. Side
   * effects: starts a due probe, turns a missing connection past the grace period into an outage.
   */
  private gate(): 'go' | 'warming' | 'skip' {
    if (this.closing) return 'skip';
    if (!this.healthy) {
      if (!this.probing && this.o.now() >= this.nextProbeAt) void this.probe();
      return 'skip';
    }
    if (this.isReady()) return 'go';
    if (this.inGrace()) return 'warming';
    this.s.errors++;
    this.markUnhealthy('not connected', undefined);
    return 'skip';
  }

  private markUnhealthy(reason: string, err: unknown): void {
    if (this.closing || !this.healthy) return;
    this.healthy = false;
    this.unhealthySince = this.o.now();
    this.s.unhealthyTransitions++;
    this.backoffMs = this.o.backoffInitialMs;
    this.o.logger?.warn(
      { tier: this.name, reason, err: err === undefined ? undefined : errorSummary(err), retryInMs: this.backoffMs },
      'global cache unavailable; serving misses until a probe succeeds',
    );
    this.scheduleProbe();
  }

  private scheduleProbe(): void {
    this.nextProbeAt = this.o.now() + this.backoffMs;
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => void this.probe(), this.backoffMs);
    // A pending probe must not keep the process alive.
    this.probeTimer.unref();
  }

  private async probe(): Promise<void> {
    if (this.probing || this.healthy || this.closing) return;
    this.probing = true;
    clearTimeout(this.probeTimer);
    this.s.probes++;
    try {
      const ok = this.isReady() && (await within(this.ping(), this.o.readTimeoutMs)) === true;
      if (this.closing) return;
      if (ok) {
        this.healthy = true;
        this.o.logger?.info(
          { tier: this.name, downMs: Math.round(this.o.now() - this.unhealthySince), droppedWrites: this.s.droppedWrites },
          'global cache available again',
        );
        return;
      }
      this.backoffMs = Math.min(this.backoffMs * 2, this.o.backoffMaxMs);
      this.scheduleProbe();
    } finally {
      this.probing = false;
    }
  }

  private async ping(): Promise<boolean> {
    try {
      if (!this.isCluster) return (await this.client.ping()) === 'PONG';
      // Every master must answer: reads fan out to all of them.
      const masters = (this.client as Cluster).nodes('master');
      if (masters.length === 0) return false;
      const replies = await Promise.all(masters.map((m) => m.ping()));
      return replies.every((r) => r === 'PONG');
    } catch {
      return false;
    }
  }

  // -------------------------------------------------------------------------------------------------

  stats(): RedisTierStats {
    return { ...this.s, healthy: this.healthy && !this.closing, writeQueueDepth: this.queue.length };
  }

  /** Flushes pending writes (bounded by writeTimeoutMs per batch), stops timers, quits the client if owned. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      await this.flush();
      this.closing = true;
      clearTimeout(this.probeTimer);
      this.client.off('ready', this.onReady);
      this.client.off('close', this.onConnectionLost);
      if (this.o.closeClient) {
        // QUIT lets Redis finish what it has; without a usable connection there is nothing to wait for.
        if (this.isReady()) await within(this.client.quit(), 1000).catch(() => TIMED_OUT);
        if (this.client.status !== 'end') this.client.disconnect();
      }
      // Keep the no-op error listener: a disconnecting client may still emit errors.
    })();
    return this.closed;
  }
}

/** Groups key indices by the Cluster node serving their slot (same grouping ioredis checks for pipelines), then by slot. */
function groupByNode(cluster: Cluster, keys: readonly string[]): Map<string, Map<number, number[]>> {
  const slots = cluster.slots;
  const groups = new Map<string, Map<number, number[]>>();
  for (let i = 0; i < keys.length; i++) {
    const slot = keySlot(keys[i]!);
    const nodes = slots[slot];
    if (!nodes || nodes.length === 0) {
      // Slot map incomplete (cluster changing): ask ioredis to refresh it; this call fails as a miss.
      cluster.refreshSlotsCache();
      throw new Error(`no node serves slot ${slot}`);
    }
    const id = nodes.join(';');
    let bySlot = groups.get(id);
    if (!bySlot) groups.set(id, (bySlot = new Map()));
    let idx = bySlot.get(slot);
    if (!idx) bySlot.set(slot, (idx = []));
    idx.push(i);
  }
  return groups;
}
