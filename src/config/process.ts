/**
 * Options of the process as a whole, read by the composition root (src/main.ts, src/server.ts): the
 * environment it runs in, the log level, the shutdown grace, and the config file itself.
 */
import { z } from 'zod';
import { maybe, setting } from './define.ts';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * JSON file of settings, keyed by the file keys in the README's tables (`{"port": 8080}`); environment
 * variables win over it. `POLYRAY_CONFIG`; default unset. Read before every other setting, so it has no
 * file key of its own.
 */
export const configFile = setting(maybe(z.string()), {
  env: 'POLYRAY_CONFIG',
  default: undefined,
  doc: 'JSON file of settings, keyed by the names in brackets; an unknown key is an error',
});

/**
 * `production` turns the Sandbox landing page off; `test` turns the default trace outputs off. Any other
 * value reads as `development`. `NODE_ENV`; default development.
 */
export const nodeEnv = setting(z.enum(['development', 'production', 'test']), {
  env: 'NODE_ENV',
  file: 'env',
  read: (raw) => (raw === 'production' || raw === 'test' ? raw : 'development'),
  default: 'development',
  doc: '`production` turns the Sandbox landing page off',
});

export const logSchema = z
  .object({
    /** pino level. `LOG_LEVEL`; default info. Logs never contain input text, vectors or keys. */
    level: setting(z.enum(LOG_LEVELS), {
      env: 'LOG_LEVEL',
      file: 'logLevel',
      default: 'info',
      doc: 'pino level; logs never contain input text, vectors or keys',
    }),
  })
  .strict();

/**
 * Time given to in-flight work at shutdown; past it, queued inputs are dropped (not charged), open connections
 * closed and the books flushed (docs/OPERATIONS.md). `POLYRAY_SHUTDOWN_GRACE_MS`; default 10 s.
 */
export const shutdownGraceMs = setting(z.number().int().min(0), {
  env: 'POLYRAY_SHUTDOWN_GRACE_MS',
  file: 'shutdownGraceMs',
  default: 10_000,
  doc: 'drain time on SIGTERM; then queued inputs are dropped (not charged) and the books flushed',
});
