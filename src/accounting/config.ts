/**
 * Options of clients, quotas and cost attribution (src/accounting): the clients file, where quota buckets
 * and the usage ledger live, what hits cost, and the `/metrics` token. Declared with
 * src/config/define.ts; src/config assembles and validates them.
 */
import path from 'node:path';
import { z } from 'zod';
import { cacheRedis } from '../cache/config.ts';
import { composite, hostPort, hostPortList, list, maybe, parseHostPort, redisUrl, setting } from '../config/define.ts';

/** Standalone Redis for quota buckets and the ledger; wins over everything below. `POLYRAY_QUOTA_REDIS_URL`; default unset. */
const quotaRedisUrl = setting(maybe(redisUrl()), {
  env: 'POLYRAY_QUOTA_REDIS_URL',
  file: 'quotaRedisUrl',
  read: (raw) => raw || undefined,
  default: undefined,
  doc: 'standalone Redis for buckets and the ledger (wins over everything below)',
});

/** Redis Cluster seeds for quota buckets and the ledger. `POLYRAY_QUOTA_REDIS_CLUSTER_NODES`; default unset. */
const quotaRedisClusterNodes = setting(maybe(hostPortList()), {
  env: 'POLYRAY_QUOTA_REDIS_CLUSTER_NODES',
  file: 'quotaRedisClusterNodes',
  read: (raw) => (raw ? list(raw) : undefined),
  default: undefined,
  doc: 'Redis Cluster seeds (`host:port,...`) for buckets and the ledger (wins over `REDIS_URL` / `REDIS_CLUSTER_NODES`)',
});

