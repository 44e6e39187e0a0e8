/**
 * The usage ledger: client × model × source → items, tokens, inference milliseconds, cost units.
 *
 * Every replica records into local maps and flushes the deltas to Redis every `flushMs`, so the fleet
 * keeps one set of books: hash `<prefix>{client:<id>}:usage`, fields `<model>|<SOURCE>|<figure>`, and the
 * set `<prefix>usage:clients` (keys.ts). A flush sends, at once, one script per client and one SADD of
 * the flushed ids (SADD is idempotent; ids whose SADD failed are added again next time).
 *
 * Each client's deltas leave as a numbered batch, applied **exactly once** even when a call times out
 * but lands later — which happens: ioredis queues commands for a Cluster node that is reconnecting and
 * sends them when it is back, and a standalone command may time out after Redis ran it. The script adds
 * the batch's figures and records its number in `<prefix>{client:<id>}:flushseq:<replica>` (one key
 * per client and replica process, in the client's slot, so it also runs on a Cluster), unless that number
 * is already recorded. A batch that failed or timed out is resent, with the same number, by later flushes
 * until Redis confirms it (applied now, or found applied); the client's newer deltas wait behind it, so
 * numbers only grow and "already recorded" means "at most this number".
 *
 * A read combines Redis with the deltas not yet flushed: it waits for a flush in flight, then snapshots
 * the pending deltas and sends one HGETALL per client in the same tick. Each HGETALL goes down the same
 * connection as any later flush of that key (one connection per node on Cluster), so Redis answers it
 * before that flush lands and no delta is counted twice or missed. (A read that a Cluster redirects
 * while slots move may be resent after a flush; the figures are then off until the next read.)
 *
 * Without Redis (or when it does not answer) reads return this replica's own totals since start
 * (`fleetWide: false`).
 *
 * A Redis that lost its data (restarted without persistence, keys evicted or deleted) would silently zero
 * the fleet's books. Each replica keeps a marker key of its own (`<prefix>ledger:replica:<id>`, set after
 * its first confirmed flush, refreshed with a TTL of days) and checks it before every flush: gone, the books
 * were lost, and the replica adds back what it had flushed (its totals since start, less what is pending or
 * unconfirmed, which goes anyway). Every live replica restores its own share, exactly once; usage of
 * replicas that stopped before the loss is not recoverable here. The loss is logged and counted (`onReset`,
 * `polyray_usage_books_resets_total`). The marker is refreshed hourly (SET XX: a lost one is not recreated).
 *
 * On a Cluster a lost master takes only its slots' books, which one marker key cannot see. There each
 * client's flush sequence key is the marker of that client's books: it lives in the client's slot, beside
 * the books, and every flush of the client refreshes it. The flush script is told the last batch number
 * Redis confirmed for this client; finding no sequence key where one was confirmed (less than half its TTL
 * ago, so an expiry is never mistaken for a loss) means the slot lost its data, and the replica restores its
 * share of that client's books, once. It is seen at the client's next flush from this replica (a client
 * with no new usage is restored when it has some). Standalone Redis gets this check too, after the marker's:
 * a marker restore covers every client, so the per-client one finds nothing left to do.
 */
import { randomBytes } from 'node:crypto';
import { Cluster } from 'ioredis';
import type { Logger } from '../log.ts';
import type { Source } from '../service/types.ts';
import { withDeadline } from '../redis/deadline.ts';
import { AccountingKeys } from './keys.ts';
import { ACCOUNTING_DEADLINE, type AccountingRedis } from './redis-client.ts';

export interface Figures {
  items: number;
  tokens: number;
  inferenceMs: number;
  cost: number;
}

export interface UsageRow extends Figures {
  model: string;
  source: Source;
}

export interface UsageBook {
  clientId: string;
  rows: UsageRow[];
  totals: Figures;
  /** True when the figures are the fleet's (Redis + this replica's unflushed deltas). */
  fleetWide: boolean;
}

const FIGURES = ['items', 'tokens', 'inferenceMs', 'cost'] as const;
const SOURCES: readonly Source[] = ['MEMORY', 'GLOBAL', 'COMPUTED'];

type Rows = Map<string, Figures>;
type Book = Map<string, Rows>;

export interface LedgerOptions {
  /** Standalone Redis or Cluster; unset = this replica's books only. */
  redis?: AccountingRedis | undefined;
  keyPrefix: string;
  flushMs: number;
  logger: Logger;
  /** Longest wait for a flush or a read before it counts as failed. Default: the client's own timeouts. */
  timeoutMs?: number | undefined;
  /** Called when the books in Redis were found lost and this replica's share was restored. */
  onReset?: () => void;
}

