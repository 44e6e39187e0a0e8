/**
 * The one health gate with backoff, one entry per Redis node: which nodes answer, which are left alone,
 * and when the next probe of a silent one is due. Callers name the nodes: the quota store names the
 * master that serves a client's bucket (a standalone server is one node); the cache tier keeps one health
 * for the whole tier (its reads fan out to every master) and so names one node.
 *
 * Per node, not one flag for a store: on a Cluster a master that does not answer holds only its own
 * slots, so only the callers whose keys live there need fall back. Per node rather than per slot because
 * a node fails as a whole: its first failure sends every caller it serves to the failure mode at once
 * (the others do not each wait out the timeout), recovery is one probe per node rather than one per slot,
 * and the count of nodes down is bounded by the Cluster's size.
 *
 * A node is `up` until a call to it fails; it is then `down`, and callers leave it alone. Once `retryAt`
 * has passed, the next `admit` lets one call through as the probe, and `retryAt` moves one backoff
 * interval on, so concurrent calls keep falling back while the probe is out (and a probe that never
 * settles does not stall recovery). The probe answering flips the node up; failing doubles the interval,
 * `retryMs` → `maxRetryMs`. Each state carries a generation: the outcome of a call sent in an earlier
 * state (a failure that arrives after the node was already marked down, or after it recovered) changes
 * nothing.
 *
 * Who probes. By default the gate keeps no timers: it is driven by calls and by its clock (`now`), and
 * the probe is a caller's own call (a quota reservation). A caller that sends nothing to a down node and
 * so cannot probe with its calls (the cache tier answers misses instead) gives a `probe` function: the
 * gate then probes a down node itself, on a timer at `retryAt` and whenever `admit` finds it due, one
 * probe at a time, and `wake` probes at once (ioredis reported a reconnect).
 *
 * `down(serving)` forgets down nodes that no longer serve a slot (a failover promoted another), so they
 * do not count as down forever.
 */

export type NodeHealth = { kind: 'up'; gen: number } | { kind: 'down'; gen: number; since: number; failures: number; retryAt: number };

/** Permission to call Redis for one node, handed back with the outcome. */
export interface Attempt {
  readonly node: string;
  readonly gen: number;
  readonly probe: boolean;
}

export interface HealthGateOptions {
  /** First wait after a node stops answering before it is probed, ms. Default 1000. */
  retryMs?: number;
  /** Longest wait between probes, ms; the wait doubles from `retryMs` up to this. Default the larger of 5000 and `retryMs`. */
  maxRetryMs?: number;
  /** Clock, ms. Default `Date.now`. */
  now?: () => number;
  /** A node changed state: `down` on its first failure (with the error), `up` when a probe answered. */
  onTransition?: (node: string, to: 'up' | 'down', detail: { error?: unknown; downMs?: number; nodesDown: number }) => void;
  /**
   * Active probing: asks whether `node` answers now (true: it did; a rejection counts as false). Set, the
   * gate never hands a down node to a caller and probes it itself (timers are unref'd; `close` stops
   * them). Default: none, a caller's call is the probe.
   */
  probe?: (node: string) => Promise<boolean>;
}

export const DEFAULT_HEALTH_GATE_OPTIONS = Object.freeze({ retryMs: 1000, maxRetryMs: 5000 });

export class HealthGate {
  /** Nodes seen to fail, and their state since. A node not in the map is up and has never failed. */
  readonly #nodes = new Map<string, NodeHealth>();
  readonly #retryMs: number;
  readonly #maxRetryMs: number;
  readonly #now: () => number;
  readonly #onTransition: HealthGateOptions['onTransition'];
  readonly #probeFn: HealthGateOptions['probe'];
  readonly #timers = new Map<string, NodeJS.Timeout>();
  readonly #probing = new Set<string>();
  #closed = false;
  #gen = 0;
  #downCount = 0;

