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
import { ErrorCode, PolyrayError } from '../errors.ts';
import { DispatchQueue, type Pending } from './dispatch-queue.ts';
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
  /** Opaque tag carried for attribution, e.g. the client. */
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
}

type Queued = Pending<TensorItem, TensorItemResult>;

export class TensorBatcher {
  readonly #o: TensorBatcherOptions;
  readonly #io: TensorModelIO;
  readonly #itemSize: number;
  readonly #queue: DispatchQueue<TensorItem, TensorItemResult>;
  readonly #stats: TensorBatcherStats = { queued: 0, batches: 0, items: 0, cost: 0, rejected: 0, failedBatches: 0 };

  constructor(io: TensorModelIO, pool: Pick<InferencePool, 'acquire'>, options: Partial<TensorBatcherOptions> = {}, now: () => number = () => performance.now()) {
    const o = { ...DEFAULT_TENSOR_BATCHER_OPTIONS, ...options };
    for (const k of ['maxItems', 'maxCost', 'maxQueueItems'] as const) {
      if (!Number.isSafeInteger(o[k]) || o[k] < 1) throw new TypeError(`TensorBatcher option ${k} must be an integer >= 1, received ${String(o[k])}`);
    }
    if (!Number.isFinite(o.maxWaitUs) || o.maxWaitUs < 0) throw new TypeError(`TensorBatcher option maxWaitUs must be >= 0, received ${String(o.maxWaitUs)}`);
    if (io.outputs.length === 0) throw new TypeError(`TensorBatcher for ${io.name} needs at least one output`);
    this.#o = o;
    this.#io = io;
    this.#itemSize = io.itemShape.reduce((a, b) => a * b, 1);
    this.#queue = new DispatchQueue<TensorItem, TensorItemResult>(
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

  get io(): TensorModelIO {
    return this.#io;
  }

  /** Queues items; each promise settles with the item's outputs or its batch's error. */
  submit(items: readonly TensorItem[]): Promise<TensorItemResult>[] {
    for (const it of items) {
      if (it.data.length !== this.#itemSize) throw new TypeError(`TensorBatcher ${this.#io.name}: item has ${it.data.length} values, expected ${this.#itemSize}`);
    }
    return this.#queue.submit(items);
  }

  #full(queue: readonly Queued[]): boolean {
    if (queue.length >= this.#o.maxItems) return true;
    let cost = 0;
    for (const q of queue) cost += q.item.cost;
    return cost >= this.#o.maxCost;
  }

  /** The oldest items that fit the item and cost bounds (at least one). */
  #take(queue: readonly Queued[]): { batch: Queued[]; rest: Queued[] } {
    let cost = 0;
    let n = 0;
    while (n < queue.length && n < this.#o.maxItems) {
      const c = queue[n]!.item.cost;
      if (n > 0 && cost + c > this.#o.maxCost) break;
      cost += c;
      n++;
    }
    return { batch: queue.slice(0, n), rest: queue.slice(n) };
  }

  async #run(batch: Queued[], run: Lease['run']): Promise<void> {
    const n = batch.length;
    const size = this.#itemSize;
    const data = new Float32Array(n * size);
    batch.forEach((q, r) => data.set(q.item.data, r * size));
    const costTotal = batch.reduce((s, q) => s + q.item.cost, 0);
    this.#stats.batches++;
    this.#stats.items += n;
    this.#stats.cost += costTotal;
    const feeds: FeedSpec[] = [{ name: this.#io.input, type: 'float32', data, dims: [n, ...this.#io.itemShape] }];
    const names = this.#io.outputs.map((o) => o.name);
    try {
      const res = await run(this.#io.name, feeds, names.length === 1 ? names[0]! : names);
      const all = [{ data: res.data, dims: res.dims }, ...(res.extra ?? [])];
      if (all.length !== names.length) throw new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed for this batch; the request can be retried', { reason: 'output-count' });
      all.forEach((o, k) => {
        const w = this.#io.outputs[k]!.width;
        if (o.dims.length !== 2 || o.dims[0] !== n || o.dims[1] !== w) {
          throw new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed for this batch; the request can be retried', { reason: 'output-shape' });
        }
      });
      batch.forEach((q, r) => {
        q.resolve({
          outputs: all.map((o, k) => {
            const w = this.#io.outputs[k]!.width;
            return o.data.slice(r * w, (r + 1) * w);
          }),
          inferenceMs: costTotal > 0 ? (res.runMs * q.item.cost) / costTotal : res.runMs / n,
          batchSize: n,
          cost: q.item.cost,
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

  stats(): TensorBatcherStats {
    return { ...this.#stats, queued: this.#queue.length, rejected: this.#queue.rejected };
  }
}
