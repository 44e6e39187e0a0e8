/**
 * The dispatch loop shared by every batcher: a bounded queue of pending items, the wait-for-company
 * timer, worker-lease acquisition, settling each item from its batch's results, and drain.
 *
 * A batch is dispatched when the policy says the queue is full or when the oldest item has waited
 * `maxWaitUs`. Dispatch first acquires a worker lease; items that arrive while it waits still join,
 * which is what makes batches grow under load. What a batch is (which items, how they are padded or
 * stacked, how results are split) belongs to the policy: the token batcher groups by length, the tensor
 * batcher takes FIFO by cost. The policy returns one result per item; settling is done here, in one
 * place, so a policy cannot leave a waiter hanging: a run that throws, or that returns a different
 * number of results than it was given items, rejects every item of its batch.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { InferencePool, Lease } from './pool.ts';

/** A queued item as a policy sees it. */
export interface Waiting<T> {
  readonly item: T;
  /** `Clock.now()` when it was submitted. */
  readonly enqueuedAt: number;
}

interface Pending<T, R> extends Waiting<T> {
  resolve: (r: R) => void;
  reject: (e: Error) => void;
}

/** Time source and timer of a queue; tests pass a fake one to drive `maxWaitUs` without sleeping. */
export interface Clock {
  /** Monotonic milliseconds. */
  now(): number;
  /** Calls `fn` once after `ms` milliseconds; the returned function cancels the call. */
  after(ms: number, fn: () => void): () => void;
}

/** `performance.now()` and Node's timers. */
export const systemClock: Clock = {
  now: () => performance.now(),
  after: (ms, fn) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
};

/**
 * The batchers' fourth constructor argument: a whole `Clock`, or (the older form) only a `now` function,
 * which keeps Node's timers.
 */
export type ClockOption = Clock | (() => number);

export function toClock(c: ClockOption): Clock {
  return typeof c === 'function' ? { now: c, after: systemClock.after } : c;
}

/** Queue bounds every batcher takes. */
export interface QueueOptions {
  /** How long the oldest item waits for company before dispatch, in microseconds. */
  maxWaitUs: number;
  /** Most items queued; beyond it submits fail with OVERLOADED. */
  maxQueueItems: number;
}

/**
 * Checks a batcher's options: `integers` must be integers >= 1, `maxWaitUs` finite and >= 0. The
 * TypeError names the owner, the option and the value received.
 */
export function checkQueueOptions<O extends QueueOptions>(owner: string, o: O, integers: readonly (keyof O & string)[]): O {
  for (const k of integers) {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new TypeError(`${owner} option ${k} must be an integer >= 1, received ${String(v)}`);
  }
  if (!Number.isFinite(o.maxWaitUs) || o.maxWaitUs < 0) throw new TypeError(`${owner} option maxWaitUs must be >= 0, received ${String(o.maxWaitUs)}`);
  return o;
}

export interface BatchPolicy<T, R> {
  /** Model name, for messages. */
  readonly name: string;
  /** Whether the queue already holds a full batch. */
  full(queue: readonly Waiting<T>[]): boolean;
  /**
   * Picks the next batch as indices into the queue (oldest first, never empty). The batch keeps queue
   * order whatever order the indices come in; picking none sends the oldest item alone.
   */
  take(queue: readonly Waiting<T>[]): Iterable<number>;
  /** Runs one batch on a leased worker; one result per item, in the order given. */
  run(items: T[], run: Lease['run']): Promise<R[]>;
}

type QueueState = { kind: 'open' } | { kind: 'draining'; done: Promise<void> } | { kind: 'closed' };

/** The error every item of a failed batch gets; `reason` says which check failed (for logs, not clients). */
export const batchFailed = (reason?: string): PolyrayError =>
  new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed for this batch; the request can be retried', reason ? { reason } : undefined);

