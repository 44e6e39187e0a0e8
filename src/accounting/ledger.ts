/**
 * The usage ledger: client × model × source → items, tokens, inference milliseconds, cost units.
 *
 * Every replica records into local maps and flushes the deltas to Redis every `flushMs` (one MULTI of
 * HINCRBYFLOATs, so a flush lands whole or not at all; a failed flush is merged back and retried), so
 * the fleet keeps one set of books: hash `<prefix>usage:<clientId>`, fields `<model>|<SOURCE>|<figure>`,
 * and the set `<prefix>usage:clients`. A read combines Redis with the deltas not yet flushed: it waits
 * for a flush in flight, then snapshots the pending deltas and sends HGETALL in the same tick, on the
 * same connection as the flushes, so no delta is counted twice or missed.
 *
 * Without Redis (or when it does not answer) reads return this replica's own totals since start
 * (`fleetWide: false`).
 */
import type { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import type { Source } from '../service/embedding.ts';

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
  redis?: Redis | undefined;
  keyPrefix: string;
  flushMs: number;
  logger: Logger;
}

function zero(): Figures {
  return { items: 0, tokens: 0, inferenceMs: 0, cost: 0 };
}

function add(book: Book, clientId: string, rowKey: string, f: Figures): void {
  let rows = book.get(clientId);
  if (!rows) book.set(clientId, (rows = new Map()));
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
  #flushing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #failing = false;

  constructor(options: LedgerOptions) {
    this.#o = options;
  }

  get fleetWide(): boolean {
    return this.#o.redis !== undefined;
  }

  start(): void {
    if (!this.#o.redis || this.#timer) return;
    this.#timer = setInterval(() => void this.flush(), this.#o.flushMs);
    this.#timer.unref();
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

  #usageKey(clientId: string): string {
    return `${this.#o.keyPrefix}usage:${clientId}`;
  }

  get #clientsKey(): string {
    return `${this.#o.keyPrefix}usage:clients`;
  }

  /** Sends the pending deltas to Redis. Resolves when they are there (or merged back after a failure). */
  async flush(): Promise<void> {
    const redis = this.#o.redis;
    if (!redis) return;
    while (this.#flushing) await this.#flushing;
    if (this.#pending.size === 0) return;
    const batch = this.#pending;
    this.#pending = new Map();
    const multi = redis.multi();
    for (const [clientId, rows] of batch) {
      for (const [rk, f] of rows) {
        for (const k of FIGURES) if (f[k] !== 0) multi.hincrbyfloat(this.#usageKey(clientId), `${rk}|${k}`, f[k]);
      }
      multi.sadd(this.#clientsKey, clientId);
    }
    this.#flushing = multi
      .exec()
      .then((res) => {
        if (!res) throw new Error('transaction aborted');
        const failed = res.find(([err]) => err);
        if (failed) throw failed[0];
        if (this.#failing) this.#o.logger.info('usage ledger flushed to Redis again');
        this.#failing = false;
      })
      .catch((e: unknown) => {
        for (const [clientId, rows] of batch) for (const [rk, f] of rows) add(this.#pending, clientId, rk, f);
        if (!this.#failing) this.#o.logger.warn({ reason: (e as Error)?.message }, 'usage ledger could not be flushed to Redis; keeping the deltas and retrying');
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
      // From here to the pipeline's send, nothing else runs: the snapshot and the reads agree.
      const snapshot = new Map(clientIds.map((id) => [id, new Map([...(this.#pending.get(id) ?? new Map<string, Figures>())].map(([k, f]) => [k, { ...f }]))]));
      const p = redis.pipeline();
      for (const id of clientIds) p.hgetall(this.#usageKey(id));
      const res = (await p.exec()) ?? [];
      return clientIds.map((id, i) => {
        const [err, hash] = res[i] ?? [new Error('no reply'), null];
        if (err) throw err;
        const rows: Rows = snapshot.get(id)!;
        for (const [field, value] of Object.entries((hash ?? {}) as Record<string, string>)) {
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
      this.#o.logger.warn({ reason: (e as Error)?.message }, 'usage could not be read from Redis; answering with this replica\'s figures');
      return clientIds.map((id) => this.local(id));
    }
  }

  /** Every client with recorded usage: Redis' set plus this replica's. */
  async clientIds(): Promise<string[]> {
    const ids = new Set(this.localClientIds());
    if (this.#o.redis) {
      try {
        for (const id of await this.#o.redis.smembers(this.#clientsKey)) ids.add(id);
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