/** How often the marker's TTL is extended while the replica runs. */
const MARKER_REFRESH_MS = 3_600_000;

/** How long a replica's last flushed batch number is kept per client (refreshed by every flush). */
const FLUSH_SEQ_TTL_MS = 7 * 24 * 3600 * 1000;

/**
 * KEYS: the client's books, the client's flush sequence key of this replica.
 * ARGV: batch number, sequence TTL ms, the last batch number Redis confirmed to this replica for the client
 * (0: none, or too long ago to expect the key), then field, increment, field, increment, …
 * Returns 1 when the batch was added now, 0 when it had been added before, 2 when it was added now and the
 * sequence key of a confirmed batch was gone: the slot lost the client's books.
 */
const FLUSH_ONCE = `
local cur = redis.call('GET', KEYS[2])
local last = tonumber(cur or '0')
local seq = tonumber(ARGV[1])
if seq <= last then return 0 end
for i = 4, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if not cur and tonumber(ARGV[3]) > 0 then return 2 end
return 1`;

function zero(): Figures {
  return { items: 0, tokens: 0, inferenceMs: 0, cost: 0 };
}

function add(book: Book, clientId: string, rowKey: string, f: Figures): void {
  let rows = book.get(clientId);
  if (!rows) {
    rows = new Map();
    book.set(clientId, rows);
  }
  const cur = rows.get(rowKey) ?? zero();
  for (const k of FIGURES) cur[k] += f[k];
  rows.set(rowKey, cur);
}

function toBook(clientId: string, rows: Rows, fleetWide: boolean): UsageBook {
  const out: UsageRow[] = [];
  const totals = zero();
  for (const [rk, f] of rows) {
    const [model, source] = rk.split('|') as [string, Source];
    out.push({ model, source, ...f });
    for (const k of FIGURES) totals[k] += f[k];
  }
  out.sort((a, b) => a.model.localeCompare(b.model) || SOURCES.indexOf(a.source) - SOURCES.indexOf(b.source));
  return { clientId, rows: out, totals, fleetWide };
}

export class Ledger {
  readonly #o: LedgerOptions;
  /** Everything this replica recorded since start. */
  readonly #totals: Book = new Map();
  /** Deltas not yet in Redis. */
  #pending: Book = new Map();
  /** Batches sent but not confirmed (failed or timed out), per client: resent as they are. */
  readonly #unconfirmed = new Map<string, { seq: number; rows: Rows }>();
  /** This process's name in the flush sequence keys, and its last batch number. */
  readonly #replica = randomBytes(6).toString('hex');
  #seq = 0;
  /** Ids flushed whose SADD to the clients set failed: sent again with the next flush. */
  #unlisted = new Set<string>();
  #flushing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #failing = false;
  /** Reads of the books from Redis are failing (logged once until one succeeds again). */
  #readFailing = false;
  /** This replica's marker key is in Redis (set after a confirmed flush): its absence means the books were lost. */
  #marked = false;
  /** When the marker was last set or refreshed (ms, monotonic). */
  #markedAt = 0;
  /** Per client, the last batch Redis confirmed and when: its sequence key must exist (per-slot loss detection). */
  readonly #confirmed = new Map<string, { seq: number; at: number }>();
  #resets = 0;

  readonly #keys: AccountingKeys;

  constructor(options: LedgerOptions) {
    this.#o = options;
    this.#keys = new AccountingKeys(options.keyPrefix);
  }

  get fleetWide(): boolean {
    return this.#o.redis !== undefined;
  }

