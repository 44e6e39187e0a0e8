/**
 * Token buckets in Redis, shared by every replica: one atomic Lua script does refill + take/adjust.
 *
 * The script is `step` of `bucket.ts` in Lua (a property test checks they agree). It is sent with
 * EVALSHA; on NOSCRIPT (a fresh or restarted Redis, or SCRIPT FLUSH) it is sent once with EVAL, which
 * also loads it for the next EVALSHA.
 *
 * Time comes from Redis `TIME` inside the script, not from the replica: every replica then refills a
 * bucket on one clock, so a replica whose clock runs ahead cannot mint tokens (and one that runs behind
 * cannot withhold them), and the stored timestamp never sees two clocks. Redis 5+ replicates scripts by
 * their effects (and Redis 7 only so), so a non-deterministic `TIME` before a write is allowed. The
 * optional `nowMs` argument exists for the equivalence test only; the service never passes it.
 *
 * A bucket is a hash `{tokens, ts}` whose TTL is the time it takes to refill completely (+1 s): once
 * full it may vanish, because a missing bucket is a full one.
 *
 * The script touches exactly one key, declared in KEYS (`<prefix>{client:<id>}:bucket`, keys.ts), so it
 * runs unchanged on a Redis Cluster: ioredis routes it to the master of that key's slot, and each master
 * loads the script on its first NOSCRIPT. `node(clientId)` names that master (one name for a standalone
 * server): the quota manager keeps the store's health per node.
 */
import { createHash } from 'node:crypto';
import type { BucketLimits, BucketOp, BucketOutcome } from './bucket.ts';
import { withDeadline } from '../redis/deadline.ts';
import { nodeOf, servingNodes } from '../redis/slots.ts';
import { AccountingKeys } from './keys.ts';
import { ACCOUNTING_DEADLINE, type AccountingRedis } from './redis-client.ts';

export const BUCKET_SCRIPT = `
local op = ARGV[1]
local amount = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local now
if ARGV[5] ~= nil and ARGV[5] ~= '' then
  now = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
else
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate / 1000)
  if now > ts then ts = now end
end
local allowed = 1
local retry = 0
local changed = false
if op == 'take' then
  if tokens + 1e-9 >= amount then
    tokens = tokens - amount
    changed = amount ~= 0
  else
    allowed = 0
    if amount > burst then retry = -1 else retry = math.ceil((amount - tokens) * 1000 / rate) end
  end
elseif amount ~= 0 then
  tokens = math.min(burst, tokens - amount)
  changed = true
end
local reset = math.ceil((burst - tokens) * 1000 / rate)
if reset < 0 then reset = 0 end
if changed then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', ts))
  redis.call('PEXPIRE', KEYS[1], reset + 1000)
end
return {allowed, string.format('%.17g', tokens), retry, reset}
`;

export const BUCKET_SCRIPT_SHA = createHash('sha1').update(BUCKET_SCRIPT).digest('hex');

export interface RedisBucketsOptions {
  /**
   * Longest wait for one `apply` (EVALSHA, and EVAL after a NOSCRIPT) before it rejects. Default: none
   * beyond the client's own timeouts. Accounting passes `redisTimeoutMs` (see redis-client.ts).
   */
  timeoutMs?: number;
}

export class RedisBuckets {
  readonly #redis: AccountingRedis;
  readonly #keys: AccountingKeys;
  readonly #timeoutMs: number | undefined;
  /** EVAL fallbacks taken (NOSCRIPT answers), for tests and diagnostics. */
  evalFallbacks = 0;

  constructor(redis: AccountingRedis, keyPrefix: string, options: RedisBucketsOptions = {}) {
    this.#redis = redis;
    this.#keys = new AccountingKeys(keyPrefix);
    this.#timeoutMs = options.timeoutMs;
  }

  key(clientId: string): string {
    return this.#keys.bucket(clientId);
  }

  /** The node that serves this client's bucket (see `nodeOf`, src/redis/slots.ts). */
  node(clientId: string): string {
    return nodeOf(this.#redis, this.key(clientId));
  }

  /** The nodes that serve slots now; undefined while a Cluster's slot map is not loaded. */
  servingNodes(): ReadonlySet<string> | undefined {
    return servingNodes(this.#redis);
  }

  apply(clientId: string, limits: BucketLimits, op: BucketOp, nowMs?: number): Promise<BucketOutcome> {
    return withDeadline(this.#apply(clientId, limits, op, nowMs), this.#timeoutMs, ACCOUNTING_DEADLINE);
  }

  async #apply(clientId: string, limits: BucketLimits, op: BucketOp, nowMs: number | undefined): Promise<BucketOutcome> {
    const args = [op.kind, String(op.amount), String(limits.rate), String(limits.burst), nowMs === undefined ? '' : String(nowMs)];
    const key = this.key(clientId);
    let reply: unknown;
    try {
      reply = await this.#redis.evalsha(BUCKET_SCRIPT_SHA, 1, key, ...args);
    } catch (e) {
      if (!/NOSCRIPT/.test((e as Error).message ?? '')) throw e;
      this.evalFallbacks++;
      reply = await this.#redis.eval(BUCKET_SCRIPT, 1, key, ...args);
    }
    const [allowed, tokens, retry, reset] = reply as [number, string, number, number];
    return { allowed: Number(allowed) === 1, tokens: Number(tokens), retryAfterMs: Number(retry), resetMs: Number(reset) };
  }
}