export class DispatchQueue<T, R> {
  readonly #policy: BatchPolicy<T, R>;
  readonly #pool: Pick<InferencePool, 'acquire'>;
  readonly #options: QueueOptions;
  readonly #clock: Clock;
  #queue: Pending<T, R>[] = [];
  #cancelTimer: (() => void) | undefined;
  #acquiring = false;
  #inFlight = 0;
  #state: QueueState = { kind: 'open' };
  #idleWaiters: (() => void)[] = [];
  #rejected = 0;
  #failedBatches = 0;

  constructor(policy: BatchPolicy<T, R>, pool: Pick<InferencePool, 'acquire'>, options: QueueOptions, clock: ClockOption = systemClock) {
    this.#policy = policy;
    this.#pool = pool;
    this.#options = { maxWaitUs: options.maxWaitUs, maxQueueItems: options.maxQueueItems };
    this.#clock = toClock(clock);
  }

  get length(): number {
    return this.#queue.length;
  }

  /** Items refused because the queue was full. */
  get rejected(): number {
    return this.#rejected;
  }

  /** Batches whose every item was rejected (run failed, or returned the wrong number of results). */
  get failedBatches(): number {
    return this.#failedBatches;
  }

  /** Queues items; each promise settles with its own result or the error of its batch. */
  submit(items: readonly T[]): Promise<R>[] {
    if (this.#state.kind !== 'open') {
      const e = new PolyrayError(ErrorCode.SHUTTING_DOWN, 'The service is shutting down; retry on another replica');
      return items.map(() => Promise.reject(e));
    }
    const max = this.#options.maxQueueItems;
    if (this.#queue.length + items.length > max) {
      this.#rejected += items.length;
      const e = new PolyrayError(ErrorCode.OVERLOADED, `The ${this.#policy.name} queue is full (${max} items); retry later`, { retryAfterMs: 100 });
      return items.map(() => Promise.reject(e));
    }
    const enqueuedAt = this.#clock.now();
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
    const waitedUs = (this.#clock.now() - this.#queue[0]!.enqueuedAt) * 1000;
    const maxWaitUs = this.#options.maxWaitUs;
    if (full || waitedUs >= maxWaitUs || this.#state.kind === 'draining') {
      this.#cancelTimer?.();
      this.#cancelTimer = undefined;
      this.#dispatch();
    } else if (!this.#cancelTimer) {
      this.#cancelTimer = this.#clock.after(Math.max(0, (maxWaitUs - waitedUs) / 1000), () => {
        this.#cancelTimer = undefined;
        this.#schedule();
      });
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
        const batch = this.#take();
        this.#inFlight++;
        void this.#run(batch, lease).finally(() => {
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

  /** Removes the policy's next batch from the queue, keeping queue order. */
  #take(): Pending<T, R>[] {
    const picked = new Set(this.#policy.take(this.#queue));
    // A policy that picks nothing would leave the queue stuck; the oldest item always goes.
    if (picked.size === 0) picked.add(0);
    const batch: Pending<T, R>[] = [];
    const rest: Pending<T, R>[] = [];
    for (const [i, q] of this.#queue.entries()) (picked.has(i) ? batch : rest).push(q);
    this.#queue = rest;
    return batch;
  }

  /** Runs one batch and settles every item of it; never rejects. */
  async #run(batch: Pending<T, R>[], lease: Lease): Promise<void> {
    try {
      const results = await this.#policy.run(
        batch.map((q) => q.item),
        lease.run.bind(lease),
      );
      // A result per item, or none: resolving some and leaving others pending would hang their callers.
      if (results.length !== batch.length) throw batchFailed('result-count');
      for (const [i, q] of batch.entries()) q.resolve(results[i]!);
    } catch (e) {
      this.#failedBatches++;
      // Internal errors (worker messages, tensor shapes) are masked; a PolyrayError is already safe to show.
      const err = e instanceof PolyrayError ? e : batchFailed();
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
    const done = new Promise<void>((resolve) => this.#idleWaiters.push(resolve)).then(() => {
      this.#state = { kind: 'closed' };
    });
    this.#state = { kind: 'draining', done };
    this.#schedule();
    this.#notifyIdle();
    return done;
  }
}
