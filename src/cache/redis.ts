/**
 * The global cache tier: embedding vectors in Redis (standalone) or Redis Cluster.
 *
 * Owns: key prefixing, slot-aware batching of reads and writes, the bounded write-behind queue, and what
 * the tier does while Redis is unhealthy. Value bytes are the codec's business (`./codec.ts`); the client,
 * slot grouping, deadlines and the health gate are shared with accounting (`src/redis/`); options and
 * their validation, and the stats shape are in `./redis-options.ts`.
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
 * reported by ioredis triggers a probe at once. On Cluster the health is per tier, not per node (the gate
 * holds one node): a master that stops answering makes the tier unhealthy, since every read fans out to
 * all of them. Before the first connection (up to `connectTimeoutMs`) the tier is "warming": reads miss,
 * writes wait in the queue, nothing counts as an error.
 */
import { Cluster, type Redis } from 'ioredis';
import { pingAll, type RedisClient } from '../redis/client.ts';
import { DeadlineExceeded, withDeadline } from '../redis/deadline.ts';
import { HealthGate, type Attempt } from '../redis/health.ts';
import { pipelinePerNode } from '../redis/slots.ts';
import type { Cache, CacheEntry } from './cache.ts';
import { decodeVector, encodeVector } from './codec.ts';
import { newRedisTierStats, resolveRedisCacheOptions, type RedisCacheOptions, type RedisTierStats, type ResolvedRedisCacheOptions } from './redis-options.ts';
import { WriteBehind } from './write-behind.ts';

export { DEFAULT_REDIS_CACHE_OPTIONS, type RedisCacheLogger, type RedisCacheOptions, type RedisTierStats } from './redis-options.ts';

interface PendingWrite {
  key: string; // prefixed
  value: Buffer; // encoded
  ttlMs: number;
}

/** The one node of the health gate: the tier's health is one for all of its Redis nodes. */
const TIER = 'global';

/** Resolves with `work`'s result, or with the `DeadlineExceeded` after `ms`; never rejects. */
function bounded(work: Promise<unknown>, ms: number): Promise<unknown> {
  return withDeadline(work, ms, { what: 'global cache Redis' }).catch((e: unknown) => e);
}

function errorSummary(e: unknown): string {
  // ioredis and Redis error texts name the condition, not the command's arguments, so they are safe to
  // log; the cap keeps a pathological message from flooding the log.
  if (e instanceof Error) return `${e.name}: ${e.message}`.slice(0, 200);
  return String(e).slice(0, 200);
}

type Raw = Buffer | null | undefined; // undefined: not read (node failed / timed out)

export class RedisCache implements Cache {
  readonly name = TIER;

  readonly #o: ResolvedRedisCacheOptions;
  readonly #client: RedisClient;
  readonly #cluster: Cluster | undefined;
  readonly #queue: WriteBehind<PendingWrite>;
  readonly #s: RedisTierStats;
  readonly #health: HealthGate;

  #everReady: boolean;
  readonly #createdAt: number;

  readonly #pendingDeletes = new Set<Promise<unknown>>();

  #closing = false;
  #closed: Promise<void> | undefined;

  readonly #onReady = () => {
    this.#everReady = true;
    // Cluster node connections are opened lazily by ioredis; open them now so the first reads do not pay
    // connect + ready check inside their readTimeoutMs.
    if (this.#cluster) void pingAll(this.#client);
    // ioredis reconnected by itself: confirm with a probe now rather than waiting out the backoff.
    this.#health.wake(TIER);
  };
  readonly #onConnectionLost = () => {
    // Only a connection we had counts as lost; failed attempts before the first one are the grace period's.
    if (this.#everReady) this.#connectionMissing('connection lost');
  };
  // Without an 'error' listener ioredis prints every reconnect failure; the health gate reports instead.
  readonly #onClientError = () => undefined;

