/**
 * Options of the cache tiers (src/cache): the per-replica memory tier and the global tier (a standalone
 * Redis or a Redis Cluster, or none: the embedded default). Declared with src/config/define.ts;
 * src/config assembles and validates them.
 */
import { z } from 'zod';
import { composite, hostPort, hostPortList, list, MiB, maybe, parseHostPort, redisUrl, SECONDS, setting } from '../config/define.ts';

export const memorySchema = z
  .object({
    /** Memory tier size in bytes (vectors + overhead). `POLYRAY_MEMORY_CACHE_MB` (MiB); default 256 MiB. */
    maxBytes: setting(
      z
        .number()
        .int()
        .min(1)
        .max(2 ** 40),
      {
        env: 'POLYRAY_MEMORY_CACHE_MB',
        file: 'memoryCacheMb',
        unit: MiB,
        default: 256 * MiB,
        doc: 'memory tier size (bytes of vectors + overhead)',
      },
    ),
    /** Memory tier TTL, 0 = none. `POLYRAY_MEMORY_CACHE_TTL_S` (seconds); default 1 hour. */
    ttlMs: setting(z.number().int().min(0), {
      env: 'POLYRAY_MEMORY_CACHE_TTL_S',
      file: 'memoryCacheTtlSeconds',
      unit: SECONDS,
      default: 3600 * SECONDS,
      doc: 'memory tier TTL (0 = none)',
    }),
  })
  .strict();

/** Standalone global tier. `REDIS_URL` (`redis://` or `rediss://`); default unset. */
export const redisUrlSetting = setting(maybe(redisUrl()), {
  env: 'REDIS_URL',
  file: 'redisUrl',
  read: (raw) => raw || undefined,
  default: undefined,
  doc: 'global tier on a standalone Redis, `redis://host:6379`; also quotas and the ledger unless set apart (see Clients, quotas and costs)',
});

/** Global tier on a Redis Cluster: seed nodes. `REDIS_CLUSTER_NODES` (`host:port,host:port`); default unset. Not with `REDIS_URL`. */
export const redisClusterNodes = setting(maybe(hostPortList()), {
  env: 'REDIS_CLUSTER_NODES',
  file: 'redisClusterNodes',
  read: (raw) => (raw ? list(raw) : undefined),
  default: undefined,
  doc: 'global tier on a Redis Cluster: `host:port,host:port` seeds (not with `REDIS_URL`); also quotas and the ledger unless set apart',
});

/** Global tier TTL. `POLYRAY_REDIS_TTL_S` (seconds); default 7 days. */
const ttlMs = setting(z.number().int().min(1), {
  env: 'POLYRAY_REDIS_TTL_S',
  file: 'redisTtlSeconds',
  unit: SECONDS,
  default: 7 * 24 * 3600 * SECONDS,
  doc: 'global tier TTL',
});

/** A global read slower than this counts as a miss. `POLYRAY_REDIS_READ_TIMEOUT_MS`; default 50 ms. */
const readTimeoutMs = setting(z.number().int().min(1).max(60_000), {
  env: 'POLYRAY_REDIS_READ_TIMEOUT_MS',
  file: 'redisReadTimeoutMs',
  default: 50,
  doc: 'a slower global read counts as a miss',
});

/** Vector encoding in the global tier; float16 halves its memory (error ≤ 4.9e-4 per component). `POLYRAY_REDIS_ENCODING`; default float32. */
const encoding = setting(z.enum(['float32', 'float16']), {
  env: 'POLYRAY_REDIS_ENCODING',
  file: 'redisEncoding',
  default: 'float32',
  doc: "`float16` halves the global tier's memory (error ≤ 4.9e-4 per component)",
});

/** Prefix of every global-tier key (and of the trace stream's default name). `POLYRAY_REDIS_KEY_PREFIX`; default `polyray:v1:`. */
export const redisKeyPrefix = setting(z.string(), {
  env: 'POLYRAY_REDIS_KEY_PREFIX',
  file: 'redisKeyPrefix',
  default: 'polyray:v1:',
  doc: 'prefix of every global-tier key',
});

const tier = { ttlMs, readTimeoutMs, encoding, keyPrefix: redisKeyPrefix };

/**
 * The global tier: `none` (embedded default: memory only), `standalone` from `REDIS_URL`, or `cluster`
 * from `REDIS_CLUSTER_NODES` (setting both is an error), with the TTL, read timeout, encoding and key
 * prefix above.
 */
export const cacheRedis = composite(
  z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('none') }).strict(),
    z.object({ kind: z.literal('standalone'), url: redisUrl(), ...tier }).strict(),
    z.object({ kind: z.literal('cluster'), nodes: z.array(hostPort()).min(1), ...tier }).strict(),
  ]),
  {
    inputs: [redisUrlSetting, redisClusterNodes, ttlMs, readTimeoutMs, encoding, redisKeyPrefix],
    compose: (get) => {
      const url = get(redisUrlSetting);
      const nodes = get(redisClusterNodes);
      if (url !== undefined && nodes !== undefined)
        throw new TypeError('Configuration sets both REDIS_URL and REDIS_CLUSTER_NODES: choose standalone or Cluster');
      const common = { ttlMs: get(ttlMs), readTimeoutMs: get(readTimeoutMs), encoding: get(encoding), keyPrefix: get(redisKeyPrefix) };
      if (url !== undefined) return { kind: 'standalone' as const, url, ...common };
      if (nodes !== undefined) return { kind: 'cluster' as const, nodes: nodes.map((s) => parseHostPort(s)!), ...common };
      return { kind: 'none' as const };
    },
  },
);

export const cacheSchema = z.object({ memory: memorySchema, redis: cacheRedis }).strict();
