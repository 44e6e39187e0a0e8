/**
 * Builds the cache tiers below memory from the configuration: the global Redis tier (standalone or
 * Cluster) when one is configured, nothing in the embedded default.
 */
import type { PolyrayConfig } from '../config/index.ts';
import type { Logger } from '../log.ts';
import type { Cache } from './cache.ts';
import { RedisCache } from './redis.ts';

export function lowerTiersFromConfig(config: PolyrayConfig, logger: Logger): Cache[] {
  const r = config.cache.redis;
  switch (r.kind) {
    case 'none':
      return [];
    case 'standalone':
    case 'cluster': {
      const common = {
        keyPrefix: r.keyPrefix,
        defaultTtlMs: r.ttlMs,
        readTimeoutMs: r.readTimeoutMs,
        encoding: r.encoding,
        logger: logger.child({ tier: 'global' }),
      };
      return [r.kind === 'standalone' ? new RedisCache({ url: r.url, ...common }) : new RedisCache({ cluster: r.nodes, ...common })];
    }
    default: {
      const never: never = r;
      throw new TypeError(`unknown redis config ${JSON.stringify(never)}`);
    }
  }
}
