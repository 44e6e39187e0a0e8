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
import type { InferencePool, Lease } from './pool.ts';
import type { FeedSpec } from './worker-protocol.ts';

export interface BatcherOptions {
  /** Most items in one run. Default 64. */
  maxItems: number;
  /** Most padded tokens (items × longest length) in one run. Default 16384. */
  maxTokens: number;
  /** How long the oldest item waits for company before dispatch, in microseconds. Default 2000. */
  maxWaitUs: number;
  /** Most items queued; beyond it submits fail with OVERLOADED. Default 8192. */
  maxQueueItems: number;
}

export const DEFAULT_BATCHER_OPTIONS: BatcherOptions = { maxItems: 64, maxTokens: 16384, maxWaitUs: 2000, maxQueueItems: 8192 };

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

interface Queued {
  item: BatchItem;
  len: number;
  enqueuedAt: number;
  resolve: (r: ItemResult) => void;
  reject: (e: Error) => void;
}

type BatcherState = { kind: 'open' } | { kind: 'draining'; done: Promise<void> } | { kind: 'closed' };

export class Batcher {
  readonly #o: BatcherOptions;
  readonly #io: ModelIO;
  readonly #pool: InferencePool;
  readonly #now: () => number;
  #queue: Queued[] = [];
  #timer: NodeJS.Timeout | undefined;
  #acquiring = false;
  #inFlight = 0;
  #state: BatcherState = { kind: 'open' };
  #idleWaiters: (() => void)[] = [];
  readonly #stats: BatcherStats = { queued: 0, batches: 0, items: 0, paddedTokens: 0, realTokens: 0, rejected: 0, failedBatches: 0 };

  constructor(io: ModelIO, pool: InferencePool, options: Partial<BatcherOptions> = {}, now: () => number = () => performance.now()) {
    const o = { ...DEFAULT_BATCHER_OPTIONS, ...options };
    for (const k of ['maxItems', 'maxTokens', 'maxQueueItems'] as const) {
      if (!Number.isSafeInteger(o[k]) || o[k] < 1) throw new TypeError(`Batcher option ${k} must be an integer >= 1, received ${String(o[k])}`);
    }
    if (!Number.isFinite(o.maxWaitUs) || o.maxWaitUs < 0) throw new TypeError(`Batcher option maxWaitUs must be >= 0, received ${String(o.maxWaitUs)}`);
    this.#o = o;
    this.#io = io;
    this.#pool = pool;
    this.#now = now;
  }

  /** Queues items; each promise settles with its own vector or the error of its batch. */
  submit(items: readonly BatchItem[]): Promise<ItemResult>[] {
    if (this.#state.kind !== 'open') {
      const e = new PolyrayError(ErrorCode.SHUTTING_DOWN, 'The service is shutting down; retry on another replica');
      return items.map(() => Promise.reject(e));
    }
    if (this.#queue.length + items.length > this.#o.maxQueueItems) {
      this.#stats.rejected += items.length;
      const e = new PolyrayError(ErrorCode.OVERLOADED, `The ${this.#io.name} queue is full (${this.#o.maxQueueItems} items); retry later`, {
        retryAfterMs: 100,
      });
      return items.map(() => Promise.reject(e));
    }
    const now = this.#now();
    const promises = items.map(
      (item) =>
        new Promise<ItemResult>((resolve, reject) => {
          this.#queue.push({ item, len: Math.max(1, item.ids.length), enqueuedAt: now, resolve, reject });
        }),
    );
    this.#schedule();
    return promises;
  }

  #full(): boolean {
    if (this.#queue.length >= this.#o.maxItems) return true;
    let maxLen = 0;
    for (const q of this.#queue) if (q.len > maxLen) maxLen = q.len;
    return maxLen * this.#queue.length >= this.#o.maxTokens;
  }

  #schedule(): void {
    if (this.#queue.length === 0 || this.#acquiring) return;
    const waitedUs = (this.#now() - this.#queue[0]!.enqueuedAt) * 1000;
    if (this.#full() || waitedUs >= this.#o.maxWaitUs || this.#state.kind === 'draining') {
      if (this.#timer) clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#dispatch();
    } else if (!this.#timer) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#schedule();
      }, Math.max(0, (this.#o.maxWaitUs - waitedUs) / 1000));
    }
  }

  #dispatch(): void {
    this.#acquiring = true;
    this.#pool.acquire().then(
      (lease) => {
        this.#acquiring = false;
        const batch = this.#take();
        if (batch.length === 0) {
          lease.release();
          this.#notifyIdle();
          return;
        }
        this.#inFlight++;
        this.#run(batch, lease.run.bind(lease)).finally(() => {
          lease.release();
          this.#inFlight--;
          this.#notifyIdle();
        });
        this.#schedule();
      },
      (err: Error) => {
        this.#acquiring = false;
        const batch = this.#queue;
        this.#queue = [];
        for (const q of batch) q.reject(err);
        this.#notifyIdle();
      },
    );
  }

  /** Removes the next batch from the queue: the oldest item plus the items nearest to it in length. */
  #take(): Queued[] {
    if (this.#queue.length === 0) return [];
    const anchor = this.#queue[0]!;
    const order = this.#queue.map((q, i) => ({ q, i, d: Math.abs(q.len - anchor.len) }));
    order.sort((a, b) => a.d - b.d || a.i - b.i);
    const picked = new Set<number>();
    let maxLen = 0;
    for (const { q, i } of order) {
      if (picked.size >= this.#o.maxItems) break;
      const nextMax = Math.max(maxLen, q.len);
      if (picked.size > 0 && nextMax * (picked.size + 1) > this.#o.maxTokens) continue;
      picked.add(i);
      maxLen = nextMax;
    }
    const batch: Queued[] = [];
    const rest: Queued[] = [];
    this.#queue.forEach((q, i) => (picked.has(i) ? batch : rest).push(q));
    this.#queue = rest;
    return batch;
  }

  async #run(batch: Queued[], run: Lease['run']): Promise<void> {
    const n = batch.length;
    const t = Math.max(...batch.map((q) => q.len));
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
      const tokenTotal = batch.reduce((s, q) => s + q.len, 0);
      batch.forEach((q, r) => {
        q.resolve({
          vector: res.data.slice(r * d, (r + 1) * d),
          inferenceMs: (res.runMs * q.len) / tokenTotal,
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

  #notifyIdle(): void {
    if (this.#queue.length === 0 && this.#inFlight === 0 && !this.#acquiring) {
      const w = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** Stops accepting items and resolves once everything queued has run. */
  drain(): Promise<void> {
    if (this.#state.kind === 'draining') return this.#state.done;
    if (this.#state.kind === 'closed') return Promise.resolve();
    const done = new Promise<void>((resolve) => {
      this.#idleWaiters.push(resolve);
    }).then(() => {
      this.#state = { kind: 'closed' };
    });
    this.#state = { kind: 'draining', done };
    this.#schedule();
    this.#notifyIdle();
    return done;
  }

  stats(): BatcherStats {
    return { ...this.#stats, queued: this.#queue.length };
  }
}
