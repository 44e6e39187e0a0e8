/**
 * The dispatch loop shared by every batcher: a bounded queue of pending items, the wait-for-company
 * timer, worker-lease acquisition, and drain.
 *
 * A batch is dispatched when the policy says the queue is full or when the oldest item has waited
 * `maxWaitUs`. Dispatch first acquires a worker lease; items that arrive while it waits still join,
 * which is what makes batches grow under load. What a batch is (which items, how they are padded or
 * stacked, how results are split) belongs to the policy: the token batcher groups by length, the tensor
 * batcher takes FIFO by cost. The policy's `run` must settle every item of its batch.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { InferencePool, Lease } from './pool.ts';

export interface Pending<T, R> {
  item: T;
  enqueuedAt: number;
  resolve: (r: R) => void;
  reject: (e: Error) => void;
}

export interface BatchPolicy<T, R> {
  /** Model name, for messages. */
  readonly name: string;
  readonly maxWaitUs: number;
  readonly maxQueueItems: number;
  /** Whether the queue already holds a full batch. */
  full(queue: readonly Pending<T, R>[]): boolean;
  /** Splits the queue (oldest first, never empty) into the next batch and what stays queued. */
  take(queue: readonly Pending<T, R>[]): { batch: Pending<T, R>[]; rest: Pending<T, R>[] };
  /** Runs one batch on a leased worker and settles every item in it. */
  run(batch: Pending<T, R>[], run: Lease['run']): Promise<void>;
}

type QueueState = { kind: 'open' } | { kind: 'draining'; done: Promise<void> } | { kind: 'closed' };

export class DispatchQueue<T, R> {
  readonly #policy: BatchPolicy<T, R>;
  readonly #pool: Pick<InferencePool, 'acquire'>;
  readonly #now: () => number;
  #queue: Pending<T, R>[] = [];
  #timer: NodeJS.Timeout | undefined;
  #acquiring = false;
  #inFlight = 0;
  #state: QueueState = { kind: 'open' };
  #idleWaiters: (() => void)[] = [];
  /** Items refused because the queue was full. */
  rejected = 0;

  constructor(policy: BatchPolicy<T, R>, pool: Pick<InferencePool, 'acquire'>, now: () => number) {
    this.#policy = policy;
    this.#pool = pool;
    this.#now = now;
  }

  get length(): number {
    return this.#queue.length;
  }

  /** Queues items; each promise settles with its own result or the error of its batch. */
  submit(items: readonly T[]): Promise<R>[] {
    if (this.#state.kind !== 'open') {
      const e = new PolyrayError(ErrorCode.SHUTTING_DOWN, 'The service is shutting down; retry on another replica');
      return items.map(() => Promise.reject(e));
    }
    const max = this.#policy.maxQueueItems;
    if (this.#queue.length + items.length > max) {
      this.rejected += items.length;
      const e = new PolyrayError(ErrorCode.OVERLOADED, `The ${this.#policy.name} queue is full (${max} items); retry later`, { retryAfterMs: 100 });
      return items.map(() => Promise.reject(e));
    }
    const enqueuedAt = this.#now();
    const promises = items.map((item) => new Promise<R>((resolve, reject) => this.#queue.push({ item, enqueuedAt, resolve, reject })));
    this.#schedule();
    return promises;
  }

  #schedule(): void {
    if (this.#queue.length === 0 || this.#acquiring) return;
    const full = this.#policy.full(this.#queue);
    // While a batch of this queue runs, only a full batch is sent after it (to wait in the worker, where
    // the pool allows it): a partial one waits for the run to end and grows meanwhile.
    if (this.#inFlight > 0 && !full && this.#state.kind !== 'draining') return;
    const waitedUs = (this.#now() - this.#queue[0]!.enqueuedAt) * 1000;
    const maxWaitUs = this.#policy.maxWaitUs;
    if (full || waitedUs >= maxWaitUs || this.#state.kind === 'draining') {
      if (this.#timer) clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#dispatch();
    } else if (!this.#timer) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#schedule();
      }, Math.max(0, (maxWaitUs - waitedUs) / 1000));
    }
  }

  #dispatch(): void {
    this.#acquiring = true;
    this.#pool.acquire().then(
      (lease) => {
        this.#acquiring = false;
        if (this.#queue.length === 0) {
          lease.release();
          this.#notifyIdle();
          return;
        }
        const { batch, rest } = this.#policy.take(this.#queue);
        this.#queue = rest;
        this.#inFlight++;
        this.#policy.run(batch, lease.run.bind(lease)).finally(() => {
          lease.release();
          this.#inFlight--;
          this.#schedule();
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
    const done = new Promise<void>((resolve) => this.#idleWaiters.push(resolve)).then(() => {
      this.#state = { kind: 'closed' };
    });
    this.#state = { kind: 'draining', done };
    this.#schedule();
    this.#notifyIdle();
    return done;
  }
}