  constructor(options: RedisCacheOptions) {
    this.#o = resolveRedisCacheOptions(options);
    this.#client = this.#o.client;
    this.#cluster = this.#client instanceof Cluster ? this.#client : undefined;
    this.#queue = new WriteBehind<PendingWrite>({
      capacity: this.#o.maxWriteQueue,
      batchSize: this.#o.writeBatchSize,
      state: () => this.#writeState(),
      send: (batch) => this.#sendBatch(batch),
      dropped: (count, failed) => {
        this.#s.droppedWrites += count;
        if (failed) this.#s.errors++;
      },
    });
    this.#health = new HealthGate({
      retryMs: this.#o.backoffInitialMs,
      maxRetryMs: this.#o.backoffMaxMs,
      now: this.#o.now,
      probe: () => this.#probe(),
      onTransition: (_node, to, d) => {
        if (to === 'up') {
          this.#o.logger?.info({ tier: this.name, downMs: Math.round(d.downMs ?? 0), droppedWrites: this.#s.droppedWrites }, 'global cache available again');
        }
      },
    });
    this.#createdAt = this.#o.now();
    this.#everReady = this.#client.status === 'ready';
    this.#s = newRedisTierStats(this.name);
    this.#client.on('ready', this.#onReady);
    this.#client.on('error', this.#onClientError);
    if (!this.#cluster) this.#client.on('close', this.#onConnectionLost);
    else this.#client.on('node error', this.#onClientError);
    if (this.#client.status === 'wait') this.#client.connect().catch(() => undefined); // lazyConnect clients
  }

  // -------------------------------------------------------------------------------------------------
  // Reads

  #onRead: ((ms: number) => void) | undefined;

  onRead(observer: (ms: number) => void): void {
    this.#onRead = observer;
  }

  async getMany(keys: readonly string[]): Promise<(Float32Array | undefined)[]> {
    const start = this.#o.now();
    this.#s.reads++;
    const out = new Array<Float32Array | undefined>(keys.length).fill(undefined);
    if (keys.length === 0) return out;
    try {
      const attempt = this.#gate();
      if (typeof attempt === 'string') {
        this.#s.misses += keys.length;
        this.#s.skippedKeys += keys.length;
        return out;
      }
      const full = keys.map((k) => this.#o.keyPrefix + k);
      const raw = new Array<Raw>(full.length).fill(undefined);
      const result = await bounded(this.#cluster ? this.#readCluster(this.#cluster, full, raw) : this.#readStandalone(full, raw), this.#o.readTimeoutMs);
      if (result !== undefined) this.#callFailed('read', result, attempt);
      // Whatever arrived in time is used (on Cluster, nodes that answered still give hits).
      const corrupt: string[] = [];
      for (let i = 0; i < raw.length; i++) {
        const r = raw[i];
        if (r) {
          const v = decodeVector(r);
          if (v) {
            out[i] = v;
            this.#s.hits++;
            continue;
          }
          this.#s.corrupt++;
          this.#s.errors++;
          corrupt.push(full[i]!);
        }
        this.#s.misses++;
      }
      if (corrupt.length > 0) this.#deleteKeys(corrupt);
      return out;
    } catch (e) {
      // Defensive: nothing above should throw, but the contract forbids leaking anything to the caller.
      this.#callFailed('read', e);
      return new Array<Float32Array | undefined>(keys.length).fill(undefined);
    } finally {
      const ms = this.#o.now() - start;
      this.#s.readMsTotal += ms;
      this.#onRead?.(ms);
    }
  }

  /** Fills `raw`; resolves with the first error (undefined when all went well), never rejects. */
  async #readStandalone(full: string[], raw: Raw[]): Promise<unknown> {
    try {
      const values = await (this.#client as Redis).mgetBuffer(full);
      for (let i = 0; i < values.length; i++) raw[i] = values[i] ?? null;
      return undefined;
    } catch (e) {
      return e ?? new Error('read failed');
    }
  }

  #readCluster(cluster: Cluster, full: string[], raw: Raw[]): Promise<unknown> {
    return pipelinePerNode(cluster, full, (pipeline, bySlot) => {
      const order = [...bySlot.values()];
      for (const idx of order) pipeline.mgetBuffer(idx.map((i) => full[i]!));
      return (j, reply) => {
        const values = reply as (Buffer | null)[];
        order[j]!.forEach((i, k) => {
          raw[i] = values[k] ?? null;
        });
      };
    });
  }

  // -------------------------------------------------------------------------------------------------
  // Writes

  setMany(entries: readonly CacheEntry[]): Promise<void> {
    this.#s.writes++;
    try {
      if (entries.length === 0) return Promise.resolve();
      if (this.#gate() === 'skip') {
        this.#s.droppedWrites += entries.length;
        return Promise.resolve();
      }
      for (const e of entries) {
        const ttl = e.ttlMs === undefined ? this.#o.defaultTtlMs : e.ttlMs;
        if (!(e.value instanceof Float32Array) || typeof e.key !== 'string' || !(ttl > 0) || !Number.isFinite(ttl)) {
          this.#s.rejectedWrites++;
          continue;
        }
        // Encoding now snapshots the vector: the caller may reuse its array after we return.
        const w: PendingWrite = { key: this.#o.keyPrefix + e.key, value: encodeVector(e.value, this.#o.encoding), ttlMs: Math.ceil(ttl) };
        if (this.#queue.push(w)) this.#s.droppedWrites++;
        this.#s.queuedWrites++;
      }
    } catch {
      this.#s.errors++;
    }
    return Promise.resolve();
  }

  /** Resolves once every write queued so far has been sent (or dropped) and pending deletes are done. Never rejects. */
  async flush(): Promise<void> {
    await this.#queue.flush();
    while (this.#pendingDeletes.size > 0) await Promise.allSettled([...this.#pendingDeletes]);
  }

  /** Whether the flusher may send now (see WriteBehindOptions.state). */
  #writeState(): 'send' | 'wait' | 'drop' {
    if (this.#healthy && this.#isReady()) return 'send';
    // Not connected yet: hold the writes until the first connection (bounded by the grace period).
    if (this.#healthy && this.#inGrace()) return 'wait';
    this.#connectionMissing('not connected');
    return 'drop';
  }

  async #sendBatch(batch: PendingWrite[]): Promise<void> {
    const attempt = this.#health.admit(TIER);
    const result = await bounded(this.#cluster ? this.#writeCluster(this.#cluster, batch) : this.#writeStandalone(batch), this.#o.writeTimeoutMs);
    if (result === undefined) {
      this.#s.writtenEntries += batch.length;
    } else {
      this.#s.droppedWrites += batch.length;
      this.#callFailed('write', result, attempt);
    }
  }

  async #writeStandalone(batch: PendingWrite[]): Promise<unknown> {
    try {
      const pipeline = (this.#client as Redis).pipeline();
      for (const w of batch) pipeline.set(w.key, w.value, 'PX', w.ttlMs);
      const results = await pipeline.exec();
      if (!results) return new Error('pipeline discarded');
      return results.find(([err]) => err)?.[0] ?? undefined;
    } catch (e) {
      return e ?? new Error('write failed');
    }
  }

  #writeCluster(cluster: Cluster, batch: PendingWrite[]): Promise<unknown> {
    return pipelinePerNode(
      cluster,
      batch.map((w) => w.key),
      (pipeline, bySlot) => {
        for (const idx of bySlot.values()) for (const i of idx) pipeline.set(batch[i]!.key, batch[i]!.value, 'PX', batch[i]!.ttlMs);
        return undefined;
      },
    );
  }

  /**
   * Deletes corrupt values in the background so the next write can replace them. A valid value written
   * between our read and this delete would be lost too; that costs one later miss, never a wrong answer.
   */
  #deleteKeys(full: string[]): void {
    if (!this.#healthy || !this.#isReady()) return;
    const p = (this.#cluster ? Promise.all(full.map((k) => this.#client.unlink(k))) : this.#client.unlink(...full))
      .catch(() => undefined)
      .finally(() => this.#pendingDeletes.delete(p));
    this.#pendingDeletes.add(p);
  }

  // -------------------------------------------------------------------------------------------------
  // Health: the gate (src/redis/health.ts) keeps the state, the backoff and the probe timer; this tier
  // adds the connect grace period and what a probe asks (#probe).

  get #healthy(): boolean {
    return !this.#health.isDown(TIER);
  }

  #isReady(): boolean {
    return this.#client.status === 'ready';
  }

  #inGrace(): boolean {
    return !this.#everReady && this.#o.now() - this.#createdAt < this.#o.connectTimeoutMs;
  }

  /**
   * Whether a call may go to Redis now: an attempt to report back; 'warming' before the first connection
   * (within connectTimeoutMs: reads miss, writes wait in the queue); 'skip' while unhealthy or closing.
   * Side effects: the gate starts a due probe; a missing connection past the grace period is an outage.
   */
  #gate(): Attempt | 'warming' | 'skip' {
    if (this.#closing) return 'skip';
    const attempt = this.#health.admit(TIER);
    if (!attempt) return 'skip';
    if (this.#isReady()) return attempt;
    if (this.#inGrace()) return 'warming';
    this.#connectionMissing('not connected');
    return 'skip';
  }

  /** A read or a write batch failed or ran past its deadline: counted, and the tier turns unhealthy. */
  #callFailed(op: 'read' | 'write', error: unknown, attempt?: Attempt): void {
    const timedOut = error instanceof DeadlineExceeded;
    if (timedOut) this.#s.timeouts++;
    this.#s.errors++;
    this.#markUnhealthy(`${op} ${timedOut ? 'timed out' : 'failed'}`, timedOut ? undefined : error, attempt);
  }

  /** No usable connection (lost, or not made within the grace period): an outage, counted once. */
  #connectionMissing(reason: string): void {
    if (!this.#healthy || this.#closing) return;
    this.#s.errors++;
    this.#markUnhealthy(reason, undefined);
  }

  /**
   * Turns the tier unhealthy (logged and counted once per outage); the gate then probes it.
   * `attempt`: the call that failed; without one (a lost connection), whatever the tier's state now.
   */
  #markUnhealthy(reason: string, err: unknown, attempt?: Attempt): void {
    if (this.#closing || !this.#healthy) return;
    if (attempt) this.#health.failed(attempt, err);
    else this.#health.markDown(TIER, err);
    if (this.#healthy) return; // sent before the last recovery: says nothing about Redis now
    this.#s.unhealthyTransitions++;
    this.#o.logger?.warn(
      { tier: this.name, reason, err: err === undefined ? undefined : errorSummary(err), retryInMs: this.#o.backoffInitialMs },
      'global cache unavailable; serving misses until a probe succeeds',
    );
  }

  /** The health probe: the connection is up and answers PING in readTimeoutMs (every master, on Cluster). */
  async #probe(): Promise<boolean> {
    this.#s.probes++;
    return this.#isReady() && (await bounded(pingAll(this.#client), this.#o.readTimeoutMs)) === true;
  }

  // -------------------------------------------------------------------------------------------------

  stats(): RedisTierStats {
    return { ...this.#s, healthy: this.#healthy && !this.#closing, writeQueueDepth: this.#queue.length };
  }

  /** Flushes pending writes (bounded by writeTimeoutMs per batch), stops timers, quits the client if owned. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      await this.flush();
      this.#closing = true;
      this.#health.close();
      this.#client.off('ready', this.#onReady);
      this.#client.off('close', this.#onConnectionLost);
      if (this.#o.closeClient) {
        // QUIT lets Redis finish what it has; without a usable connection there is nothing to wait for.
        if (this.#isReady()) await bounded(this.#client.quit(), 1000);
        if (this.#client.status !== 'end') this.#client.disconnect();
      }
      // Keep the no-op error listener: a disconnecting client may still emit errors.
    })();
    return this.#closed;
  }
}
