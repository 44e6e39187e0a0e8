/**
 * Single-flight: concurrent requests for the same key share one computation.
 *
 * The table holds only in-flight promises; an entry is removed when its computation settles, whether it
 * resolved or rejected, so a failure is never cached.
 */
export class SingleFlight<V> {
  readonly #inflight = new Map<string, Promise<V>>();

  /** The in-flight promise for `key`, if one exists. */
  get(key: string): Promise<V> | undefined {
    return this.#inflight.get(key);
  }

  /** Registers `promise` as the computation of `key` until it settles. */
  set(key: string, promise: Promise<V>): Promise<V> {
    this.#inflight.set(key, promise);
    const clear = (): void => {
      if (this.#inflight.get(key) === promise) this.#inflight.delete(key);
    };
    promise.then(clear, clear);
    return promise;
  }

  get size(): number {
    return this.#inflight.size;
  }
}
