/**
 * Quotas: reserve an operation's worst-case cost before any work, settle the actual cost after it.
 *
 * Reserve-then-settle, not check-then-charge: a check that only reads the level lets N concurrent
 * operations (on N replicas) all pass against the same tokens and overspend N-fold; taking the worst
 * case up front makes the admission decision and the spending one atomic step in Redis. Settling then
 * refunds the difference (cache hits are cheap), so a client pays the actual cost, and only holds the
 * worst case while its operation runs.
 *
 * Buckets live in Redis when one is configured (shared by every replica), else in this process. Redis'
 * health is kept per node (src/redis/health.ts): a standalone server is one node; on a Cluster, the master
 * that serves the client's bucket slot. When that node does not answer (error or `redisTimeoutMs`),
 * `failureMode` decides for the clients it serves, and for them only: `share` (default) falls back to a
 * per-replica in-memory bucket holding 1 / `replicas` of the quota (rate and burst), so the fleet admits
 * about one quota in all while the node is down; `open` gives each replica's bucket the whole quota (the
 * fleet may admit up to replicas × quota); `closed` refuses with QUOTA_EXCEEDED
 * (`reason: QUOTA_STORE_UNAVAILABLE`). Clients on the other masters keep the shared bucket. Each node's
 * outage is logged once, and one call at a time probes it, `retryMs` after the failure, then backing off
 * to `maxRetryMs`. A settle goes to the store its reservation came from; a settle that fails, or whose
 * node has been marked down since, is dropped (the client keeps the reservation's worst case spent,
 * which only errs against the client).
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { LocalBuckets, type BucketLimits, type BucketOutcome } from './bucket.ts';
import type { RedisBuckets } from './redis-bucket.ts';
import { HealthGate } from '../redis/health.ts';

export interface QuotaSnapshot {
  /** Units left in the bucket. */
  remaining: number;
  /** Milliseconds until the bucket is full again. */
  resetMs: number;
}

/** Where a bucket lives: Redis, this replica (no Redis, or failing open), or nowhere (failing closed). */
export type QuotaStore = 'redis' | 'local' | 'unavailable';

export interface Reservation {
  clientId: string;
  limits: BucketLimits;
  amount: number;
  store: 'redis' | 'local';
  snapshot: QuotaSnapshot;
}

export interface QuotaManagerOptions {
  redis?: RedisBuckets | undefined;
  failureMode: 'share' | 'open' | 'closed';
  /** For `share`: the replicas a quota is split between while the store is down. Default 1. */
  replicas?: number;
  logger: Logger;
  /** How long a node is left alone after its first failure before one call probes it. Default 250 ms. */
  retryMs?: number;
  /**
   * Longest wait between probes of a node that keeps failing (doubling from `retryMs`): a store that answers
   * again is used again within this. Default 1000 ms.
   */
  maxRetryMs?: number;
  /** Clock for the probe schedule, ms. Default `Date.now`. */
  now?: () => number;
  /** Called when `store` (the whole store's state) changes. */
  onStoreChange?: (store: QuotaStore) => void;
}

export class QuotaManager {
  readonly #redis: RedisBuckets | undefined;
  readonly #local = new LocalBuckets();
  readonly #o: QuotaManagerOptions;
  readonly #health: HealthGate;
  #store: QuotaStore;
  /** Adjustments sent by `settleLater` and not answered yet. */
  readonly #settling = new Set<Promise<QuotaSnapshot>>();

