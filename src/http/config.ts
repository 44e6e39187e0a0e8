/**
 * Options of the HTTP listener and of what one request may carry (src/server.ts wires them into
 * Fastify and the resolvers). Declared with src/config/define.ts; src/config assembles and validates them.
 */
import { z } from 'zod';
import { setting } from '../config/define.ts';

export const httpSchema = z
  .object({
    /** Address the listener binds. `HOST`; default 0.0.0.0. */
    host: setting(z.string(), { env: 'HOST', file: 'host', default: '0.0.0.0', doc: 'HTTP listen address' }),
    /** Listener port (0: any free port). `PORT`; default 4000. */
    port: setting(z.number().int().min(0).max(65535), {
      env: 'PORT',
      file: 'port',
      default: 4000,
      doc: 'HTTP port (`/graphql`, `/healthz`, `/readyz`)',
    }),
    /** Largest accepted request body in bytes. `POLYRAY_BODY_LIMIT_BYTES`; default 16 MiB. */
    bodyLimitBytes: setting(z.number().int().min(1024), {
      env: 'POLYRAY_BODY_LIMIT_BYTES',
      file: 'bodyLimitBytes',
      default: 16 * 1024 * 1024,
      defaultDoc: '16 MiB',
      doc: 'HTTP request body limit',
    }),
  })
  .strict();

export const limitsSchema = z
  .object({
    /**
     * Most inputs in one `embed` call (`TOO_MANY_INPUTS` beyond). Must not exceed `POLYRAY_QUEUE_MAX_ITEMS`,
     * or one request could never be queued. `POLYRAY_MAX_INPUTS`; default 2048.
     */
    maxInputsPerRequest: setting(z.number().int().min(1).max(1_000_000), {
      env: 'POLYRAY_MAX_INPUTS',
      file: 'maxInputs',
      default: 2048,
      doc: 'inputs per `embed` call (`TOO_MANY_INPUTS`)',
    }),
    /** Longest input text in bytes (UTF-8), `INPUT_TOO_LARGE` beyond. `POLYRAY_MAX_INPUT_BYTES`; default 64 KiB. */
    maxInputBytes: setting(z.number().int().min(1), {
      env: 'POLYRAY_MAX_INPUT_BYTES',
      file: 'maxInputBytes',
      default: 64 * 1024,
      doc: "bytes per input (`INPUT_TOO_LARGE`); the model's `maxTokens` also applies",
    }),
  })
  .strict();
