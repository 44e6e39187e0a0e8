/**
 * The durable usage books: every replica writes what it served to PostgreSQL, exactly once, as rows per
 * hour × client × model × source × surface (the book of record; src/accounting/ledger.ts keeps the live
 * totals in Redis beside it).
 *
 * A replica adds what each request delivered to its pending rows. Every `flushMs` it cuts them into a
 * numbered batch — id (replica, seq), the replica a random name per process — and delivers the batches
 * it holds, oldest first, each in one transaction: the batch goes into `usage_batches` under its id as the
 * primary key (ON CONFLICT DO NOTHING), and only when that inserted a row are its rows added to
 * `usage_hourly`. A retry, a late COMMIT whose answer was lost, or a second deliverer therefore adds a
 * batch once at most; a transaction cut off by a crash adds nothing and the batch is delivered again.
 *
 * Until the database confirms a batch it is kept in memory (at most `maxUnconfirmed` batches; after that
 * new usage accumulates in the pending rows, which are bounded by the distinct row keys) and, with Redis,
 * in the outbox hash `<prefix>usage:outbox` (keys.ts). A replica that dies leaves its batches there; its
 * liveness key expires, and any other replica delivers them (`delivered_by` records who). Redis losing the
 * outbox loses nothing while the owner lives (it still holds its batches and writes them again); the
 * owner dying while Redis is empty and the database down is the one case that loses batches.
 *
 * A replica killed outright (SIGKILL, OOM) loses what it recorded since its last cut (≤ `flushMs`); a
 * clean stop delivers what it can and leaves the rest in the outbox.
 */
import { randomBytes } from 'node:crypto';
import type { Figures } from '../accounting/ledger.ts';
import { AccountingKeys } from '../accounting/keys.ts';
import type { Surface } from '../accounting/metrics.ts';
import { ACCOUNTING_DEADLINE, type AccountingRedis } from '../accounting/redis-client.ts';
import type { Logger } from '../log.ts';
import { withDeadline } from '../redis/deadline.ts';
import type { Source } from '../service/types.ts';
import type { UsageDatabase } from './database.ts';

export const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

/** One row of a batch: figures of one hour × client × model × source × surface. */
export interface BatchRow extends Figures {
  /** Start of the hour, ms since the epoch (UTC). */
  hour: number;
  client: string;
  model: string;
  source: Source;
  surface: Surface;
}

export interface Batch {
  replica: string;
  seq: number;
  rows: BatchRow[];
}

interface Held extends Batch {
  /** Written to the Redis outbox (so another replica can deliver it if this one dies). */
  inOutbox: boolean;
}

export interface UsageBooksOptions {
  db: UsageDatabase;
  /** Redis of the outbox; unset: batches wait in this replica's memory only. */
  redis?: AccountingRedis | undefined;
  keyPrefix: string;
  flushMs: number;
  maxUnconfirmed: number;
  /** Deadline of one Redis command. */
  redisTimeoutMs: number;
  retentionDays: number;
  batchRetentionDays: number;
  logger: Logger;
  /** Milliseconds since the epoch. Default `Date.now`. */
  clock?: () => number;
  /** Called after every flush with the number of batches the database has not confirmed. */
  onUnconfirmed?: (n: number) => void;
}

const INSERT_BATCH = `INSERT INTO usage_batches (replica, seq, delivered_by, body) VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING`;

// Rows in key order, so two replicas' transactions lock shared rows in the same order (no deadlock).
const ADD_ROWS = `
INSERT INTO usage_hourly AS u (hour, client_id, model, source, surface, items, tokens, inference_ms, cost)
SELECT to_timestamp(r.hour / 1000.0), r.client, r.model, r.source, r.surface, r.items, r.tokens, r."inferenceMs", r.cost
FROM jsonb_to_recordset($1::jsonb) AS r(hour bigint, client text, model text, source text, surface text, items bigint, tokens bigint, "inferenceMs" numeric, cost numeric)
ORDER BY r.client, r.hour, r.model, r.source, r.surface
ON CONFLICT (client_id, hour, model, source, surface) DO UPDATE SET
  items = u.items + EXCLUDED.items,
  tokens = u.tokens + EXCLUDED.tokens,
  inference_ms = u.inference_ms + EXCLUDED.inference_ms,
  cost = u.cost + EXCLUDED.cost`;

