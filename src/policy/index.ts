/**
 * Builds the trace and the live policy from the configuration (used by the server's composition root).
 */
import type { Cache } from '../cache/cache.ts';
import type { PolyrayConfig } from '../config/index.ts';
import type { Logger } from '../log.ts';
import type { ServiceStats } from '../service/types.ts';
import { PolicyController } from './controller.ts';
import { Tracer, type TraceWriter } from './trace.ts';
import { TtlOverrideCache } from './ttl-override.ts';
import { JsonlTraceWriter, RedisStreamTraceWriter } from './writers.ts';

export { PolicyController } from './controller.ts';
export { Tracer } from './trace.ts';
export { TtlOverrideCache } from './ttl-override.ts';

export function createTracer(config: PolyrayConfig, logger: Logger): Tracer {
  const t = config.trace;
  const writers: TraceWriter[] = [];
  if (t.sampleRate > 0 && t.dir) writers.push(new JsonlTraceWriter({ dir: t.dir, maxFileBytes: t.fileMaxBytes, keepFiles: t.fileKeep }));
  const r = config.cache.redis;
  if (t.sampleRate > 0 && t.redisStream && r.kind !== 'none') {
    writers.push(
      new RedisStreamTraceWriter({ target: r.kind === 'standalone' ? { url: r.url } : { cluster: r.nodes }, key: t.redisStream, maxLen: t.redisMaxLen }),
    );
  }
  const tracer = new Tracer({
    sampleRate: t.sampleRate,
    writers,
    windowRecords: config.policy.windowRecords,
    bufferMax: t.bufferMax,
    flushMs: t.flushMs,
    logger: logger.child({ component: 'trace' }),
  });
  if (t.sampleRate > 0) {
    logger.info({ sampleRate: t.sampleRate, writers: writers.map((w) => w.name), dir: t.dir, stream: t.redisStream }, 'request trace sampling on');
  }
  return tracer;
}

/** Wraps each tier so the policy can change the TTL of new entries. */
export function withTtlControl(tiers: Cache[]): TtlOverrideCache[] {
  return tiers.map((t) => (t instanceof TtlOverrideCache ? t : new TtlOverrideCache(t)));
}

export function createPolicyController(
  config: PolyrayConfig,
  logger: Logger,
  parts: { tracer: Tracer; tiers: readonly TtlOverrideCache[]; stats: () => ServiceStats },
): PolicyController {
  const r = config.cache.redis;
  const p = config.policy;
  return new PolicyController({
    window: parts.tracer.window,
    measured: () => parts.tracer.measuredOverWindow(),
    sampleRate: config.trace.sampleRate,
    memory: { maxBytes: config.cache.memory.maxBytes, ttlMs: config.cache.memory.ttlMs, tier: parts.tiers[0] },
    global:
      r.kind === 'none' || parts.tiers.length < 2 ? null : { ttlMs: r.ttlMs, encoding: r.encoding, keyPrefixLength: r.keyPrefix.length, tier: parts.tiers[1] },
    intervalMs: p.intervalMs,
    seriesIntervalMs: p.seriesIntervalMs,
    autoApply: p.autoApply,
    minTtlMs: p.minTtlMs,
    maxTtlMs: p.maxTtlMs,
    prices: p.prices,
    stats: parts.stats,
    logger: logger.child({ component: 'cache-policy' }),
  });
}
