/**
 * Project issue 3: GLOBAL (Redis) hits beside memory hits and computes, `text-glove`, one run.
 *
 * Service A (REDIS_URL + a unique key prefix) computes a set of texts (written to Redis) and is measured
 * for memory hits and cache misses; it is stopped, and service B starts with the same prefix and a cold
 * memory tier: each text it is asked for once is a GLOBAL hit. Every key under the unique prefix (the
 * quota and trace keys are put under it too) is deleted at the end with SCAN + DEL; never FLUSHALL.
 */
import { Redis } from 'ioredis';
import type { PhaseResult } from './load.ts';
import { embed, runPhase } from './load.ts';
import { peakRss, type ServiceProcess } from './service.ts';

export interface GlobalHitResult {
  redisUrl: string;
  keyPrefix: string;
  warmedTexts: number;
  keysWritten: number;
  keysDeleted: number;
  phases: PhaseResult[];
  peakRssMiB: Record<string, number>;
  error?: string;
}

export interface GlobalHitOptions {
  redisUrl: string;
  warmTexts: string[];
  missTexts: (n: number) => string[];
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  base64Length: number;
  start: (label: string, env: Record<string, string>) => Promise<ServiceProcess>;
  log: (s: string) => void;
  logPhase: (label: string, p: PhaseResult) => void;
  checkAbort: () => void;
}

async function scanDel(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let n = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) n += await redis.del(...keys);
  } while (cursor !== '0');
  return n;
}

async function countKeys(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let n = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    n += keys.length;
  } while (cursor !== '0');
  return n;
}

export async function measureGlobalHits(o: GlobalHitOptions): Promise<GlobalHitResult> {
  const keyPrefix = `polyray-bench:${process.pid}:${Date.now().toString(36)}:`;
  const env = { REDIS_URL: o.redisUrl, POLYRAY_REDIS_KEY_PREFIX: keyPrefix, POLYRAY_QUOTA_KEY_PREFIX: `${keyPrefix}acct:` };
  const r: GlobalHitResult = { redisUrl: o.redisUrl, keyPrefix, warmedTexts: o.warmTexts.length, keysWritten: 0, keysDeleted: 0, phases: [], peakRssMiB: {} };
  const redis = new Redis(o.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000 });
  try {
    await redis.connect();
    await redis.ping();
  } catch (e) {
    redis.disconnect();
    r.error = `no Redis at ${o.redisUrl}: ${(e as Error).message}`;
    o.log(`global-hit row skipped: ${r.error}`);
    return r;
  }
  try {
    const a = await o.start('redis A (warms)', env);
    try {
      for (let i = 0; i < o.warmTexts.length; i += 64) {
        const x = await embed(a.url, o.warmTexts.slice(i, i + 64), o.base64Length, 'http');
        if (!x.ok || x.sources.some((s) => s !== 'COMPUTED')) throw new Error(`warming failed: ${JSON.stringify(x).slice(0, 300)}`);
      }
      // Global writes are asynchronous: wait until the keys are there (or 5 s).
      const until = performance.now() + 5000;
      while (performance.now() < until) {
        r.keysWritten = await countKeys(redis, `${keyPrefix}`);
        if (r.keysWritten >= o.warmTexts.length) break;
        await new Promise((res) => setTimeout(res, 200));
      }
      o.log(`  redis: ${r.keysWritten} keys under the bench prefix after warming ${o.warmTexts.length} texts`);
      let next = 0;
      const hot = o.warmTexts.slice(0, 1024);
      const ctx = { url: a.url, servicePid: a.pid, base64Length: o.base64Length, checkAbort: o.checkAbort };
      const mem = await runPhase(
        {
          id: `redis-mem-c${o.concurrency}`,
          kind: 'memory',
          concurrency: o.concurrency,
          inputsPerRequest: 1,
          warmupMs: o.warmupMs,
          durationMs: o.durationMs,
          client: 'http',
        },
        { ...ctx, nextTexts: (n) => Array.from({ length: n }, () => hot[next++ % hot.length]!) },
      );
      r.phases.push(mem.result);
      o.logPhase('redis A', mem.result);
      const miss = await runPhase(
        {
          id: `redis-miss-c${o.concurrency}`,
          kind: 'miss',
          concurrency: o.concurrency,
          inputsPerRequest: 1,
          warmupMs: o.warmupMs,
          durationMs: o.durationMs,
          client: 'http',
        },
        { ...ctx, nextTexts: o.missTexts },
      );
      r.phases.push(miss.result);
      o.logPhase('redis A', miss.result);
      r.peakRssMiB['redis A'] = peakRss(a.pid).hwmMiB;
    } finally {
      await a.stop();
    }
    const b = await o.start('redis B (cold memory)', env);
    try {
      // Each warmed text once, in order: GLOBAL while the set lasts (then MEMORY, counted as unexpected).
      let next = 0;
      const g = await runPhase(
        {
          id: `redis-global-c${o.concurrency}`,
          kind: 'global',
          concurrency: o.concurrency,
          inputsPerRequest: 1,
          warmupMs: o.warmupMs,
          durationMs: o.durationMs,
          client: 'http',
        },
        {
          url: b.url,
          servicePid: b.pid,
          base64Length: o.base64Length,
          checkAbort: o.checkAbort,
          nextTexts: (n) => Array.from({ length: n }, () => o.warmTexts[next++ % o.warmTexts.length]!),
        },
      );
      r.phases.push(g.result);
      o.logPhase('redis B', g.result);
      if (next > o.warmTexts.length)
        o.log(`  note: the global phase used ${next} texts, more than the ${o.warmTexts.length} warmed (the rest were MEMORY hits)`);
      r.peakRssMiB['redis B'] = peakRss(b.pid).hwmMiB;
    } finally {
      await b.stop();
    }
  } catch (e) {
    r.error = (e as Error).message.slice(0, 1000);
    o.log(`global-hit row failed: ${r.error}`);
  } finally {
    try {
      r.keysDeleted = await scanDel(redis, keyPrefix);
      o.log(`  redis: deleted ${r.keysDeleted} keys under ${keyPrefix} (SCAN + DEL)`);
    } finally {
      redis.disconnect();
    }
  }
  return r;
}
