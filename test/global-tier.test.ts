/**
 * The global tier through the real service: replicas sharing one Redis, back-fill, version isolation,
 * and Redis faults that must never become client errors.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, symlink, writeFile, mkdir, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { PolyrayConfig } from '../src/config/index.ts';
import { MODELS_DIR, startPolyray, type TestServer } from './helpers/polyray.ts';
import { startRedisServer, waitFor, type RedisServerHandle } from './helpers/redis-server.ts';

const EMBED = `query($inputs: [EmbedInput!]!) { embed(model: "text-glove", inputs: $inputs) { source vector } }`;
type EmbedData = { embed: { source: string; vector: number[] }[] };

function redisConfig(url: string, keyPrefix: string): PolyrayConfig['cache']['redis'] {
  return { kind: 'standalone', url, ttlMs: 60_000, readTimeoutMs: 200, encoding: 'float32', keyPrefix };
}

describe('replicas sharing the global tier', () => {
  const prefix = `polyray:test:${randomUUID()}:`;
  const url = 'redis://127.0.0.1:6379';
  let a: TestServer;
  let b: TestServer;
  before(async () => {
    a = await startPolyray({ cache: { redis: redisConfig(url, prefix) } });
    b = await startPolyray({ cache: { redis: redisConfig(url, prefix) } });
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
  });

  test('a text computed by one replica is a GLOBAL hit on the other, then MEMORY there', async () => {
    const text = `shared ${randomUUID()} river mountain`;
    const first = await a.gql<EmbedData>(EMBED, { inputs: [{ text }] });
    assert.equal(first.data!.embed[0]!.source, 'COMPUTED');
    await a.server.cache.flush();
    const second = await b.gql<EmbedData>(EMBED, { inputs: [{ text }] });
    assert.equal(second.data!.embed[0]!.source, 'GLOBAL');
    assert.deepEqual(second.data!.embed[0]!.vector, first.data!.embed[0]!.vector);
    const third = await b.gql<EmbedData>(EMBED, { inputs: [{ text }] });
    assert.equal(third.data!.embed[0]!.source, 'MEMORY');
    const stats = b.server.cache.stats();
    assert.deepEqual(
      stats.map((s) => s.tier),
      ['memory', 'global'],
    );
    assert.ok(stats[1]!.hits >= 1);
  });

  test('mixed batches: each input reports its own source', async () => {
    const salt = randomUUID();
    const t1 = `${salt} one garden`;
    const t2 = `${salt} two ocean`;
    const t3 = `${salt} three winter`;
    await a.gql(EMBED, { inputs: [{ text: t1 }, { text: t2 }] });
    await a.server.cache.flush();
    await b.gql(EMBED, { inputs: [{ text: t1 }] });
    const r = await b.gql<EmbedData>(EMBED, { inputs: [{ text: t1 }, { text: t2 }, { text: t3 }] });
    assert.deepEqual(
      r.data!.embed.map((e) => e.source),
      ['MEMORY', 'GLOBAL', 'COMPUTED'],
    );
  });

  test('concurrent identical misses on two replicas compute at most once per replica', async () => {
    const text = `race ${randomUUID()} music school`;
    const itemsA = a.server.host.tokenQueue('text-glove')!.stats().items;
    const itemsB = b.server.host.tokenQueue('text-glove')!.stats().items;
    await Promise.all([
      ...Array.from({ length: 5 }, () => a.gql(EMBED, { inputs: [{ text }] })),
      ...Array.from({ length: 5 }, () => b.gql(EMBED, { inputs: [{ text }] })),
    ]);
    const computed = a.server.host.tokenQueue('text-glove')!.stats().items - itemsA + (b.server.host.tokenQueue('text-glove')!.stats().items - itemsB);
    assert.ok(computed >= 1 && computed <= 2, `computed ${computed} times across 2 replicas`);
  });
});

describe('model version isolation', () => {
  const prefix = `polyray:test:${randomUUID()}:`;
  let tmp: string;
  before(async () => {
    // The same model under another version: same weights (symlinked), different manifest version.
    tmp = await mkdtemp(path.join(tmpdir(), 'polyray-models-'));
    const src = path.join(MODELS_DIR, 'text-glove');
    const dst = path.join(tmp, 'text-glove');
    await mkdir(dst);
    for (const f of await readdir(src)) {
      if (f === 'manifest.json') continue;
      await symlink(path.join(src, f), path.join(dst, f));
    }
    const manifest = JSON.parse(await readFile(path.join(src, 'manifest.json'), 'utf8')) as { version: string };
    manifest.version = 'upgraded0000test';
    await writeFile(path.join(dst, 'manifest.json'), JSON.stringify(manifest));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  test('an upgraded model never reads vectors of the old version', async () => {
    const url = 'redis://127.0.0.1:6379';
    const oldV = await startPolyray({ cache: { redis: redisConfig(url, prefix) } });
    const newV = await startPolyray({ cache: { redis: redisConfig(url, prefix) }, models: { dir: tmp, buildMissing: false } });
    try {
      const text = `versioned ${randomUUID()}`;
      await oldV.gql(EMBED, { inputs: [{ text }] });
      await oldV.server.cache.flush();
      const r = await newV.gql<EmbedData>(EMBED, { inputs: [{ text }] });
      assert.equal(r.data!.embed[0]!.source, 'COMPUTED');
      const m = await newV.gql<{ models: { version: string }[] }>('{ models { version } }');
      assert.equal(m.data!.models[0]!.version, 'upgraded0000test');
    } finally {
      await oldV.stop();
      await newV.stop();
    }
  });
});

describe('Redis faults are not client errors', () => {
  let redis: RedisServerHandle;
  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => {
    await redis?.stop();
  });

  test('kill and restart redis-server mid-load: zero failed requests, the tier recovers', { timeout: 60_000 }, async () => {
    const prefix = `polyray:test:${randomUUID()}:`;
    const s = await startPolyray({ cache: { redis: redisConfig(redis.url, prefix) } });
    try {
      const salt = randomUUID();
      let failures = 0;
      let requests = 0;
      const sources = new Map<string, number>();
      const deadline = Date.now() + 5000;
      const client = async (c: number): Promise<void> => {
        for (let i = 0; Date.now() < deadline && i < 2000; i++) {
          // Half repeated texts (cache traffic), half new ones (computes + writes).
          const text = i % 2 === 0 ? `${salt} repeated ${i % 20}` : `${salt} client ${c} new ${i}`;
          const r = await s.gql<EmbedData>(EMBED, { inputs: [{ text }] });
          requests++;
          if (r.errors || r.status !== 200) failures++;
          else sources.set(r.data!.embed[0]!.source, (sources.get(r.data!.embed[0]!.source) ?? 0) + 1);
        }
      };
      const load = Promise.all([0, 1, 2, 3].map(client));
      await new Promise((r) => setTimeout(r, 1000));
      await redis.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 1500));
      const global = () => s.server.cache.stats()[1]!;
      assert.equal(global().healthy, false, 'the tier is marked unhealthy while Redis is down');
      const metricsDown = await (await fetch(`${s.url}/metrics`)).text();
      assert.match(metricsDown, /polyray_cache_tier_healthy\{tier="global"\} 0/);
      await redis.restart();
      await load;
      assert.ok(requests > 50, `only ${requests} requests ran`);
      assert.equal(failures, 0, `${failures} of ${requests} requests failed`);
      // Recovery: the tier is used again — a new text written now is readable from Redis.
      await waitFor(
        'global tier healthy',
        async () => {
          await s.gql(EMBED, { inputs: [{ text: `${salt} probe ${Date.now()}` }] });
          return global().healthy;
        },
        15_000,
      );
      const text = `${salt} after recovery`;
      await s.gql(EMBED, { inputs: [{ text }] });
      await s.server.cache.flush();
      s.server.memory.clear();
      const r = await s.gql<EmbedData>(EMBED, { inputs: [{ text }] });
      assert.equal(r.data!.embed[0]!.source, 'GLOBAL');
      assert.ok(global().errors > 0, 'the outage was counted');
      const metricsUp = await (await fetch(`${s.url}/metrics`)).text();
      assert.match(metricsUp, /polyray_cache_tier_healthy\{tier="global"\} 1/);
      assert.match(metricsUp, /polyray_cache_tier_errors_total\{tier="global"\} [1-9]/);
    } finally {
      await s.stop();
    }
  });
});

describe('the service on a Redis Cluster', () => {
  test('computes, writes across slots and reads back as GLOBAL hits', { timeout: 60_000 }, async () => {
    const { startRedisCluster } = await import('./helpers/redis-server.ts');
    const cluster = await startRedisCluster(3);
    const s = await startPolyray({
      cache: { redis: { kind: 'cluster', nodes: cluster.nodes, ttlMs: 60_000, readTimeoutMs: 500, encoding: 'float16', keyPrefix: 'polyray:test:' } },
    });
    try {
      const salt = randomUUID();
      const inputs = Array.from({ length: 40 }, (_, i) => ({ text: `${salt} cluster text ${i}` }));
      const first = await s.gql<EmbedData>(EMBED, { inputs });
      assert.ok(first.data!.embed.every((e) => e.source === 'COMPUTED'));
      await s.server.cache.flush();
      s.server.memory.clear();
      const again = await s.gql<EmbedData>(EMBED, { inputs });
      assert.ok(again.data!.embed.every((e) => e.source === 'GLOBAL'));
      // float16 in the global tier: within the documented bound of the computed vector.
      again.data!.embed.forEach((e, i) => {
        e.vector.forEach((x, j) => {
          assert.ok(Math.abs(x - first.data!.embed[i]!.vector[j]!) <= 4.9e-4);
        });
      });
    } finally {
      await s.stop();
      await cluster.stop();
    }
  });
});
