/**
 * Fakes for unit tests of the dispatch queue and the batchers: a clock whose time moves only when a
 * test says so, and an inference pool whose leases hand every `run` to the test, which answers it (or
 * lets a `respond` function answer it). Nothing here starts a worker or ONNX Runtime.
 */
import type { Clock } from '../../src/runtime/dispatch-queue.ts';
import type { Lease, RunResult } from '../../src/runtime/pool.ts';
import type { FeedSpec } from '../../src/runtime/worker-protocol.ts';

/** Lets pending promise callbacks and `then` chains run: one turn of the event loop, not a sleep. */
export const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class FakeClock implements Clock {
  #now = 0;
  #timers: { at: number; fn: () => void }[] = [];

  now(): number {
    return this.#now;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.#now + ms, fn };
    this.#timers.push(timer);
    return () => {
      this.#timers = this.#timers.filter((t) => t !== timer);
    };
  }

  /** Timers set and not yet fired or cancelled. */
  get pending(): number {
    return this.#timers.length;
  }

  /** Moves time forward by `ms`, firing the timers that fall due, in order. */
  advance(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      const due = this.#timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.#timers = this.#timers.filter((t) => t !== due);
      this.#now = due.at;
      due.fn();
    }
    this.#now = end;
  }
}

/** One `Lease.run` call, waiting for the test to answer it. */
export interface RunCall {
  model: string;
  feeds: FeedSpec[];
  output: string | readonly string[];
  resolve(r: RunResult): void;
  reject(e: Error): void;
}

export interface FakePoolOptions {
  /** Leases out at once; further `acquire()` calls wait for a release. Default 1. */
  capacity?: number;
  /** Answers each run as it arrives; without it the test answers the calls from `nextRun()`. */
  respond?: (call: RunCall) => RunResult | Promise<RunResult>;
}

export class FakePool {
  readonly #capacity: number;
  readonly #respond: FakePoolOptions['respond'];
  #leased = 0;
  #acquirers: ((lease: Lease) => void)[] = [];
  #unclaimed: RunCall[] = [];
  #runWaiters: ((call: RunCall) => void)[] = [];
  /** Every run call so far, in order. */
  readonly runs: RunCall[] = [];
  acquires = 0;
  releases = 0;
  /** When set, the next `acquire()` rejects with it (and the field is cleared). */
  failNextAcquire: Error | undefined;

  constructor(options: FakePoolOptions = {}) {
    this.#capacity = options.capacity ?? 1;
    this.#respond = options.respond;
  }

  get leased(): number {
    return this.#leased;
  }

  acquire(): Promise<Lease> {
    this.acquires++;
    if (this.failNextAcquire) {
      const e = this.failNextAcquire;
      this.failNextAcquire = undefined;
      return Promise.reject(e);
    }
    return new Promise((resolve) => {
      this.#acquirers.push(resolve);
      this.#grant();
    });
  }

  /** The next run call the test has not taken yet (waits for one to arrive). */
  nextRun(): Promise<RunCall> {
    const call = this.#unclaimed.shift();
    if (call) return Promise.resolve(call);
    return new Promise((resolve) => this.#runWaiters.push(resolve));
  }

  #grant(): void {
    while (this.#leased < this.#capacity && this.#acquirers.length > 0) {
      this.#leased++;
      this.#acquirers.shift()!(this.#lease());
    }
  }

  #lease(): Lease {
    let released = false;
    return {
      run: (model, feeds, output) =>
        new Promise<RunResult>((resolve, reject) => {
          const call: RunCall = { model, feeds, output, resolve, reject };
          this.runs.push(call);
          if (this.#respond) {
            Promise.resolve()
              .then(() => this.#respond!(call))
              .then(resolve, reject);
            return;
          }
          const waiter = this.#runWaiters.shift();
          if (waiter) waiter(call);
          else this.#unclaimed.push(call);
        }),
      release: () => {
        if (released) throw new Error('lease released twice');
        released = true;
        this.releases++;
        this.#leased--;
        this.#grant();
      },
    };
  }
}

/** Rows of a run's first feed: its batch size. */
export const batchSizeOf = (call: RunCall): number => call.feeds[0]!.dims[0]!;
