/**
 * The accounting Redis connection (quota buckets + usage ledger): the settings accounting builds the
 * shared client with (src/redis/client.ts), from `config.accounting.redis`, and the deadline every
 * accounting call runs under.
 *
 * The client connects lazily (construction never touches the network) and fails fast instead of queueing
 * while disconnected, so the quota manager falls back at once. `withDeadline(p, redisTimeoutMs,
 * ACCOUNTING_DEADLINE)` (src/redis/deadline.ts) bounds every call, standalone or Cluster (whose client
 * retries internally), so a call that has not answered after `redisTimeoutMs` of a running event loop
 * counts as Redis being down; ioredis' `commandTimeout` is only a backstop, well beyond it. (As with a standalone timeout, a command already sent may still be applied later: that only ever
 * errs against the client, by charging a reservation it was not served.)
 */
import type { PolyrayConfig } from '../config/index.ts';
import { createRedisClient, type RedisClient, type RedisTarget } from '../redis/client.ts';
import type { DeadlineLabel } from '../redis/deadline.ts';

/** What the accounting stores talk to: a standalone Redis or a Redis Cluster. */
export type AccountingRedis = RedisClient;

export type AccountingRedisTarget = Exclude<PolyrayConfig['accounting']['redis'], { kind: 'none' }>;

export interface AccountingRedisOptions {
  /** Per-command timeout, ms (`config.accounting.redisTimeoutMs`). */
  timeoutMs: number;
  /** Connect timeout, ms. Default 2000. */
  connectTimeoutMs?: number;
}

/** ioredis' command timeout as a multiple of the accounting deadline (at least 5 s). */
const STALL_BACKSTOP = 10;

/** How an accounting call past its deadline is reported: it names the setting to change. */
export const ACCOUNTING_DEADLINE: DeadlineLabel = { what: 'accounting Redis', option: 'POLYRAY_QUOTA_REDIS_TIMEOUT_MS' };

/** A client that connects on `connect()` (lazy), so construction never touches the network. */
export function createAccountingRedis(target: AccountingRedisTarget, o: AccountingRedisOptions): AccountingRedis {
  // Every accounting call runs under withDeadline(timeoutMs), which tells a stalled event loop from a slow
  // Redis. ioredis' own command timeout is a plain timer that a stall would fire with the reply already
  // waiting unread, so it is only the backstop that drops commands of a hung connection: STALL_BACKSTOP × the deadline.
  return createRedisClient(redisTarget(target), {
    connectTimeoutMs: o.connectTimeoutMs ?? 2000,
    commandTimeoutMs: Math.max(STALL_BACKSTOP * o.timeoutMs, 5000),
    lazyConnect: true,
  });
}

function redisTarget(target: AccountingRedisTarget): RedisTarget {
  switch (target.kind) {
    case 'standalone':
      return { url: target.url };
    case 'cluster':
      return { cluster: target.nodes };
    default: {
      const never: never = target;
      throw new TypeError(`config.accounting.redis.kind must be standalone or cluster, received ${JSON.stringify(never)}`);
    }
  }
}
