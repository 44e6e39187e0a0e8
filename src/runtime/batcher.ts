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
import type { PolyrayError } from '../errors.ts';
import { batchFailed, type ClockOption, checkQueueOptions, DispatchQueue, type SubmitOptions, systemClock, type Waiting } from './dispatch-queue.ts';
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
  /** Most items one client may have queued. Default: `maxQueueItems`. */
  maxQueueItemsPerClient?: number;
  /** Longest expected wait of a submit, in ms (OVERLOADED beyond). Default 0: no bound by time. */
  maxQueueWaitMs?: number;
  /** How long after the submit an OVERLOADED refusal is delivered, in ms. Default 0. */
  refusalPaceMs?: number;
  /** Each item's time in the queue (ms) as its batch starts. Default: none. */
  observeWait?: ((ms: number) => void) | undefined;
}

export const DEFAULT_BATCHER_OPTIONS: BatcherOptions = { maxItems: 64, maxTokens: 1024, maxWaitUs: 0, maxQueueItems: 8192 };

export interface ModelIO {
  name: string;
  /** Input names: ids, mask, and optionally token type ids (zeros) and position ids (0, 1, … per row). */
  inputIds: string;
  attentionMask: string;
  tokenTypeIds?: string;
  positionIds?: string;
  output: string;
  dimensions: number;
}

export interface BatchItem {
  /** Token ids and mask; as BigInt64Array (what the tokenizer threads return) they are copied into the batch without conversion. */
  ids: readonly number[] | BigInt64Array;
  mask: readonly number[] | BigInt64Array;
  /** Leading tokens pooling leaves out (a prompt under `include_prompt: false`). Default 0. */
  skip?: number;
  /** Opaque label from the caller (e.g. the client). The batcher does not read it; callers attribute cost themselves. */
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
  /** Items dropped before inference: deadline passed or caller gone. */
  expired: number;
  /** Items of batches whose worker died, queued again once (they fail if it happens twice). */
  retried: number;
  /** The factor admission by time scales its wait predictions by (see DispatchQueue.correction). */
  waitCorrection: number;
}

const lengthOf = (item: BatchItem): number => Math.max(1, item.ids.length);

