/**
 * Quotas: reserve an operation's worst-case cost before any work, settle the actual cost after it.
 *
 * Reserve-then-settle, not check-then-charge: a check that only reads the level lets N concurrent
 * operations (on N replicas) all pass against the same tokens and overspend N-fold; taking the worst
 * case up front makes the admission decision and the spending one atomic step in Redis. Settling then
 * refunds the difference (cache hits are cheap), so a client pays the actual cost, and only holds the
 * worst case while its operation runs.
 *
 * Buckets live in Redis when one is configured (shared by every replica), else in this process. When
 * Redis does not answer (error or `redisTimeoutMs`), `failureMode` decides: `open` falls back to a
 * per-replica in-memory bucket (each replica then enforces the full quota on its own, so the fleet may
 * admit up to replicas × quota until Redis is back); `closed` refuses with QUOTA_EXCEEDED
 * (`reason: QUOTA_STORE_UNAVAILABLE`). Either way it is logged once per outage, and Redis is retried
 * after `retryMs`. A settle goes to the store its reservation came from; a settle that fails is dropped
 * (the client keeps the reservation's worst case spent, which only errs against the client).
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { LocalBuckets, type BucketLimits, type BucketOutcome } from './bucket.ts';
import type { RedisBuckets } from './redis-bucket.ts';

export interface QuotaSnapshot {
  /** Units left in the bucket. */
  remaining: number;
  /** Milliseconds until the bucket is full again. */
  resetMs: number;
}

export interface Reservation {
  clientId: string;
  limits: BucketLimits;
  amount: number;
  store: 'redis' | 'local';
  snapshot: QuotaSnapshot;
}

export interface QuotaManagerOptions {
  redis?: RedisBuckets | undefined;
  failureMode: 'open' | 'closed';
  logger: Logger;
  /** How long Redis is left alone after a failure before it is tried again. Default 1000 ms. */
  retryMs?: number;
  /** Called when the store in use changes (metrics). */
  onStoreChange?: (store: 'redis' | 'local' | 'unavailable') => void;
}

export class QuotaManager {
  readonly #redis: RedisBuckets | undefined;
  readonly #local = new LocalBuckets();
  readonly #o: QuotaManagerOptions;
  readonly #retryMs: number;
  #downUntil = 0;
  #down = false;

  constructor(options: QuotaManagerOptions) {
    this.#o = options;
    this.#redis = options.redis;
    this.#retryMs = options.retryMs ?? 1000;
  }

  /** Where buckets live right now. */
  get store(): 'redis' | 'local' | 'unavailable' {
    if (!this.#redis) return 'local';
    if (!this.#down) return 'redis';
    return this.#o.failureMode === 'open' ? 'local' : 'unavailable';
  }

  /** Takes `amount` units or throws QUOTA_EXCEEDED (nothing taken). */
  async reserve(clientId: string, limits: BucketLimits, amount: number): Promise<Reservation> {
    const { outcome, store } = await this.#apply(clientId, limits, { kind: 'take', amount });
    const snapshot = { remaining: outcome.tokens, resetMs: outcome.resetMs };
    if (!outcome.allowed) {
      const available = Math.max(0, outcome.tokens);
      if (outcome.retryAfterMs < 0) {
        throw new PolyrayError(
          ErrorCode.QUOTA_EXCEEDED,
          `This operation may cost up to ${fmt(amount)} units, more than this client's burst of ${fmt(limits.burst)}: split it into smaller requests`,
          { estimated: amount, burst: limits.burst, rate: limits.rate, remaining: available },
        );
      }
      throw new PolyrayError(
        ErrorCode.QUOTA_EXCEEDED,
        `Quota exceeded: this operation may cost up to ${fmt(amount)} units and ${fmt(available)} are available; retry after ${outcome.retryAfterMs} ms`,
        { retryAfterMs: outcome.retryAfterMs, estimated: amount, remaining: available, burst: limits.burst, rate: limits.rate },
      );
    }
    return { clientId, limits, amount, store, snapshot };
  }

  /** Charges the actual cost: refunds `amount - actual` (or charges the excess). */
  async settle(r: Reservation, actual: number): Promise<QuotaSnapshot> {
    const delta = actual - r.amount;
    if (delta === 0) return r.snapshot;
    const op = { kind: 'adjust', amount: delta } as const;
    if (r.store === 'local') return snap(this.#local.apply(r.clientId, r.limits, op));
    try {
      return snap(await this.#redis!.apply(r.clientId, r.limits, op));
    } catch (e) {
      this.#failed(e);
      return r.snapshot;
    }
  }

  /** The bucket's state, changing nothing. */
  async peek(clientId: string, limits: BucketLimits): Promise<QuotaSnapshot> {
    try {
      return snap((await this.#apply(clientId, limits, { kind: 'adjust', amount: 0 })).outcome);
    } catch {
      return { remaining: 0, resetMs: 0 };
    }
  }

  async #apply(clientId: string, limits: BucketLimits, op: { kind: 'take' | 'adjust'; amount: number }): Promise<{ outcome: BucketOutcome; store: 'redis' | 'local' }> {
    if (this.#redis && (!this.#down || Date.now() >= this.#downUntil)) {
      try {
        const outcome = await this.#redis.apply(clientId, limits, op);
        if (this.#down) {
          this.#down = false;
          this.#o.logger.info('quota store (Redis) reachable again: quotas are fleet-wide again');
          this.#o.onStoreChange?.('redis');
        }
        return { outcome, store: 'redis' };
      } catch (e) {
        this.#failed(e);
      }
    }
    if (this.#redis && this.#o.failureMode === 'closed') {
      throw new PolyrayError(ErrorCode.QUOTA_EXCEEDED, 'Quotas cannot be checked right now; retry shortly', {
        reason: 'QUOTA_STORE_UNAVAILABLE',
        retryAfterMs: Math.max(1, this.#downUntil - Date.now()),
      });
    }
    return { outcome: this.#local.apply(clientId, limits, op), store: 'local' };
  }

  #failed(e: unknown): void {
    this.#downUntil = Date.now() + this.#retryMs;
    if (this.#down) return;
    this.#down = true;
    const mode = this.#o.failureMode;
    this.#o.logger.warn(
      { reason: (e as Error)?.message, failureMode: mode },
      mode === 'open'
        ? 'quota store (Redis) unreachable: falling back to per-replica in-memory buckets (POLYRAY_QUOTA_FAILURE_MODE=open)'
        : 'quota store (Redis) unreachable: refusing metered work until it answers (POLYRAY_QUOTA_FAILURE_MODE=closed)',
    );
    this.#o.onStoreChange?.(mode === 'open' ? 'local' : 'unavailable');
  }
}

function snap(o: BucketOutcome): QuotaSnapshot {
  return { remaining: o.tokens, resetMs: o.resetMs };
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}