  start(): void {
    if (!this.#o.redis || this.#timer) return;
    this.#timer = setInterval(() => void this.flush(), this.#o.flushMs);
    this.#timer.unref();
  }

  /** Times the books in Redis were found lost and this replica's share restored. */
  get resets(): number {
    return this.#resets;
  }

  /** Sets (or hourly refreshes) this replica's marker once its books are confirmed in Redis (standalone Redis only). */
  async #mark(redis: AccountingRedis): Promise<void> {
    // On a Cluster one lost master loses only its slots' books, and one marker key lives in one slot: the
    // clients' sequence keys are the markers there (see FLUSH_ONCE).
    if (redis instanceof Cluster) return;
    const now = performance.now();
    if (this.#marked && now - this.#markedAt < MARKER_REFRESH_MS) return;
    try {
      const key = this.#keys.ledgerMarker(this.#replica);
      // A refresh only extends a marker that is there: one that is gone must stay gone for #checkMarker.
      const set = this.#marked ? redis.set(key, '1', 'PX', FLUSH_SEQ_TTL_MS, 'XX') : redis.set(key, '1', 'PX', FLUSH_SEQ_TTL_MS);
      await withDeadline(set, this.#o.timeoutMs, ACCOUNTING_DEADLINE);
      this.#marked = true;
      this.#markedAt = now;
    } catch {
      // Set again after the next confirmed flush.
    }
  }

  /**
   * What this replica had in Redis for `clientId` and no longer has there: its totals, less what is pending
   * or unconfirmed (sent anyway). Added to the pending deltas; returns the items restored.
   */
  #restore(clientId: string): number {
    const rows = this.#totals.get(clientId);
    if (!rows) return 0;
    const pending = this.#pending.get(clientId);
    const unconfirmed = this.#unconfirmed.get(clientId)?.rows;
    let restored = 0;
    for (const [rk, total] of rows) {
      const f = { ...total };
      for (const k of FIGURES) f[k] -= (pending?.get(rk)?.[k] ?? 0) + (unconfirmed?.get(rk)?.[k] ?? 0);
      if (FIGURES.some((k) => f[k] !== 0)) {
        add(this.#pending, clientId, rk, f);
        restored += f.items;
      }
    }
    this.#unlisted.add(clientId);
    return restored;
  }

  /** Before a flush: a marker that was set and is gone means Redis lost the books; restore this replica's share. */
  async #checkMarker(redis: AccountingRedis): Promise<void> {
    if (!this.#marked) return;
    let exists: number;
    try {
      exists = await withDeadline(redis.exists(this.#keys.ledgerMarker(this.#replica)), this.#o.timeoutMs, ACCOUNTING_DEADLINE);
    } catch {
      return; // Redis does not answer: the flush fails and keeps its deltas as before.
    }
    if (exists !== 0) return;
    this.#marked = false;
    this.#resets++;
    let restored = 0;
    for (const clientId of this.#totals.keys()) restored += this.#restore(clientId);
    // Everything is restored: no client's missing sequence key is a loss still to be found.
    this.#confirmed.clear();
    this.#o.logger.warn(
      { restoredItems: restored, clients: this.#totals.size },
      "usage books in Redis were lost (restart without persistence?); restoring this replica's share",
    );
    this.#o.onReset?.();
  }

  /** The flush found a client's confirmed sequence key gone: its slot lost the books; restore this replica's share. */
  #slotLost(clientId: string): void {
    const restored = this.#restore(clientId);
    this.#resets++;
    this.#o.logger.warn({ restoredItems: restored }, "a client's usage books in Redis were lost (its slot's data is gone); restoring this replica's share");
    this.#o.onReset?.();
  }

  record(clientId: string, model: string, source: Source, f: Figures): void {
    const rk = `${model}|${source}`;
    add(this.#totals, clientId, rk, f);
    if (this.#o.redis) add(this.#pending, clientId, rk, f);
  }

  /** This replica's own totals since start. */
  local(clientId: string): UsageBook {
    return toBook(clientId, this.#totals.get(clientId) ?? new Map(), false);
  }

  localClientIds(): string[] {
    return [...this.#totals.keys()];
  }

  /** Sends the pending deltas to Redis. Resolves when they are there (or kept for the next flush after a failure). */
  async flush(): Promise<void> {
    const redis = this.#o.redis;
    if (!redis) return;
    while (this.#flushing) await this.#flushing;
    await this.#checkMarker(redis);
    if (this.#pending.size === 0 && this.#unlisted.size === 0 && this.#unconfirmed.size === 0) return;
    // An unconfirmed batch goes again as it was; a client's newer deltas wait until it is confirmed.
    const batches = new Map(this.#unconfirmed);
    const pending = this.#pending;
    this.#pending = new Map();
    for (const [clientId, rows] of pending) {
      if (batches.has(clientId)) {
        for (const [rk, f] of rows) add(this.#pending, clientId, rk, f);
      } else {
        const b = { seq: ++this.#seq, rows };
        batches.set(clientId, b);
        this.#unconfirmed.set(clientId, b);
      }
    }
    const ids = [...new Set([...this.#unlisted, ...pending.keys()])];
    this.#unlisted = new Set();
    const deadline = this.#o.timeoutMs;
    const books = [...batches].map(async ([clientId, { seq, rows }]): Promise<unknown> => {
      // The key is expected only while a confirmed batch's key cannot have expired (half its TTL).
      const known = this.#confirmed.get(clientId);
      const expected = known && performance.now() - known.at < FLUSH_SEQ_TTL_MS / 2 ? known.seq : 0;
      const args: (string | number)[] = [seq, FLUSH_SEQ_TTL_MS, expected];
      for (const [rk, f] of rows) for (const k of FIGURES) if (f[k] !== 0) args.push(`${rk}|${k}`, f[k]);
      try {
        let outcome: unknown = 1;
        if (args.length > 3) {
          outcome = await withDeadline(
            redis.eval(FLUSH_ONCE, 2, this.#keys.usage(clientId), this.#keys.flushSeq(clientId, this.#replica), ...args),
            deadline,
            ACCOUNTING_DEADLINE,
          );
        }
        // Before the batch counts as confirmed: the restore leaves it out (it is in Redis now, the rest is not).
        if (outcome === 2) this.#slotLost(clientId);
        // Applied now or found applied earlier: either way it is in Redis exactly once.
        if (this.#unconfirmed.get(clientId)?.seq === seq) this.#unconfirmed.delete(clientId);
        this.#confirmed.set(clientId, { seq, at: performance.now() });
        return undefined;
      } catch (e) {
        return e ?? new Error('flush failed');
      }
    });
    const index = withDeadline(redis.sadd(this.#keys.clients, ...ids), deadline, ACCOUNTING_DEADLINE).then(
      () => undefined,
      (e: unknown) => {
        for (const id of ids) this.#unlisted.add(id);
        return e ?? new Error('SADD failed');
      },
    );
    this.#flushing = Promise.all([index, ...books])
      .then((outcomes) => {
        const failed = outcomes.filter((e) => e !== undefined);
        if (failed.length === 0) {
          if (this.#failing) this.#o.logger.info('usage ledger flushed to Redis again');
          this.#failing = false;
          return this.#mark(redis);
        }
        if (!this.#failing) {
          this.#o.logger.warn(
            { reason: (failed[0] as Error)?.message, failedWrites: failed.length, writes: outcomes.length },
            'usage ledger could not be flushed to Redis; keeping the deltas and retrying',
          );
        }
        this.#failing = true;
      })
      .finally(() => {
        this.#flushing = undefined;
      });
    await this.#flushing;
  }

  /** Fleet-wide figures of each client (Redis + unflushed deltas); this replica's own when Redis fails. */
  async read(clientIds: readonly string[]): Promise<UsageBook[]> {
    const redis = this.#o.redis;
    if (!redis) return clientIds.map((id) => this.local(id));
    try {
      while (this.#flushing) await this.#flushing;
      // From here to the reads' send, nothing else runs: the snapshot and the reads agree.
      // Unconfirmed batches count as not in Redis yet (if one did land late, the figures are high until it is confirmed).
      const snapshot = new Map<string, Rows>();
      for (const id of clientIds) {
        const rows: Book = new Map();
        for (const [rk, f] of this.#pending.get(id) ?? []) add(rows, id, rk, f);
        for (const [rk, f] of this.#unconfirmed.get(id)?.rows ?? []) add(rows, id, rk, f);
        snapshot.set(id, rows.get(id) ?? new Map());
      }
      // One HGETALL per key, not one pipeline: a Cluster pipeline must stay on one node.
      const hashes = await withDeadline(Promise.all(clientIds.map((id) => redis.hgetall(this.#keys.usage(id)))), this.#o.timeoutMs, ACCOUNTING_DEADLINE);
      if (this.#readFailing) this.#o.logger.info('usage read from Redis again');
      this.#readFailing = false;
      return clientIds.map((id, i) => {
        const rows: Rows = snapshot.get(id)!;
        for (const [field, value] of Object.entries(hashes[i] ?? {})) {
          const cut = field.lastIndexOf('|');
          const rk = field.slice(0, cut);
          const fig = field.slice(cut + 1) as (typeof FIGURES)[number];
          if (!(FIGURES as readonly string[]).includes(fig)) continue;
          const cur = rows.get(rk) ?? zero();
          cur[fig] += Number(value);
          rows.set(rk, cur);
        }
        return toBook(id, rows, true);
      });
    } catch (e) {
      // Once per failing period, not once per read: a client can ask for usage many times in one operation.
      if (!this.#readFailing)
        this.#o.logger.warn({ reason: (e as Error)?.message }, "usage could not be read from Redis; answering with this replica's figures");
      this.#readFailing = true;
      return clientIds.map((id) => this.local(id));
    }
  }

  /** Every client with recorded usage: Redis' set plus this replica's. */
  async clientIds(): Promise<string[]> {
    const ids = new Set(this.localClientIds());
    if (this.#o.redis) {
      try {
        for (const id of await withDeadline(this.#o.redis.smembers(this.#keys.clients), this.#o.timeoutMs, ACCOUNTING_DEADLINE)) ids.add(id);
      } catch {
        // Local ids only.
      }
    }
    return [...ids];
  }

  /** Stops the timer and flushes what is left. */
  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }
}
