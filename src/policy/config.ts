/**
 * Options of request-stream sampling (the trace, src/policy/trace.ts) and of the live cache policy
 * (src/policy/controller.ts) with the prices of its cost model (src/policy/cost.ts). Declared with
 * src/config/define.ts; src/config assembles and validates them.
 */
import path from 'node:path';
import { z } from 'zod';
import { cacheRedis, redisKeyPrefix } from '../cache/config.ts';
import { isOff, MiB, maybe, SECONDS, setting } from '../config/define.ts';
import { nodeEnv } from '../config/process.ts';
import { DEFAULT_PRICES } from './cost.ts';

export const traceSchema = z
  .object({
    /** Fraction of cache keys sampled, by key hash, 0..1 (0 = off). `POLYRAY_TRACE_SAMPLE_RATE`; default 0.1. */
    sampleRate: setting(z.number().min(0).max(1), {
      env: 'POLYRAY_TRACE_SAMPLE_RATE',
      file: 'traceSampleRate',
      default: 0.1,
      doc: 'fraction of keys sampled (0 = off)',
    }),
    /**
     * Folder of rotated JSONL trace files, resolved against the working directory; `off` = none.
     * `POLYRAY_TRACE_DIR`; default `.cache/traces` without Redis, none with Redis or under NODE_ENV=test.
     */
    dir: setting(maybe(z.string()), {
      env: 'POLYRAY_TRACE_DIR',
      file: 'traceDir',
      read: (raw) => (isOff(raw) ? undefined : path.resolve(raw)),
      default: (get) => (get(nodeEnv) !== 'test' && get(cacheRedis).kind === 'none' ? path.resolve('.cache/traces') : undefined),
      defaultDoc: '`.cache/traces` without Redis',
      doc: 'JSONL trace folder (`off` = none)',
    }),
    /** Size at which a trace file is rotated. `POLYRAY_TRACE_FILE_MB` (MiB); default 64 MiB. */
    fileMaxBytes: setting(
      z
        .number()
        .int()
        .min(1)
        .max(2 ** 40),
      {
        env: 'POLYRAY_TRACE_FILE_MB',
        file: 'traceFileMb',
        unit: MiB,
        default: 64 * MiB,
        doc: 'size at which a trace file is rotated',
      },
    ),
    /** Trace files kept. `POLYRAY_TRACE_FILE_KEEP`; default 8. */
    fileKeep: setting(z.number().int().min(1).max(10_000), { env: 'POLYRAY_TRACE_FILE_KEEP', file: 'traceFileKeep', default: 8, doc: 'trace files kept' }),
    /**
     * Redis Stream receiving the trace; `off` = none. `POLYRAY_TRACE_STREAM`; default `<redis key prefix>trace`
     * with Redis, none without Redis or under NODE_ENV=test.
     */
    redisStream: setting(maybe(z.string()), {
      env: 'POLYRAY_TRACE_STREAM',
      file: 'traceStream',
      read: (raw) => (isOff(raw) ? undefined : raw),
      default: (get) => (get(nodeEnv) !== 'test' && get(cacheRedis).kind !== 'none' ? `${get(redisKeyPrefix)}trace` : undefined),
      defaultDoc: '`<key prefix>trace` with Redis',
      doc: 'Redis Stream (`off` = none)',
    }),
    /** Approximate cap of the stream (`XADD MAXLEN ~`). `POLYRAY_TRACE_STREAM_MAXLEN`; default 1,000,000. */
    redisMaxLen: setting(z.number().int().min(1), {
      env: 'POLYRAY_TRACE_STREAM_MAXLEN',
      file: 'traceStreamMaxLen',
      default: 1_000_000,
      doc: '`XADD MAXLEN ~` cap',
    }),
    /** Records buffered for the writers; beyond it the oldest not yet written is dropped and counted. `POLYRAY_TRACE_BUFFER`; default 65,536. */
    bufferMax: setting(z.number().int().min(1), { env: 'POLYRAY_TRACE_BUFFER', file: 'traceBuffer', default: 65_536, doc: 'write buffer (records)' }),
    /** Flush period of that buffer. `POLYRAY_TRACE_FLUSH_MS`; default 1000 ms. */
    flushMs: setting(z.number().int().min(10).max(3_600_000), {
      env: 'POLYRAY_TRACE_FLUSH_MS',
      file: 'traceFlushMs',
      default: 1000,
      doc: 'write buffer flush period',
    }),
  })
  .strict();

