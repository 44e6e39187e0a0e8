/**
 * Builds the cache tiers below memory from the configuration (the global Redis tier when configured).
 */
import type { PolyrayConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { Cache } from './cache.ts';

export function lowerTiersFromConfig(config: PolyrayConfig, _logger: Logger): Cache[] {
  switch (config.cache.redis.kind) {
    case 'none':
      return [];
    case 'standalone':
    case 'cluster':
      // Wired in with the Redis tier.
      return [];
    default: {
      const never: never = config.cache.redis;
      throw new TypeError(`unknown redis config ${JSON.stringify(never)}`);
    }
  }
}
