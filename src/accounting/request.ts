/**
 * The account of one request: the client, its quota (reserve → settle) and the attribution of the work
 * the request scope (src/service/scope.ts) reports. It implements the scope's `Account`:
 *
 *   admit(handle, demand, run)
 *     1. joins the request's current *wave*: every admit of the request that starts before the next turn
 *        of the event loop (all DataLoader batches of one execution tick, across models and maxBatchSize
 *        chunks) is priced and reserved together, so an operation is admitted or refused as a whole and a
 *        refused one does no work at all (no cache read, no batch)
 *     2. reserves the wave's worst case (QUOTA_EXCEEDED + retryAfterMs if the bucket cannot pay)
 *     3. runs the pipeline call
 *     4. settles the actual cost (refunds the difference), records the ledger and the metrics
 *
 * `finish()` (called by the Apollo plugin before the response leaves) waits for the settles and gives
 * `extensions.cost`. Accounting knows nothing of the pipeline: results report their own work.
 */
import { ErrorCode, PolyrayError, isPolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { ImageHandle, TextHandle } from '../runtime/handle.ts';
import type { Account, Demand } from '../service/scope.ts';
import type { EmbedResult, Source } from '../service/types.ts';
import { mayUseModel, type Client, type ClientDirectory, type Role } from './clients.ts';
import type { CostModel } from './cost.ts';
import type { Figures, Ledger, UsageRow } from './ledger.ts';
import type { AccountingMetrics, Surface } from './metrics.ts';
import type { QuotaManager, QuotaSnapshot, Reservation } from './quota.ts';
import type { UsageBooks } from '../usage/books.ts';
import type { Budgets } from '../usage/budget.ts';
import { checkRange, type HistoryQuery, type HistoryRow, parseInstant } from '../usage/report.ts';
import { inSpan } from '../telemetry/tracing.ts';

export interface CostSummary {
  /** Worst-case cost reserved before work started (sum over the request's waves). */
  estimated: number;
  /** Actual cost charged. */
  charged: number;
  /**
   * Units taken from the quota for inputs refused as too large (each what the longest accepted input costs),
   * so that sending them is not a free stall; not in the usage books, which hold delivered work.
   */
  refused: number;
  /** Units left in the client's bucket after this request. */
  remaining: number;
  /** Milliseconds until the bucket is full again. */
  resetMs: number;
  /** Cost units left of the client's budget for this period; only for clients with a budget (and a usage database). */
  budgetRemaining?: number;
}

export interface QuotaView {
  rate: number;
  burst: number;
  remaining: number;
  resetMs: number;
  store: 'REDIS' | 'LOCAL' | 'UNAVAILABLE';
}

export interface UsageHistoryView {
  from: string;
  to: string;
  granularity: 'HOUR' | 'DAY' | 'MONTH';
  points: { clientId: string; start: string; items: number; tokens: number; inferenceMs: number; cost: number }[];
}

export interface ClientUsage {
  clientId: string;
  name: string;
  role: 'CLIENT' | 'ADMIN' | null;
  rows: UsageRow[];
  totals: Figures;
  quota: QuotaView | null;
  fleetWide: boolean;
}

/** What a request account needs from the server-wide accounting. */
export interface AccountingCore {
  readonly quota: QuotaManager;
  readonly ledger: Ledger;
  readonly metrics: AccountingMetrics;
  readonly costModel: CostModel;
  readonly logger: Logger;
  /** The usage database's books and budgets (src/usage); unset without one. */
  readonly books?: UsageBooks | undefined;
  readonly budgets?: Budgets | undefined;
  readonly budgetRejections?: { inc(labels: { client: string }): void } | undefined;
  directory(): ClientDirectory;
  /** Usage rows from the usage database (HISTORY_UNAVAILABLE without one); checks the range first. */
  history(q: HistoryQuery): Promise<HistoryRow[]>;
  /** Whether the usage database has rows of this client (one no longer in the clients file). */
  hasHistory(clientId: string): Promise<boolean>;
}

/** What resolvers see of the account (`ctx.account`). */
export interface AccountContext extends Account {
  readonly client: Client;
  usage(clientId?: string | null): Promise<ClientUsage>;
  usageAll(): Promise<ClientUsage[]>;
  usageHistory(args: { from: string; to: string; granularity?: 'HOUR' | 'DAY' | 'MONTH' | null; clientId?: string | null }): Promise<UsageHistoryView>;
  finish(): Promise<CostSummary>;
  /** `finish()`, then counts the request once under `outcome` (OK or its error code) and its surface. */
  close(outcome: string): Promise<CostSummary>;
}

/** One pipeline call waiting in a wave: how to price it, run it, and what it returned. */
interface Call {
  handle: TextHandle | ImageHandle;
  demand: Demand;
  run: () => Promise<(EmbedResult | PolyrayError)[]>;
  resolve: (r: (EmbedResult | PolyrayError)[]) => void;
  reject: (e: unknown) => void;
}

const round = (n: number): number => Math.round(n * 1e6) / 1e6;

export class RequestAccount implements AccountContext {
  readonly client: Client;
  readonly #core: AccountingCore;
  #wave: Call[] | undefined;
  readonly #work = new Set<Promise<void>>();
  #estimated = 0;
  #charged = 0;
  #refused = 0;
  #snapshot: QuotaSnapshot | undefined;

  /** The entry point the request came through (a label of the request and item metrics). */
  readonly surface: Surface;
  /** When the request was authenticated (performance.now()), for its duration. */
  readonly #started = performance.now();

  constructor(core: AccountingCore, client: Client, surface: Surface = 'graphql') {
    this.#core = core;
    this.client = client;
    this.surface = surface;
  }

  get clientId(): string {
    return this.client.id;
  }

  get cacheNamespace(): string | undefined {
    return this.client.cacheScope === 'private' ? this.client.id : undefined;
  }

  get showSource(): boolean {
    return this.client.role === 'admin' || this.client.showSource !== false;
  }

  mayUse(model: string): boolean {
    return mayUseModel(this.client, model);
  }

  admit<R extends EmbedResult>(handle: TextHandle | ImageHandle, demand: Demand, run: () => Promise<(R | PolyrayError)[]>): Promise<(R | PolyrayError)[]> {
    return new Promise((resolve, reject) => {
      if (!this.#wave) {
        this.#wave = [];
        this.#track(new Promise<void>((r) => setImmediate(r)).then(() => this.#runWave()));
      }
      this.#wave.push({ handle, demand, run, resolve: resolve as Call['resolve'], reject });
    });
  }

  #track(p: Promise<void>): void {
    this.#work.add(p);
    void p.finally(() => this.#work.delete(p));
  }

  async #runWave(): Promise<void> {
    const calls = this.#wave ?? [];
    this.#wave = undefined;
    if (calls.length === 0) return;
    const { quota, costModel } = this.#core;
    const estimate = calls.reduce(
      (sum, c) => sum + (c.demand.kind === 'texts' ? costModel.estimate(c.handle, c.demand.texts) : costModel.imageEstimate(c.handle, c.demand.count)),
      0,
    );
    this.#estimated += estimate;
    let reservation: Reservation;
    try {
      // A spent budget refuses the wave before the quota is touched (nothing reserved, nothing run).
      try {
        this.#core.budgets?.check(this.client);
      } catch (e) {
        this.#core.budgetRejections?.inc({ client: this.#core.metrics.clientLabel(this.client.id) });
        throw e;
      }
      reservation = await inSpan('polyray.quota.reserve', { 'polyray.cost.estimated': estimate }, () =>
        quota.reserve(this.client.id, this.client.quota, estimate),
      );
    } catch (e) {
      if (isPolyrayError(e) && e.code === ErrorCode.QUOTA_EXCEEDED)
        this.#core.metrics.quotaRejections.inc({ client: this.#core.metrics.clientLabel(this.client.id) });
      for (const call of calls) call.reject(e);
      return;
    }
    this.#snapshot = reservation.snapshot;
    let actual = 0;
    let refused = 0;
    try {
      await Promise.all(
        calls.map(async (call) => {
          let results: (EmbedResult | PolyrayError)[];
          try {
            results = await call.run();
          } catch (e) {
            call.reject(e);
            return;
          }
          actual += this.#record(call.handle, results);
          refused += this.#refusals(call.handle, results);
          call.resolve(results);
        }),
      );
    } finally {
      this.#charged += actual;
      this.#refused += refused;
      // Sent, not awaited: the answer reports the bucket as the adjustment leaves it (QuotaManager.settleLater).
      this.#snapshot = quota.settleLater(reservation, actual + refused, (send) =>
        inSpan('polyray.quota.settle', { 'polyray.cost.charged': actual + refused }, send),
      );
    }
  }

  /** What the inputs refused as too large take from the quota: each what the longest accepted input costs. */
  #refusals(m: TextHandle | ImageHandle, results: readonly (EmbedResult | PolyrayError)[]): number {
    let n = 0;
    for (const r of results) if (r instanceof PolyrayError && (r.code === ErrorCode.INPUT_TOO_LARGE || r.code === ErrorCode.IMAGE_TOO_LARGE)) n++;
    if (n === 0) return 0;
    const { costModel } = this.#core;
    return m.kind === 'text' ? n * m.maxTokens * m.costFactor : costModel.imageEstimate(m, n);
  }

  /** Ledger + metrics for one pipeline call's results; returns their cost. */
  #record(m: TextHandle | ImageHandle, results: readonly (EmbedResult | PolyrayError)[]): number {
    const model = m.name;
    const { costModel, ledger, metrics } = this.#core;
    const bySource = new Map<Source, Figures>();
    let total = 0;
    for (const r of results) {
      if (r instanceof PolyrayError) continue;
      // Image results count model input pixels where text results count tokens.
      const pixels = 'pixels' in r ? (r as EmbedResult & { pixels: number }).pixels : undefined;
      const units = pixels ?? r.tokens;
      // Computed by another request (a joined computation) or earlier in this one (a repeat): this request
      // computed nothing, and is charged and booked as a memory hit.
      const source: Source = r.source === 'COMPUTED' && units === 0 ? 'MEMORY' : r.source;
      const cost = pixels === undefined ? costModel.itemCost(m, source, r.tokens) : costModel.imageItemCost(m, source, pixels);
      total += cost;
      const f = bySource.get(source) ?? { items: 0, tokens: 0, inferenceMs: 0, cost: 0 };
      f.items++;
      f.tokens += units;
      f.inferenceMs += r.inferenceMs;
      f.cost += cost;
      bySource.set(source, f);
    }
    // One update per source, not per item: a call of 64 hits is one metrics update and one ledger record.
    for (const [source, f] of bySource) {
      metrics.served(this.client.id, this.surface, model, source, f.items, f.tokens, f.inferenceMs, f.cost);
      ledger.record(this.client.id, model, source, f);
      this.#core.books?.record(this.client.id, model, source, this.surface, f);
    }
    return total;
  }

  async finish(): Promise<CostSummary> {
    while (this.#work.size > 0) await Promise.allSettled([...this.#work]);
    this.#snapshot ??= await this.#core.quota.peek(this.client.id, this.client.quota);
    const budget = this.#core.budgets?.status(this.client);
    return {
      estimated: round(this.#estimated),
      charged: round(this.#charged),
      refused: round(this.#refused),
      remaining: round(this.#snapshot.remaining),
      resetMs: this.#snapshot.resetMs,
      ...(budget ? { budgetRemaining: round(budget.remaining) } : {}),
    };
  }

  async close(outcome: string): Promise<CostSummary> {
    try {
      return await this.finish();
    } finally {
      const { metrics } = this.#core;
      const code = metrics.codeLabel(outcome);
      metrics.requests.inc({ client: metrics.clientLabel(this.client.id), code, surface: this.surface });
      metrics.requestSeconds.observe({ surface: this.surface, code }, (performance.now() - this.#started) / 1000);
    }
  }

  async usage(clientId?: string | null): Promise<ClientUsage> {
    const target = clientId ?? this.client.id;
    if (target !== this.client.id && this.client.role !== 'admin') {
      throw new PolyrayError(ErrorCode.FORBIDDEN, 'A client may read only its own usage; omit clientId', { argument: 'clientId' });
    }
    const known = this.#core.directory().get(target);
    if (!known && !(await this.#core.ledger.clientIds()).includes(target)) {
      throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `Unknown client "${target.slice(0, 64)}"`, { argument: 'clientId' });
    }
    const [book] = await this.#core.ledger.read([target]);
    return this.#view(target, book!);
  }

  async usageAll(): Promise<ClientUsage[]> {
    if (this.client.role !== 'admin') throw new PolyrayError(ErrorCode.FORBIDDEN, 'Only admin clients may read the usage of all clients');
    const ids = new Set([
      ...this.#core
        .directory()
        .list()
        .map((c) => c.id),
      ...(await this.#core.ledger.clientIds()),
    ]);
    const books = await this.#core.ledger.read([...ids].sort());
    return Promise.all(books.map((b) => this.#view(b.clientId, b)));
  }

  async usageHistory(args: { from: string; to: string; granularity?: 'HOUR' | 'DAY' | 'MONTH' | null; clientId?: string | null }): Promise<UsageHistoryView> {
    const admin = this.client.role === 'admin';
    const target = args.clientId ?? (admin ? undefined : this.client.id);
    if (target !== undefined && target !== this.client.id && !admin) {
      throw new PolyrayError(ErrorCode.FORBIDDEN, 'A client may read only its own usage history; omit clientId', { argument: 'clientId' });
    }
    const granularity = args.granularity ?? 'DAY';
    const q: HistoryQuery = {
      from: parseInstant(args.from, 'from'),
      to: parseInstant(args.to, 'to'),
      by: granularity.toLowerCase() as 'hour' | 'day' | 'month',
      clientId: target,
    };
    checkRange(q, Number.POSITIVE_INFINITY);
    if (target !== undefined && !this.#core.directory().get(target) && !(await this.#core.hasHistory(target))) {
      throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `Unknown client "${target.slice(0, 64)}"`, { argument: 'clientId' });
    }
    const rows = await this.#core.history(q);
    return {
      from: q.from.toISOString(),
      to: q.to.toISOString(),
      granularity,
      points: rows.map((r) => ({
        clientId: r.clientId,
        start: r.key,
        items: r.items,
        tokens: r.tokens,
        inferenceMs: round(r.inferenceMs),
        cost: round(r.cost),
      })),
    };
  }

  async #view(id: string, book: { rows: UsageRow[]; totals: Figures; fleetWide: boolean }): Promise<ClientUsage> {
    const c = this.#core.directory().get(id);
    let quota: QuotaView | null = null;
    if (c) {
      const s = await this.#core.quota.peek(c.id, c.quota);
      quota = {
        rate: c.quota.rate,
        burst: c.quota.burst,
        remaining: round(s.remaining),
        resetMs: s.resetMs,
        store: this.#core.quota.storeFor(c.id).toUpperCase() as QuotaView['store'],
      };
    }
    const roundF = (f: Figures): Figures => ({ items: f.items, tokens: f.tokens, inferenceMs: round(f.inferenceMs), cost: round(f.cost) });
    return {
      clientId: id,
      name: c?.name ?? id,
      role: c ? (c.role.toUpperCase() as Uppercase<Role>) : null,
      rows: book.rows.map((r) => ({ ...r, ...roundF(r) })),
      totals: roundF(book.totals),
      quota,
      fleetWide: book.fleetWide,
    };
  }
}