/** A price of the cost model: joules or watts, ≥ 0 (src/policy/cost.ts explains each default). */
function price(env: string, file: string, key: keyof typeof DEFAULT_PRICES, doc: string) {
  return setting(z.number().min(0), { env, file, default: DEFAULT_PRICES[key], doc });
}

export const policySchema = z
  .object({
    /** Most recent trace records kept in memory for the live recommendation. `POLYRAY_POLICY_WINDOW`; default 100,000. */
    windowRecords: setting(z.number().int().min(1).max(10_000_000), {
      env: 'POLYRAY_POLICY_WINDOW',
      file: 'policyWindow',
      default: 100_000,
      doc: 'samples in the live window',
    }),
    /** How often the recommendation is recomputed. `POLYRAY_POLICY_INTERVAL_S` (seconds); default 60 s. */
    intervalMs: setting(z.number().int().min(1), {
      env: 'POLYRAY_POLICY_INTERVAL_S',
      file: 'policyIntervalSeconds',
      unit: SECONDS,
      default: 60 * SECONDS,
      doc: 'recommendation period',
    }),
    /** Period of the hit-rate time series of the dashboard. `POLYRAY_POLICY_SERIES_S` (seconds); default 10 s. */
    seriesIntervalMs: setting(z.number().int().min(1), {
      env: 'POLYRAY_POLICY_SERIES_S',
      file: 'policySeriesSeconds',
      unit: SECONDS,
      default: 10 * SECONDS,
      doc: 'hit-rate series period (dashboard)',
    }),
    /** Apply recommended TTLs to new cache entries, within [minTtlMs, maxTtlMs]. `POLYRAY_POLICY_AUTO_APPLY`; default false. */
    autoApply: setting(z.boolean(), {
      env: 'POLYRAY_POLICY_AUTO_APPLY',
      file: 'policyAutoApply',
      default: false,
      doc: 'apply recommended TTLs to new entries',
    }),
    /** Lower bound of auto-applied TTLs. `POLYRAY_POLICY_MIN_TTL_S` (seconds); default 60 s. */
    minTtlMs: setting(z.number().int().min(1), {
      env: 'POLYRAY_POLICY_MIN_TTL_S',
      file: 'policyMinTtlSeconds',
      unit: SECONDS,
      default: 60 * SECONDS,
      doc: 'lower bound of applied TTLs',
    }),
    /** Upper bound of auto-applied TTLs, ≥ the lower one. `POLYRAY_POLICY_MAX_TTL_S` (seconds); default 7 days. */
    maxTtlMs: setting(z.number().int().min(1), {
      env: 'POLYRAY_POLICY_MAX_TTL_S',
      file: 'policyMaxTtlSeconds',
      unit: SECONDS,
      default: 7 * 24 * 3600 * SECONDS,
      doc: 'upper bound of applied TTLs',
    }),
    /** Prices of the cost model (src/policy/cost.ts); `POLYRAY_PRICE_*`, defaults `DEFAULT_PRICES`. */
    prices: z
      .object({
        computeWatts: price('POLYRAY_PRICE_COMPUTE_W', 'priceComputeWatts', 'computeWatts', 'watts drawn while inferring (joules per inference-second)'),
        memoryWattsPerGiB: price('POLYRAY_PRICE_MEMORY_W_PER_GIB', 'priceMemoryWattsPerGiB', 'memoryWattsPerGiB', 'watts per GiB held in the memory tier'),
        globalWattsPerGiB: price('POLYRAY_PRICE_GLOBAL_W_PER_GIB', 'priceGlobalWattsPerGiB', 'globalWattsPerGiB', 'watts per GiB held in the global tier'),
        memoryHitJoules: price('POLYRAY_PRICE_MEMORY_HIT_J', 'priceMemoryHitJoules', 'memoryHitJoules', 'joules per memory hit'),
        globalHitJoules: price('POLYRAY_PRICE_GLOBAL_HIT_J', 'priceGlobalHitJoules', 'globalHitJoules', 'joules per global hit'),
        /** Inference ms assumed for a key never measured: not configurable. */
        defaultComputeMs: setting(z.number().min(0), { default: DEFAULT_PRICES.defaultComputeMs }),
      })
      .strict(),
  })
  .strict()
  .superRefine((p, ctx) => {
    if (p.minTtlMs > p.maxTtlMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['minTtlMs'],
        params: { whole: true },
        message: `POLYRAY_POLICY_MIN_TTL_S (${p.minTtlMs / 1000}) must not exceed POLYRAY_POLICY_MAX_TTL_S (${p.maxTtlMs / 1000})`,
      });
    }
  });
