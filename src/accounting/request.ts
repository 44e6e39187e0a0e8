/**
 * The accounting wrapper of one GraphQL request: the per-request Loaders call `embedMany` here instead
 * of on the service, so permission, quota and attribution happen in one place for every resolver.
 *
 *   embedMany(model, texts)
 *     1. FORBIDDEN unless the client may use the model
 *     2. joins the request's current *wave*: every embedMany of the request that starts before the next
 *        turn of the event loop (all DataLoader batches of one execution tick, across models and
 *        maxBatchSize chunks) is priced and reserved together, so an operation is admitted or refused
 *        as a whole and a refused one does no work at all (no cache read, no batch)
 *     3. reserve the wave's worst case (QUOTA_EXCEEDED + retryAfterMs if the bucket cannot pay)
 *     4. EmbeddingService.embedMany
 *     5. settle the actual cost (refund the difference), record the ledger and the metrics
 *
 * `finish()` (called by the Apollo plugin before the response leaves) waits for the settles and gives
 * `extensions.cost`.
 */
import { ErrorCode, PolyrayError, isPolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { EmbeddingService, EmbedResult, Source } from '../service/embedding.ts';
import type { ImageEmbedOptions, ImageInput, ImageResult, ImageService } from '../images/service.ts';
import type { ModelManifest } from '../runtime/manifest.ts';
import { mayUseModel, type Client, type ClientDirectory, type Role } from './clients.ts';
import type { CostModel } from './cost.ts';
import type { Figures, Ledger, UsageRow } from './ledger.ts';
import type { AccountingMetrics } from './metrics.ts';
import type { QuotaManager, QuotaSnapshot, Reservation } from './quota.ts';

export interface CostSummary {
  /** Worst-case cost reserved before work started (sum over the request's waves). */
  estimated: number;
  /** Actual cost charged. */
  charged: number;
  /** Units left in the client's bucket after this request. */
  remaining: number;
  /** Milliseconds until the bucket is full again. */
  resetMs: number;
}

export interface QuotaView {
  rate: number;
  burst: number;
  remaining: number;
  resetMs: number;
  store: 'REDIS' | 'LOCAL' | 'UNAVAILABLE';
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
  readonly service: EmbeddingService;
  /** Image embeddings (image inputs, post images, head features); absent when images are not served. */
  readonly images?: Pick<ImageService, 'embedImages'>;
  readonly quota: QuotaManager;
  readonly ledger: Ledger;
  readonly metrics: AccountingMetrics;
  readonly costModel: CostModel;
  readonly logger: Logger;
  directory(): ClientDirectory;
}

/** What resolvers see of the account (`ctx.account`). */
export interface AccountContext {
  readonly client: Client;
  embedMany(model: string, texts: readonly string[]): Promise<(EmbedResult | PolyrayError)[]>;
  embedImages(model: string, inputs: readonly ImageInput[], options?: ImageEmbedOptions): Promise<(ImageResult | PolyrayError)[]>;
  usage(clientId?: string | null): Promise<ClientUsage>;
  usageAll(): Promise<ClientUsage[]>;
  finish(): Promise<CostSummary>;
}

/** One service call waiting in a wave: how to price it before, run it, and what it returned. */
interface Call {
  model: string;
  /** Worst-case cost, from the model's manifest. */
  estimate: (m: ModelManifest) => number;
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
  #snapshot: QuotaSnapshot | undefined;

  constructor(core: AccountingCore, client: Client) {
    this.#core = core;
    this.client = client;
  }

  embedMany(model: string, texts: readonly string[]): Promise<(EmbedResult | PolyrayError)[]> {
    const { service, costModel } = this.#core;
    return this.#enqueue(
      model,
      (m) => costModel.estimate(m, texts),
      () => service.embedMany(model, texts, { clientId: this.client.id }),
    );
  }

  /** Image embeddings through the same permission → reserve → run → settle path as texts. */
  embedImages(model: string, inputs: readonly ImageInput[], options: ImageEmbedOptions = {}): Promise<(ImageResult | PolyrayError)[]> {
    const images = this.#core.images;
    if (!images) return Promise.reject(new PolyrayError(ErrorCode.MODEL_NOT_READY, 'Images are not served by this replica'));
    const { costModel } = this.#core;
    return this.#enqueue(
      model,
      (m) => costModel.imageEstimate(m, inputs.length),
      () => images.embedImages(model, inputs, { ...options, clientId: this.client.id }),
    ) as Promise<(ImageResult | PolyrayError)[]>;
  }

  #enqueue(model: string, estimate: Call['estimate'], run: Call['run']): Promise<(EmbedResult | PolyrayError)[]> {
    if (!mayUseModel(this.client, model)) {
      return Promise.reject(new PolyrayError(ErrorCode.FORBIDDEN, `This client may not use model "${model.slice(0, 64)}"`, { model: model.slice(0, 64) }));
    }
    return new Promise((resolve, reject) => {
      if (!this.#wave) {
        this.#wave = [];
        this.#track(new Promise<void>((r) => setImmediate(r)).then(() => this.#runWave()));
      }
      this.#wave.push({ model, estimate, run, resolve, reject });
    });
  }

  #track(p: Promise<void>): void {
    this.#work.add(p);
    void p.finally(() => this.#work.delete(p));
  }

  async #runWave(): Promise<void> {
    const calls = this.#wave ?? [];
    this.#wave = undefined;
    const { service, quota } = this.#core;
    const priced: { call: Call; costFactor: number; maxTokens: number }[] = [];
    let estimate = 0;
    for (const call of calls) {
      try {
        const m = service.resolveModel(call.model).manifest;
        estimate += call.estimate(m);
        priced.push({ call, costFactor: m.costFactor, maxTokens: m.maxTokens });
      } catch (e) {
        call.reject(e);
      }
    }
    if (priced.length === 0) return;
    this.#estimated += estimate;
    let reservation: Reservation;
    try {
      reservation = await quota.reserve(this.client.id, this.client.quota, estimate);
    } catch (e) {
      if (isPolyrayError(e) && e.code === ErrorCode.QUOTA_EXCEEDED) this.#core.metrics.quotaRejections.inc({ client: this.#core.metrics.clientLabel(this.client.id) });
      for (const { call } of priced) call.reject(e);
      return;
    }
    this.#snapshot = reservation.snapshot;
    let actual = 0;
    try {
      await Promise.all(
        priced.map(async ({ call, costFactor, maxTokens }) => {
          let results: (EmbedResult | PolyrayError)[];
          try {
            results = await call.run();
          } catch (e) {
            call.reject(e);
            return;
          }
          actual += this.#record(call.model, { costFactor, maxTokens }, results);
          call.resolve(results);
        }),
      );
    } finally {
      this.#charged += actual;
      this.#snapshot = await quota.settle(reservation, actual);
    }
  }

  /** Ledger + metrics for one embedMany's results; returns their cost. */
  #record(model: string, m: { costFactor: number; maxTokens: number }, results: readonly (EmbedResult | PolyrayError)[]): number {
    const { costModel, ledger, metrics } = this.#core;
    const bySource = new Map<Source, Figures>();
    let total = 0;
    for (const r of results) {
      if (r instanceof PolyrayError) continue;
      // Image results count model input pixels where text results count tokens.
      const pixels = 'pixels' in r ? (r as ImageResult).pixels : undefined;
      const units = pixels ?? r.tokens;
      const cost = pixels === undefined ? costModel.itemCost(m, r.source, r.tokens) : costModel.imageItemCost(m, r.source, pixels);
      total += cost;
      const f = bySource.get(r.source) ?? { items: 0, tokens: 0, inferenceMs: 0, cost: 0 };
      f.items++;
      f.tokens += units;
      f.inferenceMs += r.inferenceMs;
      f.cost += cost;
      bySource.set(r.source, f);
      metrics.item(this.client.id, model, r.source, units, r.inferenceMs, cost);
    }
    for (const [source, f] of bySource) ledger.record(this.client.id, model, source, f);
    return total;
  }

  async finish(): Promise<CostSummary> {
    while (this.#work.size > 0) await Promise.allSettled([...this.#work]);
    this.#snapshot ??= await this.#core.quota.peek(this.client.id, this.client.quota);
    return { estimated: round(this.#estimated), charged: round(this.#charged), remaining: round(this.#snapshot.remaining), resetMs: this.#snapshot.resetMs };
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
    const ids = new Set([...this.#core.directory().list().map((c) => c.id), ...(await this.#core.ledger.clientIds())]);
    const books = await this.#core.ledger.read([...ids].sort());
    return Promise.all(books.map((b) => this.#view(b.clientId, b)));
  }

  async #view(id: string, book: { rows: UsageRow[]; totals: Figures; fleetWide: boolean }): Promise<ClientUsage> {
    const c = this.#core.directory().get(id);
    let quota: QuotaView | null = null;
    if (c) {
      const s = await this.#core.quota.peek(c.id, c.quota);
      quota = { rate: c.quota.rate, burst: c.quota.burst, remaining: round(s.remaining), resetMs: s.resetMs, store: this.#core.quota.storeFor(c.id).toUpperCase() as QuotaView['store'] };
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
