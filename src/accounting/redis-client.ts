/**
 * The accounting Redis connection (quota buckets + usage ledger): a standalone Redis or a Redis Cluster,
 * built from `config.accounting.redis`, and the deadline every accounting call runs under.
 *
 * Both clients fail fast instead of queueing while disconnected (the quota manager then falls back at
 * once). A standalone command is bounded by ioredis' `commandTimeout`. A Cluster client also retries
 * internally — after a closed node connection, CLUSTERDOWN or TRYAGAIN it waits 100 ms and tries again,
 * up to 16 times — so there `commandTimeout` alone does not bound a call; `withDeadline` does, on both,
 * so a call that has not answered after `redisTimeoutMs` counts as Redis being down either way. (As with
 * a standalone timeout, a command already sent may still be applied later: that only ever errs against
 * the client, by charging a reservation it was not served.)
 *
 * `nodeOf` names the node a key's commands go to (the quota store keeps its health per node,
 * store-health.ts); `servingNodes` names the nodes that serve slots now.
 */
import { Cluster, Redis } from 'ioredis';
import { keySlot } from '../cache/redis.ts';
import type { PolyrayConfig } from '../config.ts';

/** What the accounting stores talk to. The commands they use exist on both with the same signatures. */
export type AccountingRedis = Redis | Cluster;

export type AccountingRedisTarget = Exclude<PolyrayConfig['accounting']['redis'], { kind: 'none' }>;

export interface AccountingRedisOptions {
  /** Per-command timeout, ms (`config.accounting.redisTimeoutMs`). */
  timeoutMs: number;
  /** Connect timeout, ms. Default 2000. */
  connectTimeoutMs?: number;
}

// Reconnect forever, 100 ms .. 2 s apart: an outage must heal without a restart.
const backoff = (n: number): number => Math.min(100 * n, 2000);

/** A client that connects on `connect()` (lazy), so construction never touches the network. */
export function createAccountingRedis(target: AccountingRedisTarget, o: AccountingRedisOptions): AccountingRedis {
  const connectTimeout = o.connectTimeoutMs ?? 2000;
  const common = { maxRetriesPerRequest: 1, commandTimeout: o.timeoutMs, connectTimeout };
  switch (target.kind) {
    case 'standalone':
      return new Redis(target.url, { ...common, lazyConnect: true, enableOfflineQueue: false, retryStrategy: backoff });
    case 'cluster':
      return new Cluster(
        target.nodes.map((n) => ({ host: n.host, port: n.port })),
        {
          lazyConnect: true,
          enableOfflineQueue: false,
          scaleReads: 'master',
          slotsRefreshTimeout: Math.max(connectTimeout, 1000),
          clusterRetryStrategy: backoff,
          // A master that restarts in place (same slots) must be reconnected, not dropped until a MOVED.
          clusterNodeRetryStrategy: backoff,
          redisOptions: common,
        },
      );
    default: {
      const never: never = target;
      throw new TypeError(`config.accounting.redis.kind must be standalone or cluster, received ${JSON.stringify(never)}`);
    }
  }
}

/** Rejects when `p` has not settled within `ms` (`p` itself is left to settle; its outcome is ignored). */
export function withDeadline<T>(p: Promise<T>, ms: number | undefined): Promise<T> {
  if (ms === undefined) return p;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`accounting Redis did not answer within ${ms} ms (POLYRAY_QUOTA_REDIS_TIMEOUT_MS)`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** Node name while a Cluster has not loaded its slot map yet: every key maps to it until it has. */
export const UNKNOWN_CLUSTER_NODE = 'cluster';

/**
 * The node that serves `key`: on a Cluster the master of its hash slot, as the client's slot map names it
 * (`host:port`, the same map ioredis routes by); a standalone server is one node (`host:port`).
 */
export function nodeOf(redis: AccountingRedis, key: string): string {
  if (redis instanceof Cluster) return redis.slots[keySlot(key)]?.[0] ?? UNKNOWN_CLUSTER_NODE;
  return `${redis.options.host}:${redis.options.port}`;
}

/** The nodes that serve a slot now (Cluster masters); undefined while that is not known. */
export function servingNodes(redis: AccountingRedis): ReadonlySet<string> | undefined {
  if (!(redis instanceof Cluster)) return new Set([nodeOf(redis, '')]);
  const masters = new Set<string>();
  for (const owners of redis.slots) if (owners?.[0]) masters.add(owners[0]);
  return masters.size > 0 ? masters : undefined;
}