export const accountingSchema = z
  .object({
    /**
     * JSON file listing clients and their hashed keys, resolved against the working directory.
     * `POLYRAY_CLIENTS_FILE`; default unset: one local development client, no auth.
     */
    clientsFile: setting(maybe(z.string()), {
      env: 'POLYRAY_CLIENTS_FILE',
      file: 'clientsFile',
      read: (raw) => (raw ? path.resolve(raw) : undefined),
      default: undefined,
      doc: 'clients file; unset = local development client, no keys',
    }),
    /**
     * Redis holding quota buckets and the usage ledger, standalone or Cluster. The first that is set wins:
     * `POLYRAY_QUOTA_REDIS_URL` (standalone), `POLYRAY_QUOTA_REDIS_CLUSTER_NODES` (Cluster; setting both is
     * an error), then the cache's `REDIS_URL` (standalone) or `REDIS_CLUSTER_NODES` (Cluster). Default
     * `none`: buckets and books per replica.
     */
    redis: composite(
      z.discriminatedUnion('kind', [
        z.object({ kind: z.literal('none') }).strict(),
        z.object({ kind: z.literal('standalone'), url: redisUrl() }).strict(),
        z.object({ kind: z.literal('cluster'), nodes: z.array(hostPort()).min(1) }).strict(),
      ]),
      {
        inputs: [quotaRedisUrl, quotaRedisClusterNodes],
        compose: (get) => {
          const url = get(quotaRedisUrl);
          const nodes = get(quotaRedisClusterNodes);
          if (url !== undefined && nodes !== undefined) {
            throw new TypeError(
              'Configuration sets both POLYRAY_QUOTA_REDIS_URL and POLYRAY_QUOTA_REDIS_CLUSTER_NODES: choose standalone or Cluster for quotas',
            );
          }
          if (url !== undefined) return { kind: 'standalone' as const, url };
          if (nodes !== undefined) return { kind: 'cluster' as const, nodes: nodes.map((s) => parseHostPort(s)!) };
          const cache = get(cacheRedis);
          if (cache.kind === 'standalone') return { kind: 'standalone' as const, url: cache.url };
          if (cache.kind === 'cluster') return { kind: 'cluster' as const, nodes: cache.nodes.map((n) => ({ ...n })) };
          return { kind: 'none' as const };
        },
      },
    ),
    /**
     * Prefix of every quota / ledger key (layout in src/accounting/keys.ts). An empty hash tag `{}` would
     * spread a client's keys over Cluster slots, so it is refused. `POLYRAY_QUOTA_KEY_PREFIX`; default
     * `polyray:acct:v2:` (v1 was the layout without Cluster hash tags).
     */
    keyPrefix: setting(
      z.string().refine((p) => !p.includes('{}'), { error: 'must not contain an empty hash tag "{}" (a client\'s keys would spread over Cluster slots)' }),
      { env: 'POLYRAY_QUOTA_KEY_PREFIX', file: 'quotaKeyPrefix', default: 'polyray:acct:v2:', doc: 'prefix of bucket and ledger keys (no `{}` in it)' },
    ),
    /**
     * When the quota Redis is unreachable: `share` = per-replica in-memory buckets holding this replica's
     * share of each quota (quota / `POLYRAY_QUOTA_REPLICAS`), so the fleet grants about one quota in all;
     * `open` = per-replica buckets with the whole quota each (the fleet may grant replicas × quota);
     * `closed` = refuse. `POLYRAY_QUOTA_FAILURE_MODE`; default share.
     */
    failureMode: setting(z.enum(['share', 'open', 'closed']), {
      env: 'POLYRAY_QUOTA_FAILURE_MODE',
      file: 'quotaFailureMode',
      default: 'share',
      doc: 'while Redis is down: `share` = per-replica buckets with quota / replicas each; `open` = the whole quota per replica; `closed` = refuse',
    }),
    /** Replicas that share the quotas, for `share`: each grants 1 / replicas of a quota while Redis is down. `POLYRAY_QUOTA_REPLICAS`; default 2. */
    replicas: setting(z.number().int().min(1).max(10_000), {
      env: 'POLYRAY_QUOTA_REPLICAS',
      file: 'quotaReplicas',
      default: 2,
      doc: 'replicas sharing the quotas: with `share`, each grants quota / replicas while Redis is down',
    }),
    /** Longest wait for a quota Redis command before it counts as unreachable. `POLYRAY_QUOTA_REDIS_TIMEOUT_MS`; default 200 ms. */
    redisTimeoutMs: setting(z.number().int().min(1).max(60_000), {
      env: 'POLYRAY_QUOTA_REDIS_TIMEOUT_MS',
      file: 'quotaRedisTimeoutMs',
      default: 200,
      doc: 'a slower quota command counts as Redis down',
    }),
    /** Cost units of an item served from the memory tier. `POLYRAY_COST_MEMORY_HIT`; default 0.01. */
    memoryHitCost: setting(z.number().min(0), { env: 'POLYRAY_COST_MEMORY_HIT', file: 'costMemoryHit', default: 0.01, doc: 'cost units of a memory hit' }),
    /** Cost units of an item served from the global (Redis) tier. `POLYRAY_COST_GLOBAL_HIT`; default 0.05. */
    globalHitCost: setting(z.number().min(0), { env: 'POLYRAY_COST_GLOBAL_HIT', file: 'costGlobalHit', default: 0.05, doc: 'cost units of a global hit' }),
    /**
     * How often the usage ledger is flushed to Redis: the most usage a replica killed outright (SIGKILL, OOM)
     * can lose is what it delivered in this interval (docs/OPERATIONS.md). A flush is one script per client
     * with new usage. `POLYRAY_LEDGER_FLUSH_MS`; default 200 ms.
     */
    ledgerFlushMs: setting(z.number().int().min(10).max(3_600_000), {
      env: 'POLYRAY_LEDGER_FLUSH_MS',
      file: 'ledgerFlushMs',
      default: 200,
      doc: 'ledger flush interval: the most usage a replica killed outright can lose',
    }),
    /**
     * Bearer token `/metrics` requires (`Authorization: Bearer <token>`, Prometheus' `authorization` scrape
     * setting), at least 16 characters; an admin API key is accepted too. `POLYRAY_METRICS_TOKEN`; default
     * unset: with a clients file `/metrics` takes an admin key, without one (development) it is open.
     */
    /**
     * Let `NODE_ENV=production` run without a clients file, every caller an anonymous admin (a deliberate
     * choice: behind a gateway that authenticates, say). `POLYRAY_ALLOW_ANONYMOUS`; default false: such a
     * start is refused.
     */
    allowAnonymous: setting(z.boolean(), {
      env: 'POLYRAY_ALLOW_ANONYMOUS',
      file: 'allowAnonymous',
      default: false,
      doc: 'let production run with no clients file (every caller an anonymous admin); otherwise refused at start',
    }),
    metricsToken: setting(maybe(z.string().min(16, { error: 'must be at least 16 characters' })), {
      env: 'POLYRAY_METRICS_TOKEN',
      file: 'metricsToken',
      default: undefined,
      redact: 'secret',
      doc: 'bearer token `/metrics` accepts (≥ 16 characters) besides an admin key; unset and no clients file = open',
    }),
  })
  .strict();
