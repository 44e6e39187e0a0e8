/**
 * The one ioredis client factory: a standalone Redis or a Redis Cluster, with the settings every Polyray
 * Redis user relies on. The cache tier (src/cache/redis.ts) and accounting (src/accounting/redis-client.ts)
 * both build their clients here; what they store is theirs.
 *
 * Settings, and why:
 *   - no offline queue: while disconnected a command fails at once instead of piling up, so callers fall
 *     back (cache miss, per-replica quota) without waiting;
 *   - one retry per request, bounded connect time;
 *   - reconnect forever, 100 ms .. 2 s apart: an outage must heal without a restart. On a Cluster this
 *     holds for node connections too (ioredis' default drops a lost node's connection and waits for a
 *     MOVED, so a master that restarts in place, same slots, would stay unreachable);
 *   - Cluster reads and writes go to masters only (`scaleReads: 'master'`): a replica may lag.
 */
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';

/** What a Redis user talks to. The commands Polyray sends exist on both with the same signatures. */
export type RedisClient = Redis | Cluster;

export interface RedisNodeAddress {
  host: string;
  port: number;
}

/** Where to connect: a standalone server URL (`redis://[user:pass@]host:port[/db]`, `rediss://`) or Cluster seed nodes. */
export type RedisTarget = { url: string } | { cluster: readonly RedisNodeAddress[] };

export interface RedisClientOptions {
  /** TCP connect timeout, milliseconds; also bounds a Cluster slot map refresh (at least 1000). Default 1000. */
  connectTimeoutMs?: number;
  /**
   * ioredis `commandTimeout`: a command not answered within it rejects, milliseconds. On a Cluster it
   * bounds each attempt only (ioredis retries internally), so callers that need a bound on the whole
   * call use `withDeadline` (deadline.ts). Default: none.
   */
  commandTimeoutMs?: number | undefined;
  /** Connect on `connect()` rather than at construction (construction then touches no network). Default false. */
  lazyConnect?: boolean;
}

export const DEFAULT_REDIS_CLIENT_OPTIONS: Readonly<Required<Omit<RedisClientOptions, 'commandTimeoutMs'>>> = Object.freeze({
  connectTimeoutMs: 1000,
  lazyConnect: false,
});

// Reconnect forever, 100 ms .. 2 s apart.
const reconnectDelay = (times: number): number => Math.min(100 * times, 2000);

/** Builds a client for `target`. Throws a TypeError naming the field when the target or an option is invalid. */
export function createRedisClient(target: RedisTarget, options: RedisClientOptions = {}): RedisClient {
  const connectTimeout = options.connectTimeoutMs ?? DEFAULT_REDIS_CLIENT_OPTIONS.connectTimeoutMs;
  const commandTimeout = options.commandTimeoutMs;
  const lazyConnect = options.lazyConnect ?? DEFAULT_REDIS_CLIENT_OPTIONS.lazyConnect;
  positive('connectTimeoutMs', connectTimeout);
  if (commandTimeout !== undefined) positive('commandTimeoutMs', commandTimeout);
  const checked = checkTarget(target);
  const perConnection: RedisOptions = {
    connectTimeout,
    maxRetriesPerRequest: 1,
    ...(commandTimeout !== undefined ? { commandTimeout } : {}),
  };
  const lazy = lazyConnect ? { lazyConnect: true } : {};
  if ('url' in checked) {
    return new Redis(checked.url, { ...perConnection, ...lazy, enableOfflineQueue: false, retryStrategy: reconnectDelay });
  }
  const clusterOptions: ClusterOptions = {
    ...lazy,
    enableOfflineQueue: false,
    scaleReads: 'master',
    slotsRefreshTimeout: Math.max(connectTimeout, 1000),
    clusterRetryStrategy: reconnectDelay,
    clusterNodeRetryStrategy: reconnectDelay,
    redisOptions: perConnection,
  };
  return new Cluster(
    checked.cluster.map((n) => ({ host: n.host, port: n.port })),
    clusterOptions,
  );
}

/**
 * Whether the server answers PING; on a Cluster every master must answer (a caller whose reads fan out
 * to all of them needs all of them), and asking also opens the node connections ioredis opens lazily.
 * Never rejects.
 */
export async function pingAll(client: RedisClient): Promise<boolean> {
  try {
    if (!(client instanceof Cluster)) return (await client.ping()) === 'PONG';
    const masters = client.nodes('master');
    if (masters.length === 0) return false;
    const replies = await Promise.all(masters.map((m) => m.ping()));
    return replies.every((r) => r === 'PONG');
  } catch {
    return false;
  }
}

/** The URL with any password replaced by `***`, for error messages and logs. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//***@');
}

function checkTarget(target: RedisTarget): RedisTarget {
  if ('url' in target) {
    const url: unknown = target.url;
    let ok = false;
    if (typeof url === 'string') {
      try {
        const u = new URL(url);
        ok = (u.protocol === 'redis:' || u.protocol === 'rediss:') && u.hostname !== '';
      } catch {
        ok = false;
      }
    }
    // The URL may carry a password: never echo it back.
    if (!ok) fail('url', 'a redis:// or rediss:// URL with a host', typeof url === 'string' ? redactUrl(url) : url);
    return target;
  }
  const nodes: unknown = target.cluster;
  if (!Array.isArray(nodes) || nodes.length === 0) fail('cluster', 'a non-empty array of { host, port }', nodes);
  nodes.forEach((n: unknown, i: number) => {
    const node = n as Partial<RedisNodeAddress> | null;
    if (node === null || typeof node !== 'object' || typeof node.host !== 'string' || node.host === '') {
      fail(`cluster[${i}].host`, 'a non-empty string', node?.host);
    }
    if (typeof node.port !== 'number' || !Number.isInteger(node.port) || node.port < 1 || node.port > 65535) {
      fail(`cluster[${i}].port`, 'an integer between 1 and 65535', node.port);
    }
  });
  return target;
}

function positive(option: string, v: unknown): void {
  if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) fail(option, 'a positive number of milliseconds', v);
}

function fail(option: string, expected: string, value: unknown): never {
  const shown = typeof value === 'string' ? JSON.stringify(value) : Array.isArray(value) ? `an array of length ${value.length}` : String(value);
  throw new TypeError(`Redis client option ${option} must be ${expected}, got ${shown}`);
}
