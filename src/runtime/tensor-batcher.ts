/**
 * The dynamic batcher for models whose inputs are fixed-size float tensors: image encoders (one
 * preprocessed 3×224×224 image per item) and task heads (one feature vector per item).
 *
 * Same contract as the token batcher (`batcher.ts`): items from every request queue per model and leave
 * as one stacked batch per run, dispatched when the batch is full or its oldest item has waited
 * `maxWaitUs`; while dispatch waits for a worker lease, items keep joining. A batch is bounded by items
 * and by cost units (input pixels for images), so a batch of images never exceeds `maxCost` pixels.
 * Items all have the same shape, so there is no padding and no length grouping: batches are FIFO.
 * The queue is bounded (OVERLOADED); a failed batch rejects every item in it and nothing of it is cached.
 *
 * A run may read several outputs (image-mobilenet: the unit `embedding` and the raw `feature`); each
 * item's result holds its row of every output. Inference time is apportioned by cost share.
 */
import type { PolyrayError } from '../errors.ts';
import { batchFailed, type ClockOption, checkQueueOptions, DispatchQueue, type SubmitOptions, systemClock, type Waiting } from './dispatch-queue.ts';
import type { InferencePool, Lease } from './pool.ts';
import type { FeedSpec } from './worker-protocol.ts';

export interface TensorBatcherOptions {
  /** Most items in one run. Default 64. */
  maxItems: number;
  /** Most cost units (pixels for images) in one run; a single larger item still runs alone. Default 16 × 224². */
  maxCost: number;
  /** How long the oldest item waits for company, in microseconds. Default 0 (dispatch when a worker is free). */
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

export const DEFAULT_TENSOR_BATCHER_OPTIONS: TensorBatcherOptions = { maxItems: 64, maxCost: 16 * 224 * 224, maxWaitUs: 0, maxQueueItems: 8192 };

export interface TensorModelIO {
  /** Model name in the inference pool. */
  name: string;
  /** Input tensor name. */
  input: string;
  /** Shape of one item, without the batch axis, e.g. [3, 224, 224] or [1792]. */
  itemShape: readonly number[];
  /** Outputs to read, each [batch, width]. */
  outputs: readonly { name: string; width: number }[];
}

export interface TensorItem {
  data: Float32Array;
  /** Cost units of this item (input pixels for an image; 1 for a head input). */
  cost: number;
  /** Opaque label from the caller (e.g. the client). The batcher does not read it; callers attribute cost themselves. */
  tag?: string;
}

export interface TensorItemResult {
  /** This item's row of each requested output, in `TensorModelIO.outputs` order. */
  outputs: Float32Array[];
  /** Share of the run's measured time, by this item's share of the batch's cost. */
  inferenceMs: number;
  batchSize: number;
  cost: number;
}

export interface TensorBatcherStats {
  queued: number;
  batches: number;
  items: number;
  cost: number;
  rejected: number;
  failedBatches: number;
  /** Items dropped before inference: deadline passed or caller gone. */
  expired: number;
  /** Items of batches whose worker died, queued again once. */
  retried: number;
  /** The factor admission by time scales its wait predictions by (see DispatchQueue.correction). */
  waitCorrection: number;
}

export class TensorBatcher {
  readonly #o: TensorBatcherOptions;
  readonly #io: TensorModelIO;
  readonly #itemSize: number;
  readonly #queue: DispatchQueue<TensorItem, TensorItemResult>;
  readonly #stats: TensorBatcherStats = { queued: 0, batches: 0, items: 0, cost: 0, rejected: 0, failedBatches: 0, expired: 0, retried: 0, waitCorrection: 1 };

  /** `clock` drives `maxWaitUs`, as for `Batcher`. Default: `performance.now()` and Node's timers. */
  constructor(io: TensorModelIO, pool: Pick<InferencePool, 'acquire'>, options: Partial<TensorBatcherOptions> = {}, clock: ClockOption = systemClock) {
    this.#o = checkQueueOptions('TensorBatcher', { ...DEFAULT_TENSOR_BATCHER_OPTIONS, ...options }, ['maxItems', 'maxCost', 'maxQueueItems']);
    if (io.outputs.length === 0) throw new TypeError(`TensorBatcher for ${io.name} needs at least one output`);
    this.#io = io;
    this.#itemSize = io.itemShape.reduce((a, b) => a * b, 1);
    const policy = { name: io.name, full: this.#full.bind(this), take: this.#take.bind(this), run: this.#run.bind(this), cost: (it: TensorItem) => it.cost };
    this.#queue = new DispatchQueue(policy, pool, this.#o, clock);
  }

  get io(): TensorModelIO {
    return this.#io;
  }

  /** Queues items (for one client, priority and deadline); each promise settles with the item's outputs or its batch's error. */
  submit(items: readonly TensorItem[], options?: SubmitOptions): Promise<TensorItemResult>[] {
    for (const it of items) {
      if (it.data.length !== this.#itemSize)
        throw new TypeError(`TensorBatcher ${this.#io.name}: item has ${it.data.length} values, expected ${this.#itemSize}`);
    }
    return this.#queue.submit(items, options);
  }

  #full(queue: readonly Waiting<TensorItem>[]): boolean {
    if (queue.length >= this.#o.maxItems) return true;
    let cost = 0;
    for (const q of queue) cost += q.item.cost;
    return cost >= this.#o.maxCost;
  }

  /** The oldest items that fit the item and cost bounds (at least one). */
  #take(queue: readonly Waiting<TensorItem>[]): number[] {
    const picked: number[] = [];
    let cost = 0;
    for (let n = 0; n < queue.length && n < this.#o.maxItems; n++) {
      const c = queue[n]!.item.cost;
      if (n > 0 && cost + c > this.#o.maxCost) break;
      cost += c;
      picked.push(n);
    }
    return picked;
  }

  async #run(batch: TensorItem[], run: Lease['run']): Promise<TensorItemResult[]> {
    const n = batch.length;
    const size = this.#itemSize;
    const data = new Float32Array(n * size);
    for (const [r, item] of batch.entries()) data.set(item.data, r * size);
    const costTotal = batch.reduce((s, item) => s + item.cost, 0);
    this.#stats.batches++;
    this.#stats.items += n;
    this.#stats.cost += costTotal;
    const feeds: FeedSpec[] = [{ name: this.#io.input, type: 'float32', data, dims: [n, ...this.#io.itemShape] }];
    const names = this.#io.outputs.map((o) => o.name);
    const res = await run(this.#io.name, feeds, names.length === 1 ? names[0]! : names);
    const all = [{ data: res.data, dims: res.dims }, ...(res.extra ?? [])];
    if (all.length !== names.length) throw batchFailed('output-count');
    const widths = this.#io.outputs.map((o) => o.width);
    all.forEach((o, k) => {
      const w = widths[k]!;
      // The data length is checked as well as the dims: a short buffer would slice into short rows.
      if (o.dims.length !== 2 || o.dims[0] !== n || o.dims[1] !== w || o.data.length !== n * w) throw batchFailed('output-shape');
    });
    return batch.map((item, r) => ({
      outputs: all.map((o, k) => o.data.slice(r * widths[k]!, (r + 1) * widths[k]!)),
      inferenceMs: costTotal > 0 ? (res.runMs * item.cost) / costTotal : res.runMs / n,
      batchSize: n,
      cost: item.cost,
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

  stats(): TensorBatcherStats {
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