  constructor(options: QuotaManagerOptions) {
    this.#o = options;
    this.#redis = options.redis;
    this.#store = this.#redis ? 'redis' : 'local';
    // Probes are one call each: back within a second of the store answering (issue 28), not 5 s.
    this.#health = new HealthGate({
      retryMs: options.retryMs ?? 250,
      maxRetryMs: options.maxRetryMs ?? Math.max(1000, options.retryMs ?? 250),
      now: options.now,
      onTransition: (node, to, d) => {
        const mode = this.#o.failureMode;
        if (to === 'down') {
          this.#o.logger.warn(
            { node, reason: (d.error as Error | undefined)?.message, failureMode: mode, replicas: this.#o.replicas ?? 1, nodesDown: d.nodesDown },
            mode === 'share'
              ? "quota store (Redis) node unreachable: its clients fall back to per-replica in-memory buckets holding 1/POLYRAY_QUOTA_REPLICAS of their quota (POLYRAY_QUOTA_FAILURE_MODE=share); other nodes' clients are unaffected"
              : mode === 'open'
                ? "quota store (Redis) node unreachable: its clients are falling back to per-replica in-memory buckets with their whole quota (POLYRAY_QUOTA_FAILURE_MODE=open); other nodes' clients are unaffected"
                : "quota store (Redis) node unreachable: refusing its clients' metered work until it answers (POLYRAY_QUOTA_FAILURE_MODE=closed); other nodes' clients are unaffected",
          );
        } else {
          this.#o.logger.info(
            { node, downMs: d.downMs, nodesDown: d.nodesDown },
            "quota store (Redis) node reachable again: its clients' quotas are fleet-wide again",
          );
        }
        this.#refresh();
      },
    });
  }

  /**
   * The whole store's state: `redis` while every node that holds buckets answers (or, without Redis,
   * `local`); while one or more do not, the failure mode's store (`local` or `unavailable`), which then
   * applies to their clients only (`storeFor`, `nodesDown`).
   */
  get store(): QuotaStore {
    this.#refresh();
    return this.#store;
  }

  /** Redis nodes (standalone: the one server; Cluster: masters) whose clients are on the failure mode. */
  get nodesDown(): number {
    return this.#downNodes().length;
  }

  /** Where this client's bucket lives right now. */
  storeFor(clientId: string): QuotaStore {
    if (!this.#redis) return 'local';
    return this.#health.isDown(this.#redis.node(clientId)) ? this.#failureStore() : 'redis';
  }

  /** Takes `amount` units or throws QUOTA_EXCEEDED (nothing taken). */
  async reserve(clientId: string, limits: BucketLimits, amount: number): Promise<Reservation> {
    const { outcome, store, applied } = await this.#apply(clientId, limits, { kind: 'take', amount });
    const snapshot = { remaining: outcome.tokens, resetMs: outcome.resetMs };
    if (!outcome.allowed) {
      const available = Math.max(0, outcome.tokens);
      if (outcome.retryAfterMs < 0) {
        throw new PolyrayError(
          ErrorCode.QUOTA_EXCEEDED,
          `This operation may cost up to ${fmt(amount)} units, more than this client's burst of ${fmt(applied.burst)}: split it into smaller requests`,
          { estimated: amount, burst: applied.burst, rate: applied.rate, remaining: available },
        );
      }
      throw new PolyrayError(
        ErrorCode.QUOTA_EXCEEDED,
        `Quota exceeded: this operation may cost up to ${fmt(amount)} units and ${fmt(available)} are available; retry after ${outcome.retryAfterMs} ms`,
        { retryAfterMs: outcome.retryAfterMs, estimated: amount, remaining: available, burst: applied.burst, rate: applied.rate },
      );
    }
    return { clientId, limits: applied, amount, store, snapshot };
  }

  /** Charges the actual cost: refunds `amount - actual` (or charges the excess). */
  async settle(r: Reservation, actual: number): Promise<QuotaSnapshot> {
    const delta = actual - r.amount;
    if (delta === 0) return r.snapshot;
    const op = { kind: 'adjust', amount: delta } as const;
    if (r.store === 'local') return snap(this.#local.apply(r.clientId, r.limits, op));
    // Not a probe: a node marked down since the reservation would most likely make it wait out the timeout.
    const attempt = this.#health.admit(this.#redis!.node(r.clientId), { probe: false });
    if (!attempt) return r.snapshot;
    try {
      const outcome = await this.#redis!.apply(r.clientId, r.limits, op);
      this.#health.succeeded(attempt);
      return snap(outcome);
    } catch (e) {
      this.#health.failed(attempt, e);
      return r.snapshot;
    }
  }

  /**
   * `settle` without making the answer wait for the store: the adjustment is sent now, and the snapshot
   * returned is the reservation's, adjusted here as the bucket adjusts it (capped at the burst). Commands on
   * one connection run in order, so this client's next reservation through this replica sees the
   * adjustment; another replica's may run before it lands, with the estimate still taken, which errs on
   * the side of refusing. A request then waits for one round trip to the store, not two. The adjustment's
   * own outcome (a failing store included) is handled as `settle` handles it; `wrap` runs around it (a
   * tracing span).
   */
  settleLater(r: Reservation, actual: number, wrap: (send: () => Promise<QuotaSnapshot>) => Promise<QuotaSnapshot> = (send) => send()): QuotaSnapshot {
    const delta = actual - r.amount;
    if (delta === 0) return r.snapshot;
    const sent = wrap(() => this.settle(r, actual));
    this.#settling.add(sent);
    // settle answers a failing store itself; a throwing `wrap` must not become an unhandled rejection.
    sent.then(
      () => this.#settling.delete(sent),
      () => this.#settling.delete(sent),
    );
    const tokens = Math.min(r.limits.burst, r.snapshot.remaining - delta);
    return { remaining: tokens, resetMs: Math.max(0, Math.ceil(((r.limits.burst - tokens) * 1000) / r.limits.rate)) };
  }

  /** Resolves once every adjustment sent by `settleLater` has been answered (or failed). */
  async drain(): Promise<void> {
    while (this.#settling.size > 0) await Promise.allSettled([...this.#settling]);
  }

  /** The bucket's state, changing nothing. */
  async peek(clientId: string, limits: BucketLimits): Promise<QuotaSnapshot> {
    try {
      return snap((await this.#apply(clientId, limits, { kind: 'adjust', amount: 0 })).outcome);
    } catch {
      return { remaining: 0, resetMs: 0 };
    }
  }

  async #apply(
    clientId: string,
    limits: BucketLimits,
    op: { kind: 'take' | 'adjust'; amount: number },
  ): Promise<{ outcome: BucketOutcome; store: 'redis' | 'local'; applied: BucketLimits }> {
    if (this.#redis) {
      const node = this.#redis.node(clientId);
      const attempt = this.#health.admit(node);
      if (attempt) {
        try {
          const outcome = await this.#redis.apply(clientId, limits, op);
          this.#health.succeeded(attempt);
          return { outcome, store: 'redis', applied: limits };
        } catch (e) {
          this.#health.failed(attempt, e);
        }
      }
      if (this.#o.failureMode === 'closed') {
        throw new PolyrayError(ErrorCode.QUOTA_EXCEEDED, 'Quotas cannot be checked right now; retry shortly', {
          reason: 'QUOTA_STORE_UNAVAILABLE',
          retryAfterMs: this.#health.retryInMs(node),
        });
      }
    }
    // Standing in for a store the replicas share: with `share`, this replica's part of the quota only.
    const applied = this.#redis && this.#o.failureMode === 'share' ? shareOf(limits, this.#o.replicas ?? 1) : limits;
    return { outcome: this.#local.apply(clientId, applied, op), store: 'local', applied };
  }

  #failureStore(): QuotaStore {
    return this.#o.failureMode === 'closed' ? 'unavailable' : 'local';
  }

  #downNodes(): string[] {
    const redis = this.#redis;
    return redis ? this.#health.down(() => redis.servingNodes()) : [];
  }

  /** Recomputes the whole store's state; tells `onStoreChange` when it changed. */
  #refresh(): void {
    if (!this.#redis) return;
    const store = this.#downNodes().length > 0 ? this.#failureStore() : 'redis';
    if (store === this.#store) return;
    this.#store = store;
    this.#o.onStoreChange?.(store);
  }
}

/** One replica's part of a quota: rate and burst divided by the replicas. */
function shareOf(limits: BucketLimits, replicas: number): BucketLimits {
  const n = Math.max(1, replicas);
  return { rate: limits.rate / n, burst: limits.burst / n };
}

function snap(o: BucketOutcome): QuotaSnapshot {
  return { remaining: o.tokens, resetMs: o.resetMs };
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}
