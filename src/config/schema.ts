/**
 * The whole configuration as one zod schema, composed from the sections each module declares beside its
 * code. `PolyrayConfig` is its output type; checks that span sections live here.
 */
import { z } from 'zod';
import { accountingSchema } from '../accounting/config.ts';
import { cacheSchema } from '../cache/config.ts';
import { httpSchema, limitsSchema } from '../http/config.ts';
import { imagesSchema } from '../images/config.ts';
import { modelsSchema } from '../models/config.ts';
import { policySchema, traceSchema } from '../policy/config.ts';
import { batchingSchema, inferenceSchema } from '../runtime/config.ts';
import { telemetrySchema } from '../telemetry/config.ts';
import { usageSchema } from '../usage/config.ts';
import { logSchema, nodeEnv, shutdownGraceMs } from './process.ts';

export const polyrayConfigSchema = z
  .object({
    env: nodeEnv,
    http: httpSchema,
    log: logSchema,
    models: modelsSchema,
    inference: inferenceSchema,
    batching: batchingSchema,
    /** Image inputs: fetching (src/images/fetch.ts) and decoding limits. */
    images: imagesSchema,
    cache: cacheSchema,
    limits: limitsSchema,
    shutdownGraceMs,
    /** Clients, quotas and cost attribution (src/accounting). */
    accounting: accountingSchema,
    /** The usage database: durable books, history, budgets (src/usage). */
    usage: usageSchema,
    /** Request-stream sampling for the cache-policy simulator (src/policy, docs/CACHE-POLICY.md). */
    trace: traceSchema,
    /** The live cache policy (src/policy/controller.ts). */
    policy: policySchema,
    /** OpenTelemetry tracing (src/telemetry). */
    telemetry: telemetrySchema,
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.env === 'production' && c.accounting.clientsFile === undefined && !c.accounting.allowAnonymous) {
      ctx.addIssue({
        code: 'custom',
        path: ['accounting', 'clientsFile'],
        params: { whole: true },
        message:
          'NODE_ENV=production with no POLYRAY_CLIENTS_FILE would make every caller an anonymous admin: create one ' +
          '(npm run polyray -- clients add --id NAME --file clients.json) and set POLYRAY_CLIENTS_FILE, or set POLYRAY_ALLOW_ANONYMOUS=true to run open on purpose',
      });
    }
    if (c.limits.maxInputsPerRequest > c.batching.maxQueueItems) {
      ctx.addIssue({
        code: 'custom',
        path: ['limits', 'maxInputsPerRequest'],
        params: { whole: true },
        message: `POLYRAY_MAX_INPUTS (${c.limits.maxInputsPerRequest}) must not exceed POLYRAY_QUEUE_MAX_ITEMS (${c.batching.maxQueueItems}): one request could never be queued`,
      });
    } else if (c.limits.maxInputsPerRequest > c.batching.maxQueueItemsPerClient) {
      ctx.addIssue({
        code: 'custom',
        path: ['batching', 'maxQueueItemsPerClient'],
        params: { whole: true },
        message: `POLYRAY_QUEUE_MAX_ITEMS_PER_CLIENT (${c.batching.maxQueueItemsPerClient}) must be at least POLYRAY_MAX_INPUTS (${c.limits.maxInputsPerRequest}): one request could never be queued`,
      });
    }
  });

export type PolyrayConfig = z.output<typeof polyrayConfigSchema>;
