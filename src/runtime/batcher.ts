/**
 * The per-model dynamic batcher: items from every request and client queue here and leave as padded
 * batches.
 *
 * A batch is dispatched when it is full (items or padded tokens) or when its oldest item has waited
 * `maxWaitUs`; dispatch then waits for a free worker, and items keep joining the queue meanwhile, so
 * batches grow with load and shrink to one item when the service is idle. Each batch is built around
 * the oldest waiting item with the items closest to it in length, so short inputs are not padded to
 * long ones and no item starves. The queue is bounded: a submit that does not fit fails with OVERLOADED.
 * A failed batch rejects every item in it and nothing of it reaches a cache.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import { DispatchQueue, type Pending } from './dispatch-queue.ts';
import type { InferencePool, Lease } from './pool.ts';
import type { FeedSpec } from './worker-protocol.ts';

export interface BatcherOptions {
  /** Most items in one run. Default 64. */
  maxItems: number;
  /** Most padded tokens (items × longest length) in one run. Default 1024. */
  maxTokens: number;
  /** How long the oldest item waits for company before dispatch, in microseconds. Default 0 (dispatch when a worker is free). */
  maxWaitUs: number;
  /** Most items queued; beyond it submits fail with OVERLOADED. Default 8192. */
  maxQueueItems: number;
}

export const DEFAULT_BATCHER_OPTIONS: BatcherOptions = { maxItems: 64, maxTokens: 1024, maxWaitUs: 0, maxQueueItems: 8192 };

export interface ModelIO {
  name: string;
  /** Input names: ids, mask, and optionally token type ids (zeros). */
  inputIds: string;
  attentionMask: string;
  tokenTypeIds?: string;
  output: string;
  dimensions: number;
}

export interface BatchItem {
  ids: readonly number[];
  mask: readonly number[];
  /** Opaque tag carried to the result, e.g. the client, for cost attribution. */
  tag?: string;
}

export interface ItemResult {
  vector: Float32Array;
  /** This item's share of the batch's measured inference time, by its share of the batch's tokens. */
  inferenceMs: number;
  batchSize: number;
  tokens: number;
}

export interface BatcherStats {
  queued: number;
  batches: number;
  items: number;
  paddedTokens: number;
  realTokens: number;
  rejected: number;
  failedBatches: number;
}

type Queued = Pending<BatchItem, ItemResult>;

const lengthOf = (q: Queued): number => Math.max(1, q.item.ids.length);

export class Batcher {
  readonly #o: BatcherOptions;
  readonly #io: ModelIO;
  readonly #queue: DispatchQueue<BatchItem, ItemResult>;
  readonly #stats: BatcherStats = { queued: 0, batches: 0, items: 0, paddedTokens: 0, realTokens: 0, rejected: 0, failedBatches: 0 };

  constructor(io: ModelIO, pool: Pick<InferencePool, 'acquire'>, options: Partial<BatcherOptions> = {}, now: () => number = () => performance.now()) {
    const o = { ...DEFAULT_BATCHER_OPTIONS, ...options };
    for (const k of ['maxItems', 'maxTokens', 'maxQueueItems'] as const) {
      if (!Number.isSafeInteger(o[k]) || o[k] < 1) throw new TypeError(`Batcher option ${k} must be an integer >= 1, received ${String(o[k])}`);
    }
    if (!Number.isFinite(o.maxWaitUs) || o.maxWaitUs < 0) throw new TypeError(`Batcher option maxWaitUs must be >= 0, received ${String(o.maxWaitUs)}`);
    this.#o = o;
    this.#io = io;
    this.#queue = new DispatchQueue<BatchItem, ItemResult>(
      {
        name: io.name,
        maxWaitUs: o.maxWaitUs,
        maxQueueItems: o.maxQueueItems,
        full: (queue) => this.#full(queue),
        take: (queue) => this.#take(queue),
        run: (batch, run) => this.#run(batch, run),
      },
      pool,
      now,
    );
  }

  /** Queues items; each promise settles with its own vector or the error of its batch. */
  submit(items: readonly BatchItem[]): Promise<ItemResult>[] {
    return this.#queue.submit(items);
  }

  #full(queue: readonly Queued[]): boolean {
    if (queue.length >= this.#o.maxItems) return true;
    let maxLen = 0;
    for (const q of queue) maxLen = Math.max(maxLen, lengthOf(q));
    return maxLen * queue.length >= this.#o.maxTokens;
  }

  /** The next batch: the oldest item plus the items nearest to it in length. */
  #take(queue: readonly Queued[]): { batch: Queued[]; rest: Queued[] } {
    const anchor = lengthOf(queue[0]!);
    const order = queue.map((q, i) => ({ len: lengthOf(q), i, d: Math.abs(lengthOf(q) - anchor) }));
    order.sort((a, b) => a.d - b.d || a.i - b.i);
    const picked = new Set<number>();
    let maxLen = 0;
    for (const { len, i } of order) {
      if (picked.size >= this.#o.maxItems) break;
      const nextMax = Math.max(maxLen, len);
      if (picked.size > 0 && nextMax * (picked.size + 1) > this.#o.maxTokens) continue;
      picked.add(i);
      maxLen = nextMax;
    }
    const batch: Queued[] = [];
    const rest: Queued[] = [];
    queue.forEach((q, i) => (picked.has(i) ? batch : rest).push(q));
    return { batch, rest };
  }

  async #run(batch: Queued[], run: Lease['run']): Promise<void> {
    const n = batch.length;
    const t = Math.max(...batch.map(lengthOf));
    const ids = new BigInt64Array(n * t);
    const mask = new BigInt64Array(n * t);
    let realTokens = 0;
    batch.forEach((q, r) => {
      const { ids: qi, mask: qm } = q.item;
      for (let j = 0; j < qi.length; j++) {
        ids[r * t + j] = BigInt(qi[j]!);
        mask[r * t + j] = BigInt(qm[j]!);
      }
      realTokens += qi.length;
    });
    const feeds: FeedSpec[] = [
      { name: this.#io.inputIds, type: 'int64', data: ids, dims: [n, t] },
      { name: this.#io.attentionMask, type: 'int64', data: mask, dims: [n, t] },
    ];
    if (this.#io.tokenTypeIds) feeds.push({ name: this.#io.tokenTypeIds, type: 'int64', data: new BigInt64Array(n * t), dims: [n, t] });
    this.#stats.batches++;
    this.#stats.items += n;
    this.#stats.paddedTokens += n * t;
    this.#stats.realTokens += realTokens;
    try {
      const res = await run(this.#io.name, feeds, this.#io.output);
      const d = this.#io.dimensions;
      if (res.dims.length !== 2 || res.dims[0] !== n || res.dims[1] !== d) {
        throw new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed for this batch; the request can be retried', {
          reason: 'output-shape',
        });
      }
      const tokenTotal = batch.reduce((s, q) => s + lengthOf(q), 0);
      batch.forEach((q, r) => {
        q.resolve({
          vector: res.data.slice(r * d, (r + 1) * d),
          inferenceMs: (res.runMs * lengthOf(q)) / tokenTotal,
          batchSize: n,
          tokens: q.item.ids.length,
        });
      });
    } catch (e) {
      this.#stats.failedBatches++;
      const err = e instanceof PolyrayError ? e : new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed for this batch; the request can be retried');
      for (const q of batch) q.reject(err);
    }
  }

  /** Stops accepting items and resolves once everything queued has run. */
  drain(): Promise<void> {
    return this.#queue.drain();
  }

  stats(): BatcherStats {
    return { ...this.#stats, queued: this.#queue.length, rejected: this.#queue.rejected };
  }
}
