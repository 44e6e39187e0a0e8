/**
 * The bounded write-behind queue of the Redis tier (redis.ts): callers enqueue and return at once; one
 * flusher sends batches when the sink is ready, holds them while it is connecting, and drops them while
 * it is down. Memory is bounded: a full queue drops its oldest entry for a new one.
 *
 * Batching: a flush is scheduled with `setImmediate`, not a microtask, so writes from the same tick
 * (several `setMany` calls) share a batch. `flush()` lets a caller wait until everything queued so far
 * was sent or dropped (close, tests).
 */

export interface WriteBehindOptions<T> {
  /** Entries the queue holds; pushing into a full queue drops the oldest. */
  capacity: number;
  /** Entries per `send`. */
  batchSize: number;
  /**
   * Asked before each batch: `send` one now; `wait` (not connected yet: asked again 10 ms later, the
   * entries stay queued); `drop` everything queued (the sink is down or closing).
   */
  state(): 'send' | 'wait' | 'drop';
  /** Sends one batch; counts its own outcome. Must not reject. */
  send(batch: T[]): Promise<void>;
  /** Entries the flusher dropped (`drop`, or an unexpected error: `failed`). */
  dropped(count: number, failed: boolean): void;
}

export class WriteBehind<T> {
  readonly #o: WriteBehindOptions<T>;
  readonly #buf: (T | undefined)[];
  #head = 0;
  #size = 0;
  #flushing = false;
  #scheduled = false;
  #waiters: (() => void)[] = [];

  constructor(options: WriteBehindOptions<T>) {
    this.#o = options;
    this.#buf = new Array<T | undefined>(options.capacity);
  }

  /** Entries waiting now. */
  get length(): number {
    return this.#size;
  }

  /** Enqueues `x` and schedules a flush; returns true when the oldest entry had to be dropped for it. */
  push(x: T): boolean {
    const capacity = this.#buf.length;
    let evicted = false;
    if (this.#size === capacity) {
      this.#buf[this.#head] = x; // overwrite the oldest, which is at head
      this.#head = (this.#head + 1) % capacity;
      evicted = true;
    } else {
      this.#buf[(this.#head + this.#size) % capacity] = x;
      this.#size++;
    }
    this.#schedule();
    return evicted;
  }

  /** Resolves once every entry queued so far has been sent or dropped. Never rejects. */
  async flush(): Promise<void> {
    if (this.#size === 0 && !this.#flushing && !this.#scheduled) return;
    const done = new Promise<void>((resolve) => this.#waiters.push(resolve));
    this.#schedule();
    await done;
  }

  #take(n: number): T[] {
    const k = Math.min(n, this.#size);
    const out = new Array<T>(k);
    for (let i = 0; i < k; i++) {
      out[i] = this.#buf[this.#head]!;
      this.#buf[this.#head] = undefined;
      this.#head = (this.#head + 1) % this.#buf.length;
    }
    this.#size -= k;
    return out;
  }

  #schedule(): void {
    if (this.#scheduled || this.#flushing) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      void this.#run();
    });
  }

  async #run(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      while (this.#size > 0) {
        const state = this.#o.state();
        if (state === 'wait') {
          await new Promise((r) => setTimeout(r, 10));
          continue;
        }
        if (state === 'drop') {
          this.#o.dropped(this.#take(this.#size).length, false);
          break;
        }
        await this.#o.send(this.#take(this.#o.batchSize));
      }
    } catch {
      this.#o.dropped(this.#take(this.#size).length, true);
    } finally {
      this.#flushing = false;
      if (this.#size > 0) {
        this.#schedule();
      } else {
        const waiters = this.#waiters;
        this.#waiters = [];
        for (const w of waiters) w();
      }
    }
  }
}