/** Most outbox entries of other replicas delivered per scan. */
const ORPHANS_PER_SCAN = 500;

export class UsageBooks {
  readonly replica = randomBytes(6).toString('hex');
  readonly #o: UsageBooksOptions;
  readonly #keys: AccountingKeys;
  readonly #clock: () => number;
  #pending = new Map<string, BatchRow>();
  readonly #held: Held[] = [];
  #seq = 0;
  #flushing: Promise<void> | undefined;
  #delivering: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #failing = false;
  #outboxFailing = false;
  #lastOrphanScan = 0;
  #lastPrune = 0;
  #closed = false;
  /** Batches this replica added (its own and others'), and found already added. */
  readonly deliveries = { added: 0, duplicate: 0, orphans: 0 };

  constructor(options: UsageBooksOptions) {
    this.#o = options;
    this.#keys = new AccountingKeys(options.keyPrefix);
    this.#clock = options.clock ?? Date.now;
  }

  /** How long this replica's liveness key lives: a few flushes, and never under 5 s. */
  get #aliveMs(): number {
    return Math.max(5000, 5 * this.#o.flushMs);
  }

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => void this.flush(), this.#o.flushMs);
    this.#timer.unref();
  }

  record(clientId: string, model: string, source: Source, surface: Surface, f: Figures): void {
    const hour = Math.floor(this.#clock() / HOUR_MS) * HOUR_MS;
    const key = `${hour}|${clientId}|${model}|${source}|${surface}`;
    const row = this.#pending.get(key);
    if (row) {
      row.items += f.items;
      row.tokens += f.tokens;
      row.inferenceMs += f.inferenceMs;
      row.cost += f.cost;
    } else {
      this.#pending.set(key, { hour, client: clientId, model, source, surface, items: f.items, tokens: f.tokens, inferenceMs: f.inferenceMs, cost: f.cost });
    }
  }

  /** Batches the database has not confirmed yet (what `polyray_usage_unconfirmed_batches` shows). */
  get unconfirmed(): number {
    return this.#held.length;
  }

  /** Cost this replica recorded for the client in hours from `fromMs` on that the database does not hold yet. */
  localSpend(clientId: string, fromMs: number): number {
    let cost = 0;
    for (const r of this.#pending.values()) if (r.client === clientId && r.hour >= fromMs) cost += r.cost;
    for (const b of this.#held) for (const r of b.rows) if (r.client === clientId && r.hour >= fromMs) cost += r.cost;
    return cost;
  }

  /**
   * Cuts the pending rows into a batch, writes new batches to the outbox, and starts a delivery unless one
   * is running. A slow or hung database holds only the delivery: cuts and outbox writes go on, so what a
   * replica recorded is in Redis within a flush whatever the database does. Resolves when the cut and the
   * outbox write are done; `delivered()` waits for the delivery too.
   */
  async flush(): Promise<void> {
    while (this.#flushing) await this.#flushing;
    this.#flushing = this.#cutAndStore().finally(() => {
      this.#flushing = undefined;
    });
    await this.#flushing;
    this.#delivering ??= this.#deliverAll().finally(() => {
      this.#delivering = undefined;
    });
  }

  /** Flushes, then waits for the delivery (of everything held, as far as the database accepts it). */
  async delivered(): Promise<void> {
    await this.flush();
    while (this.#delivering) await this.#delivering;
  }

  async #cutAndStore(): Promise<void> {
    if (this.#pending.size > 0 && this.#held.length < this.#o.maxUnconfirmed) {
      this.#held.push({ replica: this.replica, seq: ++this.#seq, rows: [...this.#pending.values()], inOutbox: false });
      this.#pending = new Map();
    }
    await this.#toOutbox();
  }

  async #deliverAll(): Promise<void> {
    let done = 0;
    // Oldest first; batches cut while this runs are delivered in the same pass.
    while (done < this.#held.length) {
      const b = this.#held[done]!;
      try {
        await this.#deliver(b, this.replica);
        done++;
      } catch (e) {
        if (!this.#failing) {
          this.#o.logger.warn(
            { reason: (e as Error).message, unconfirmed: this.#held.length },
            'usage batches could not be written to the database; keeping them (and in Redis) and retrying',
          );
        }
        this.#failing = true;
        break;
      }
    }
    if (done > 0) {
      if (this.#failing) this.#o.logger.info({ delivered: done }, 'usage batches written to the database again');
      this.#failing = false;
      const confirmed = this.#held.splice(0, done);
      const inOutbox = confirmed.filter((b) => b.inOutbox).map((b) => `${b.replica}:${b.seq}`);
      if (inOutbox.length > 0 && this.#o.redis) {
        // A failed HDEL leaves entries a later scan finds already added (duplicate) and removes.
        await withDeadline(this.#o.redis.hdel(this.#keys.usageOutbox, ...inOutbox), this.#o.redisTimeoutMs, ACCOUNTING_DEADLINE).catch(() => undefined);
      }
    }
    this.#o.onUnconfirmed?.(this.#held.length);
    const now = this.#clock();
    if (!this.#failing && this.#o.redis && now - this.#lastOrphanScan >= this.#aliveMs) {
      this.#lastOrphanScan = now;
      await this.#deliverOrphans().catch((e: unknown) =>
        this.#o.logger.warn({ reason: (e as Error).message }, 'orphaned usage batches could not be delivered yet'),
      );
    }
    if (!this.#failing && now - this.#lastPrune >= HOUR_MS) {
      this.#lastPrune = now;
      await this.#prune().catch((e: unknown) => this.#o.logger.warn({ reason: (e as Error).message }, 'old usage rows could not be pruned'));
    }
  }

  /** Writes batches not yet in the outbox there, and refreshes this replica's liveness key. */
  async #toOutbox(): Promise<void> {
    const redis = this.#o.redis;
    if (!redis || this.#closed) return;
    const fresh = this.#held.filter((b) => !b.inOutbox);
    try {
      const t = this.#o.redisTimeoutMs;
      await withDeadline(redis.set(this.#keys.usageAlive(this.replica), '1', 'PX', this.#aliveMs), t, ACCOUNTING_DEADLINE);
      if (fresh.length > 0) {
        const fields: string[] = [];
        for (const b of fresh) fields.push(`${b.replica}:${b.seq}`, JSON.stringify({ replica: b.replica, seq: b.seq, rows: b.rows }));
        await withDeadline(redis.hset(this.#keys.usageOutbox, ...fields), t, ACCOUNTING_DEADLINE);
        for (const b of fresh) b.inOutbox = true;
        // A delivery confirmed some of them while this write was on its way: it did not know to delete them.
        const confirmed = fresh.filter((b) => !this.#held.includes(b)).map((b) => `${b.replica}:${b.seq}`);
        if (confirmed.length > 0) await withDeadline(redis.hdel(this.#keys.usageOutbox, ...confirmed), t, ACCOUNTING_DEADLINE).catch(() => undefined);
      }
      this.#outboxFailing = false;
    } catch (e) {
      if (!this.#outboxFailing) this.#o.logger.warn({ reason: (e as Error).message }, 'usage outbox in Redis not reachable; batches wait in memory only');
      this.#outboxFailing = true;
    }
  }

  /** Redis lost its data: write every batch held to the outbox again. */
  outboxLost(): void {
    for (const b of this.#held) b.inOutbox = false;
  }

  /** One transaction: the batch under its id, and its rows only if the id was new. */
  async #deliver(b: Batch, deliveredBy: string): Promise<'added' | 'duplicate'> {
    const client = await this.#o.db.connect();
    let broken: Error | undefined;
    // A checked-out client has no pool listener: its connection ended between two queries (the database
    // shutting down) is an 'error' event, which unheard would end the process. Heard, the next query fails.
    const onError = (e: Error): void => {
      broken ??= e;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const body = JSON.stringify(b.rows);
      const inserted = await client.query(INSERT_BATCH, [b.replica, b.seq, deliveredBy, body]);
      if (inserted.rowCount === 0) {
        await client.query('ROLLBACK');
        this.deliveries.duplicate++;
        return 'duplicate';
      }
      await client.query(ADD_ROWS, [body]);
      await client.query('COMMIT');
      this.deliveries.added++;
      return 'added';
    } catch (e) {
      broken = e as Error;
      // The connection may be mid-transaction or gone: it is not returned to the pool (release(err) ends it).
      throw e;
    } finally {
      client.off('error', onError);
      client.release(broken);
    }
  }

  /**
   * Delivers outbox batches of replicas whose liveness key is gone (stopped or killed), and removes this
   * replica's own entries that it no longer holds (confirmed, but their HDEL failed).
   */
  async #deliverOrphans(): Promise<void> {
    const redis = this.#o.redis!;
    const t = this.#o.redisTimeoutMs;
    const alive = new Map<string, boolean>();
    let cursor = '0';
    let seen = 0;
    do {
      const [next, flat] = await withDeadline(redis.hscan(this.#keys.usageOutbox, cursor, 'COUNT', 200), t, ACCOUNTING_DEADLINE);
      cursor = next;
      for (let i = 0; i + 1 < flat.length && seen < ORPHANS_PER_SCAN; i += 2) {
        const field = flat[i]!;
        const owner = field.slice(0, field.indexOf(':'));
        if (owner === this.replica) {
          // Its own batch: still held, or confirmed and left by an HDEL that failed (delivered again below,
          // found a duplicate, and removed; else it would stay while this replica lives).
          const seq = Number(field.slice(owner.length + 1));
          if (this.#held.some((b) => b.seq === seq)) continue;
        } else if (!alive.has(owner)) alive.set(owner, (await withDeadline(redis.exists(this.#keys.usageAlive(owner)), t, ACCOUNTING_DEADLINE)) === 1);
        if (owner !== this.replica && alive.get(owner)) continue;
        seen++;
        let batch: Batch;
        try {
          batch = JSON.parse(flat[i + 1]!) as Batch;
        } catch {
          this.#o.logger.error({ field }, 'unreadable usage batch in the outbox; left there');
          continue;
        }
        const outcome = await this.#deliver(batch, this.replica);
        if (outcome === 'added') this.deliveries.orphans++;
        await withDeadline(redis.hdel(this.#keys.usageOutbox, field), t, ACCOUNTING_DEADLINE);
        if (outcome === 'added') this.#o.logger.info({ replica: owner, seq: batch.seq }, "delivered a stopped replica's usage batch");
      }
    } while (cursor !== '0' && seen < ORPHANS_PER_SCAN);
  }

  async #prune(): Promise<void> {
    const now = this.#clock();
    await this.#o.db.query('DELETE FROM usage_hourly WHERE hour < to_timestamp($1 / 1000.0)', [now - this.#o.retentionDays * DAY_MS]);
    await this.#o.db.query('DELETE FROM usage_batches WHERE received_at < to_timestamp($1 / 1000.0)', [now - this.#o.batchRetentionDays * DAY_MS]);
  }

  /** Stops the timer, delivers what it can, and lets others deliver the rest at once (liveness key removed). */
  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.delivered();
    this.#closed = true;
    if (this.#o.redis) {
      await withDeadline(this.#o.redis.del(this.#keys.usageAlive(this.replica)), this.#o.redisTimeoutMs, ACCOUNTING_DEADLINE).catch(() => undefined);
    }
  }
}