export class Batcher {
  readonly #o: BatcherOptions;
  readonly #io: ModelIO;
  readonly #queue: DispatchQueue<BatchItem, ItemResult>;
  readonly #stats: BatcherStats = {
    queued: 0,
    batches: 0,
    items: 0,
    paddedTokens: 0,
    realTokens: 0,
    rejected: 0,
    failedBatches: 0,
    expired: 0,
    retried: 0,
    waitCorrection: 1,
  };

  /**
   * `clock` drives `maxWaitUs`: a `Clock` (tests pass a fake one), or only a `now` function in
   * milliseconds, which keeps Node's timers. Default: `performance.now()` and Node's timers.
   */
  constructor(io: ModelIO, pool: Pick<InferencePool, 'acquire'>, options: Partial<BatcherOptions> = {}, clock: ClockOption = systemClock) {
    this.#o = checkQueueOptions('Batcher', { ...DEFAULT_BATCHER_OPTIONS, ...options }, ['maxItems', 'maxTokens', 'maxQueueItems']);
    this.#io = io;
    const policy = { name: io.name, full: this.#full.bind(this), take: this.#take.bind(this), run: this.#run.bind(this), cost: lengthOf };
    this.#queue = new DispatchQueue(policy, pool, this.#o, clock);
  }

  /** Queues items (for one client, priority and deadline); each promise settles with its own vector or the error of its batch. */
  submit(items: readonly BatchItem[], options?: SubmitOptions): Promise<ItemResult>[] {
    return this.#queue.submit(items, options);
  }
  /** OVERLOADED when the queue ahead of this client already passes the wait bound (see DispatchQueue.refuseEarly). */
  refuseEarly(options: SubmitOptions, count: number, atLeast?: readonly number[]): PolyrayError | undefined {
    return this.#queue.refuseEarly(options, count, atLeast);
  }

  /** A refusal delivered at the queue's pace (see DispatchQueue.paced). */
  paced(e: PolyrayError): Promise<never> {
    return this.#queue.paced(e);
  }

  #full(queue: readonly Waiting<BatchItem>[]): boolean {
    if (queue.length >= this.#o.maxItems) return true;
    let maxLen = 0;
    for (const q of queue) maxLen = Math.max(maxLen, lengthOf(q.item));
    return maxLen * queue.length >= this.#o.maxTokens;
  }

  /**
   * The next batch: the head item (the oldest of a lone client; the fair order's first otherwise) plus the
   * items nearest to it in length, none longer than twice its length (+16): a short item is never padded to
   * a long one's length, so its batch runs as fast as its own length allows, however long the items queued
   * beside it are.
   */
  #take(queue: readonly Waiting<BatchItem>[]): Set<number> {
    const anchor = lengthOf(queue[0]!.item);
    const longest = Math.max(2 * anchor, anchor + 16);
    const order = queue.map((q, i) => ({ len: lengthOf(q.item), i, d: Math.abs(lengthOf(q.item) - anchor) }));
    order.sort((a, b) => a.d - b.d || a.i - b.i);
    const picked = new Set<number>();
    let maxLen = 0;
    for (const { len, i } of order) {
      if (picked.size >= this.#o.maxItems) break;
      if (picked.size > 0 && len > longest) break;
      const nextMax = Math.max(maxLen, len);
      if (picked.size > 0 && nextMax * (picked.size + 1) > this.#o.maxTokens) continue;
      picked.add(i);
      maxLen = nextMax;
    }
    return picked;
  }

  async #run(batch: BatchItem[], run: Lease['run']): Promise<ItemResult[]> {
    const n = batch.length;
    const t = Math.max(...batch.map(lengthOf));
    const ids = new BigInt64Array(n * t);
    const mask = new BigInt64Array(n * t);
    let realTokens = 0;
    let skip: Int32Array | undefined;
    batch.forEach((item, r) => {
      if (item.ids instanceof BigInt64Array && item.mask instanceof BigInt64Array) {
        ids.set(item.ids, r * t);
        mask.set(item.mask, r * t);
      } else {
        for (let j = 0; j < item.ids.length; j++) {
          ids[r * t + j] = BigInt(item.ids[j]!);
          mask[r * t + j] = BigInt(item.mask[j]!);
        }
      }
      realTokens += item.ids.length;
      if (item.skip) {
        skip ??= new Int32Array(n);
        skip[r] = item.skip;
      }
    });
    const feeds: FeedSpec[] = [
      { name: this.#io.inputIds, type: 'int64', data: ids, dims: [n, t] },
      { name: this.#io.attentionMask, type: 'int64', data: mask, dims: [n, t] },
    ];
    if (this.#io.tokenTypeIds) feeds.push({ name: this.#io.tokenTypeIds, type: 'int64', data: new BigInt64Array(n * t), dims: [n, t] });
    if (this.#io.positionIds) {
      // Right padding: every row's real tokens sit at positions 0 … length − 1.
      const positions = new BigInt64Array(n * t);
      for (let r = 0; r < n; r++) for (let j = 0; j < t; j++) positions[r * t + j] = BigInt(j);
      feeds.push({ name: this.#io.positionIds, type: 'int64', data: positions, dims: [n, t] });
    }
    this.#stats.batches++;
    this.#stats.items += n;
    this.#stats.paddedTokens += n * t;
    this.#stats.realTokens += realTokens;
    const res = await run(this.#io.name, feeds, this.#io.output, skip ? { poolSkip: skip } : undefined);
    const d = this.#io.dimensions;
    // The data length is checked as well as the dims: a short buffer would slice into short vectors.
    if (res.dims.length !== 2 || res.dims[0] !== n || res.dims[1] !== d || res.data.length !== n * d) throw batchFailed('output-shape');
    const tokenTotal = batch.reduce((s, item) => s + lengthOf(item), 0);
    return batch.map((item, r) => ({
      vector: res.data.slice(r * d, (r + 1) * d),
      inferenceMs: (res.runMs * lengthOf(item)) / tokenTotal,
      batchSize: n,
      tokens: item.ids.length,
    }));
  }

  /** Stops accepting items and resolves once everything queued has run. */
  drain(): Promise<void> {
    return this.#queue.drain();
  }

  /** Drops every queued item with `error` (shutdown past its grace period); returns how many. */
  cancel(error: PolyrayError): number {
    return this.#queue.cancel(error);
  }

  stats(): BatcherStats {
    return {
      ...this.#stats,
      queued: this.#queue.length,
      rejected: this.#queue.rejected,
      failedBatches: this.#queue.failedBatches,
      expired: this.#queue.expired,
      retried: this.#queue.retried,
      waitCorrection: this.#queue.correction,
    };
  }
}