  constructor(options: HealthGateOptions = {}) {
    this.#retryMs = options.retryMs ?? DEFAULT_HEALTH_GATE_OPTIONS.retryMs;
    this.#maxRetryMs = options.maxRetryMs ?? Math.max(this.#retryMs, DEFAULT_HEALTH_GATE_OPTIONS.maxRetryMs);
    if (!(this.#retryMs > 0)) throw new TypeError(`HealthGate retryMs must be > 0, received ${options.retryMs}`);
    if (!(this.#maxRetryMs >= this.#retryMs))
      throw new TypeError(`HealthGate maxRetryMs must be >= retryMs (${this.#retryMs}), received ${options.maxRetryMs}`);
    this.#now = options.now ?? Date.now;
    this.#onTransition = options.onTransition;
    this.#probeFn = options.probe;
  }

  /**
   * Whether to call Redis for `node` now: an attempt to report back, or undefined (use the failure mode).
   * `probe: false` never lets a call through to a down node (a settle should not be the probe). With
   * active probing a down node is never admitted; a due probe starts instead.
   */
  admit(node: string, { probe = true }: { probe?: boolean } = {}): Attempt | undefined {
    const h = this.#nodes.get(node);
    if (!h || h.kind === 'up') return { node, gen: h?.gen ?? 0, probe: false };
    if (!probe || this.#now() < h.retryAt) return undefined;
    if (!this.#probeFn) return this.#probe(node, h);
    void this.#runProbe(node);
    return undefined;
  }

  /**
   * A probe of a down node now, whatever its schedule (the connection came back; a timer kept by the
   * caller fired); `retryAt` moves on as for `admit`. Undefined when the node is up.
   */
  probeNow(node: string): Attempt | undefined {
    const h = this.#nodes.get(node);
    return h?.kind === 'down' ? this.#probe(node, h) : undefined;
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
    if (this.#probeFn) this.#schedule(a.node);
    this.#onTransition?.(a.node, 'down', { error, nodesDown: this.#downCount });
  }

  /** An outage seen outside any call (a lost connection): an up node goes down; a down one is left as it is. */
  markDown(node: string, error: unknown): void {
    this.failed({ node, gen: this.#nodes.get(node)?.gen ?? 0, probe: false }, error);
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
        clearTimeout(this.#timers.get(node));
        this.#timers.delete(node);
        if (h.kind === 'down') this.#downCount--;
      }
    }
    return [...this.#nodes].filter(([, h]) => h.kind === 'down').map(([node]) => node);
  }

  /** Active probing: probes `node` now when it is down and no probe of it is out. */
  wake(node: string): void {
    if (this.#probeFn) void this.#runProbe(node);
  }

  /** Stops active probing for good: timers are cleared, outcomes of probes still out are ignored. */
  close(): void {
    this.#closed = true;
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
  }

  async #runProbe(node: string): Promise<void> {
    if (this.#closed || this.#probing.has(node)) return;
    const attempt = this.probeNow(node);
    if (!attempt) return;
    this.#probing.add(node);
    clearTimeout(this.#timers.get(node));
    try {
      const ok = await this.#probeFn!(node).catch(() => false);
      if (this.#closed) return;
      if (ok) return this.succeeded(attempt);
      this.failed(attempt, undefined);
      this.#schedule(node);
    } finally {
      this.#probing.delete(node);
    }
  }

  #schedule(node: string): void {
    if (this.#closed) return;
    clearTimeout(this.#timers.get(node));
    const timer = setTimeout(() => void this.#runProbe(node), this.retryInMs(node));
    // A pending probe must not keep the process alive.
    timer.unref();
    this.#timers.set(node, timer);
  }

  #probe(node: string, h: Extract<NodeHealth, { kind: 'down' }>): Attempt {
    h.retryAt = this.#now() + this.#interval(h.failures);
    return { node, gen: h.gen, probe: true };
  }

  /** Wait after the n-th consecutive failed probe (n = 0: after the first failure). */
  #interval(n: number): number {
    return Math.min(this.#maxRetryMs, this.#retryMs * 2 ** Math.min(n, 30));
  }
}
