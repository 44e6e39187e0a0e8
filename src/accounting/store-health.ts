/**
 * Health of the quota store, one entry per Redis node: which nodes answer, which are left alone, and
 * when the next probe of a silent one is due.
 *
 * Per node, not one flag for the store: on a Cluster a master that does not answer holds only its own
 * slots, so only the clients whose buckets live there may fall back (or be refused); the others keep the
 * fleet-wide bucket. Per node rather than per slot because a node fails as a whole: its first failure
 * sends every client it serves to the failure mode at once (the others do not each wait out the
 * timeout), recovery is one probe per node rather than one per slot, and the count of nodes down is
 * bounded by the Cluster's size. A standalone Redis is one node, so it keeps one health, as before.
 *
 * A node is `up` until a call to it fails; it is then `down`, and calls for its clients do not touch
 * Redis. Once `retryAt` has passed, the next call is let through as the probe, and `retryAt` moves one
 * backoff interval on, so concurrent calls keep falling back while the probe is out (and a probe that
 * never settles does not stall recovery). The probe answering flips the node up; failing doubles the
 * interval, `retryMs` → `maxRetryMs`. Each state carries a generation: the outcome of a call sent in an
 * earlier state (a failure that arrives after the node was already marked down, or after it recovered)
 * changes nothing.
 *
 * Nodes are named by the caller (RedisBuckets.node: the master that serves the bucket's slot).
 * `down(serving)` forgets down nodes that no longer serve a slot (a failover promoted another), so they
 * do not count as down forever.
 */

export type NodeHealth =
  | { kind: 'up'; gen: number }
  | { kind: 'down'; gen: number; since: number; failures: number; retryAt: number };

/** Permission to call Redis for one node, handed back with the outcome. */
export interface Attempt {
  readonly node: string;
  readonly gen: number;
  readonly probe: boolean;
}

export interface StoreHealthOptions {
  /** First wait after a node stops answering before it is probed. Default 1000 ms. */
  retryMs?: number;
  /** Longest wait between probes; the wait doubles from `retryMs` up to this. Default 5000 ms. */
  maxRetryMs?: number;
  /** Clock, ms. Default `Date.now`. */
  now?: () => number;
  /** A node changed state: `down` on its first failure (with the error), `up` when a probe answered. */
  onTransition?: (node: string, to: 'up' | 'down', detail: { error?: unknown; downMs?: number; nodesDown: number }) => void;
}

export const DEFAULT_STORE_HEALTH = { retryMs: 1000, maxRetryMs: 5000 } as const;

export class StoreHealth {
  /** Nodes seen to fail, and their state since. A node not in the map is up and has never failed. */
  readonly #nodes = new Map<string, NodeHealth>();
  readonly #retryMs: number;
  readonly #maxRetryMs: number;
  readonly #now: () => number;
  readonly #onTransition: StoreHealthOptions['onTransition'];
  #gen = 0;
  #downCount = 0;

  constructor(options: StoreHealthOptions = {}) {
    this.#retryMs = options.retryMs ?? DEFAULT_STORE_HEALTH.retryMs;
    this.#maxRetryMs = options.maxRetryMs ?? Math.max(this.#retryMs, DEFAULT_STORE_HEALTH.maxRetryMs);
    if (!(this.#retryMs > 0)) throw new TypeError(`StoreHealth retryMs must be > 0, received ${options.retryMs}`);
    if (!(this.#maxRetryMs >= this.#retryMs)) throw new TypeError(`StoreHealth maxRetryMs must be >= retryMs (${this.#retryMs}), received ${options.maxRetryMs}`);
    this.#now = options.now ?? Date.now;
    this.#onTransition = options.onTransition;
  }

  /**
   * Whether to call Redis for `node` now: an attempt to report back, or undefined (use the failure mode).
   * `probe: false` never lets a call through to a down node (a settle should not be the probe).
   */
  admit(node: string, { probe = true }: { probe?: boolean } = {}): Attempt | undefined {
    const h = this.#nodes.get(node);
    if (!h || h.kind === 'up') return { node, gen: h?.gen ?? 0, probe: false };
    const now = this.#now();
    if (!probe || now < h.retryAt) return undefined;
    h.retryAt = now + this.#interval(h.failures);
    return { node, gen: h.gen, probe: true };
  }

  /** The call answered: a probe's answer brings its node back. */
  succeeded(a: Attempt): void {
    const h = this.#nodes.get(a.node);
    if (h?.kind !== 'down' || h.gen !== a.gen) return;
    this.#nodes.set(a.node, { kind: 'up', gen: ++this.#gen });
    this.#downCount--;
    this.#onTransition?.(a.node, 'up', { downMs: this.#now() - h.since, nodesDown: this.#downCount });
  }

  /** The call failed or timed out: an up node goes down; a failed probe lengthens the wait. */
  failed(a: Attempt, error: unknown): void {
    const h = this.#nodes.get(a.node);
    if ((h?.gen ?? 0) !== a.gen) return; // sent before the node's last change of state
    const now = this.#now();
    if (h?.kind === 'down') {
      if (!a.probe) return;
      h.failures++;
      h.retryAt = Math.max(h.retryAt, now + this.#interval(h.failures - 1));
      return;
    }
    this.#nodes.set(a.node, { kind: 'down', gen: ++this.#gen, since: now, failures: 1, retryAt: now + this.#retryMs });
    this.#downCount++;
    this.#onTransition?.(a.node, 'down', { error, nodesDown: this.#downCount });
  }

  isDown(node: string): boolean {
    return this.#nodes.get(node)?.kind === 'down';
  }

  /** Milliseconds until `node` is probed (at least 1; 1 when it is up). */
  retryInMs(node: string): number {
    const h = this.#nodes.get(node);
    return h?.kind === 'down' ? Math.max(1, h.retryAt - this.#now()) : 1;
  }

  /**
   * The nodes down now. `serving` (asked only when some node is down) names the nodes that serve a slot;
   * a node not among them is forgotten. It returning undefined means the topology is unknown: forget nothing.
   */
  down(serving?: () => ReadonlySet<string> | undefined): string[] {
    if (this.#downCount === 0) return [];
    const live = serving?.();
    if (live) {
      for (const [node, h] of this.#nodes) {
        if (live.has(node)) continue;
        this.#nodes.delete(node);
        if (h.kind === 'down') this.#downCount--;
      }
    }
    return [...this.#nodes].filter(([, h]) => h.kind === 'down').map(([node]) => node);
  }

  /** Wait after the n-th consecutive failed probe (n = 0: after the first failure). */
  #interval(n: number): number {
    return Math.min(this.#maxRetryMs, this.#retryMs * 2 ** Math.min(n, 30));
  }
}
