/**
 * Token-bucket arithmetic, and the per-replica in-memory bucket store.
 *
 * A bucket holds up to `burst` cost units and refills continuously at `rate` units per second. An
 * operation first *takes* its worst-case cost (refused, and nothing changes, when the bucket holds less),
 * then *adjusts* by the difference between what it actually cost and what it took: a negative adjustment
 * is a refund (never above `burst`), a positive one a further charge (the level may then go below zero,
 * which delays the client's next operations until the debt has refilled).
 *
 * `step` is the reference semantics. The Redis Lua script (`redis-bucket.ts`) is the same function,
 * line for line, and a property test checks that the two agree.
 */

export interface BucketLimits {
  /** Refill rate, cost units per second (> 0). */
  rate: number;
  /** Capacity, cost units (> 0). */
  burst: number;
}

/** Stored state: level and the time (ms) it was computed at. A missing bucket is a full one. */
export interface BucketState {
  tokens: number;
  ts: number;
}

export type BucketOp = { kind: 'take'; amount: number } | { kind: 'adjust'; amount: number };

export interface BucketOutcome {
  /** `take`: whether the amount was taken. `adjust`: always true. */
  allowed: boolean;
  /** Level after the operation (or, when refused, the unchanged level refilled to `now`). */
  tokens: number;
  /**
   * When refused: milliseconds after which the same take would succeed if nothing else used the bucket;
   * -1 when it never can (amount > burst). 0 when allowed.
   */
  retryAfterMs: number;
  /** Milliseconds until the bucket is full again. */
  resetMs: number;
}

/** Tolerance of the level comparison, so that waiting exactly `retryAfterMs` is always enough. */
export const EPSILON = 1e-9;

export function refill(state: BucketState | undefined, now: number, limits: BucketLimits): BucketState {
  if (!state) return { tokens: limits.burst, ts: now };
  const elapsed = Math.max(0, now - state.ts);
  return { tokens: Math.min(limits.burst, state.tokens + (elapsed * limits.rate) / 1000), ts: Math.max(state.ts, now) };
}

/**
 * One bucket operation at time `now` (ms). Returns the new state (undefined = unchanged) and the outcome.
 * Clock steps backwards are tolerated: no refill happens until time passes the stored timestamp.
 */
export function step(
  state: BucketState | undefined,
  now: number,
  limits: BucketLimits,
  op: BucketOp,
): { state: BucketState | undefined; outcome: BucketOutcome } {
  const cur = refill(state, now, limits);
  let tokens = cur.tokens;
  let allowed = true;
  let retryAfterMs = 0;
  let changed = false;
  if (op.kind === 'take') {
    if (tokens + EPSILON >= op.amount) {
      tokens -= op.amount;
      changed = op.amount !== 0;
    } else {
      allowed = false;
      retryAfterMs = op.amount > limits.burst ? -1 : Math.ceil(((op.amount - tokens) * 1000) / limits.rate);
    }
  } else if (op.amount !== 0) {
    tokens = Math.min(limits.burst, tokens - op.amount);
    changed = true;
  }
  const resetMs = Math.max(0, Math.ceil(((limits.burst - tokens) * 1000) / limits.rate));
  return { state: changed ? { tokens, ts: cur.ts } : undefined, outcome: { allowed, tokens, retryAfterMs, resetMs } };
}

/** Buckets keyed by client id, in this process only. Used in embedded mode and as the Redis fallback. */
export class LocalBuckets {
  readonly #buckets = new Map<string, BucketState>();
  readonly #now: () => number;

  constructor(now: () => number = () => Date.now()) {
    this.#now = now;
  }

  apply(clientId: string, limits: BucketLimits, op: BucketOp): BucketOutcome {
    const { state, outcome } = step(this.#buckets.get(clientId), this.#now(), limits, op);
    if (state) this.#buckets.set(clientId, state);
    // A full bucket is the same as no bucket: forget it, so idle clients cost no memory.
    if (outcome.tokens >= limits.burst) this.#buckets.delete(clientId);
    return outcome;
  }

  clear(): void {
    this.#buckets.clear();
  }
}
