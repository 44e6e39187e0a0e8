/**
 * RedisCache against a real standalone redis-server started for this file: round trips, TTLs, one MGET
 * per getMany, corrupt values, the bounded write queue, float16 mode and option validation.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { RedisCache, DEFAULT_REDIS_CACHE_OPTIONS, type RedisCacheOptions } from '../src/cache/redis.ts';
import { createRedisClient } from '../src/redis/client.ts';
import { encodeVector, decodeVector } from '../src/cache/codec.ts';
import { startRedisServer, parseInfo, commandCalls, waitFor, type RedisServerHandle } from './helpers/redis-server.ts';

// Bounds every test so a regression fails instead of hanging the suite (after hooks still run).
const TEST_TIMEOUT_MS = 10_000;

let server: RedisServerHandle;
let admin: Redis;
const caches: RedisCache[] = [];
let prefixSeq = 0;

before(
  async () => {
    server = await startRedisServer();
    admin = new Redis(server.port, server.host, { lazyConnect: true });
    await admin.connect();
  },
  { timeout: 30_000 },
);

after(
  async () => {
    await Promise.allSettled(caches.map((c) => c.close()));
    admin?.disconnect();
    await server?.stop();
  },
  { timeout: 30_000 },
);

/** A cache on the test server with its own key prefix, ready to serve. */
async function makeCache(opts: Partial<RedisCacheOptions> = {}): Promise<{ cache: RedisCache; prefix: string }> {
  const prefix = `t${++prefixSeq}:`;
  const cache = new RedisCache({ url: server.url, keyPrefix: prefix, readTimeoutMs: 500, ...opts });
  caches.push(cache);
  // Wait for the connection: reads before it are (correctly) misses, which these tests do not want.
  await waitFor('cache connected', async () => {
    await cache.setMany([{ key: '__warm', value: new Float32Array(1) }]);
    await cache.flush();
    return (await cache.getMany(['__warm']))[0] !== undefined;
  });
  return { cache, prefix };
}

function randomVector(dims: number, seed: number): Float32Array {
  const v = new Float32Array(dims);
  let x = seed * 2654435761;
  for (let i = 0; i < dims; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    v[i] = x / 2 ** 30 - 1;
  }
  return v;
}

async function infoNumbers(): Promise<{ mget: number; get: number; set: number; reads: number }> {
  // One INFO call (one read on the server) returns both sections.
  const info = await admin.info('everything');
  return {
    mget: commandCalls(info, 'mget'),
    get: commandCalls(info, 'get'),
    set: commandCalls(info, 'set'),
    reads: Number(parseInfo(info).get('total_reads_processed')),
  };
}

test('round trip: vectors come back bit-exact, absent keys are misses, stats count them', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache } = await makeCache();
  const before = cache.stats();
  const entries = Array.from({ length: 50 }, (_, i) => ({ key: `k${i}`, value: randomVector(384, i) }));
  await cache.setMany(entries);
  await cache.flush();
  const keys = entries.flatMap((e, i) => [e.key, `absent${i}`]);
  const got = await cache.getMany(keys);
  assert.equal(got.length, keys.length);
  for (let i = 0; i < entries.length; i++) {
    assert.deepEqual(got[2 * i], entries[i]!.value);
    assert.equal(got[2 * i + 1], undefined);
  }
  const s = cache.stats();
  assert.equal(s.tier, 'global');
  assert.equal(s.hits - before.hits, 50);
  assert.equal(s.misses - before.misses, 50);
  assert.equal(s.reads - before.reads, 1);
  assert.equal(s.writes - before.writes, 1);
  assert.equal(s.errors, 0);
  assert.equal(s.healthy, true);
  assert.ok(s.writtenEntries >= 50);
  assert.ok(s.readMsTotal > 0);
  assert.deepEqual(await cache.getMany([]), []);
});

test('values are stored under the prefix with SET ... PX: default and per-entry TTLs', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache, prefix } = await makeCache({ defaultTtlMs: 60_000 });
  const v = randomVector(16, 7);
  await cache.setMany([
    { key: 'long', value: v },
    { key: 'short', value: v, ttlMs: 150 },
  ]);
  await cache.flush();
  const stored = await admin.getBuffer(`${prefix}long`);
  assert.ok(stored);
  assert.deepEqual(stored, encodeVector(v, 'float32'));
  const pttlLong = await admin.pttl(`${prefix}long`);
  assert.ok(pttlLong > 55_000 && pttlLong <= 60_000, `pttl ${pttlLong}`);
  const pttlShort = await admin.pttl(`${prefix}short`);
  assert.ok(pttlShort > 0 && pttlShort <= 150, `pttl ${pttlShort}`);
  assert.ok((await cache.getMany(['short']))[0]);
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(await cache.getMany(['short', 'long']), [undefined, v]);
});

test('invalid TTLs and non-vectors are rejected, never thrown', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache } = await makeCache();
  const base = cache.stats().rejectedWrites;
  await cache.setMany([
    { key: 'a', value: new Float32Array(2), ttlMs: 0 },
    { key: 'b', value: new Float32Array(2), ttlMs: -5 },
    { key: 'c', value: new Float32Array(2), ttlMs: Number.NaN },
    { key: 'd', value: [1, 2] as unknown as Float32Array },
    { key: 'e', value: new Float32Array(2), ttlMs: 0.5 }, // rounds up to 1 ms: accepted
  ]);
  await cache.flush();
  assert.equal(cache.stats().rejectedWrites - base, 4);
});

test('one MGET (one server read) per getMany, no per-key GET', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache } = await makeCache();
  const entries = Array.from({ length: 100 }, (_, i) => ({ key: `m${i}`, value: randomVector(8, i) }));
  await cache.setMany(entries);
  await cache.flush();
  for (let round = 0; round < 3; round++) {
    const a = await infoNumbers();
    const got = await cache.getMany(entries.map((e) => e.key));
    const b = await infoNumbers();
    assert.equal(got.filter(Boolean).length, 100);
    assert.equal(b.mget - a.mget, 1, 'MGET calls');
    assert.equal(b.get - a.get, 0, 'GET calls');
    // total_reads_processed counts socket reads; the second INFO is one of them.
    assert.equal(b.reads - a.reads - 1, 1, 'server reads');
  }
});

test('writes are pipelined SETs in batches of writeBatchSize', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache } = await makeCache({ writeBatchSize: 40 });
  const a = await infoNumbers();
  const written = cache.stats().writtenEntries;
  await cache.setMany(Array.from({ length: 100 }, (_, i) => ({ key: `w${i}`, value: randomVector(4, i) })));
  await cache.flush();
  const b = await infoNumbers();
  assert.equal(b.set - a.set, 100);
  assert.equal(cache.stats().writtenEntries - written, 100);
  // 3 batches (40 + 40 + 20), each a single pipeline; reads can exceed 3 only if the kernel split a write.
  const reads = b.reads - a.reads - 1;
  assert.ok(reads >= 3 && reads <= 6, `server reads ${reads}`);
});

test('setMany returns before anything is written (write-behind)', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache, prefix } = await makeCache();
  await cache.setMany([{ key: 'wb', value: new Float32Array([1, 2]) }]);
  // Nothing has been sent yet: the flusher runs on a later turn of the event loop.
  assert.equal(cache.stats().writeQueueDepth, 1);
  await cache.flush();
  assert.equal(cache.stats().writeQueueDepth, 0);
  assert.equal(await admin.exists(`${prefix}wb`), 1);
});

test('corrupt values are misses, counted, and deleted', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache, prefix } = await makeCache();
  const good = randomVector(8, 1);
  const truncated = encodeVector(good).subarray(0, 20);
  await admin.set(`${prefix}junk`, Buffer.from('not a vector at all'));
  await admin.set(`${prefix}trunc`, truncated);
  await admin.set(`${prefix}good`, encodeVector(good));
  await admin.hset(`${prefix}hash`, 'f', 'v'); // wrong type: MGET answers nil
  const base = cache.stats();
  const got = await cache.getMany(['junk', 'trunc', 'good', 'hash']);
  assert.deepEqual(got, [undefined, undefined, good, undefined]);
  const s = cache.stats();
  assert.equal(s.corrupt - base.corrupt, 2);
  assert.equal(s.hits - base.hits, 1);
  assert.equal(s.misses - base.misses, 3);
  await cache.flush(); // waits for the scheduled deletes too
  assert.equal(await admin.exists(`${prefix}junk`, `${prefix}trunc`), 0);
  assert.equal(await admin.exists(`${prefix}good`), 1);
  assert.equal(cache.stats().healthy, true, 'corruption is not an outage');
  // The key can be written again and served.
  await cache.setMany([{ key: 'junk', value: good }]);
  await cache.flush();
  assert.deepEqual((await cache.getMany(['junk']))[0], good);
});

test('the write queue is bounded: overflow drops the oldest writes and counts them', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache } = await makeCache({ maxWriteQueue: 10 });
  const base = cache.stats();
  const entries = Array.from({ length: 25 }, (_, i) => ({ key: `q${i}`, value: Float32Array.of(i) }));
  await cache.setMany(entries);
  let s = cache.stats();
  assert.equal(s.writeQueueDepth, 10);
  assert.equal(s.droppedWrites - base.droppedWrites, 15);
  await cache.flush();
  s = cache.stats();
  assert.equal(s.writeQueueDepth, 0);
  assert.equal(s.writtenEntries - base.writtenEntries, 10);
  const got = await cache.getMany(entries.map((e) => e.key));
  for (const v of got.slice(0, 15)) assert.equal(v, undefined);
  got.slice(15).forEach((v, i) => {
    assert.deepEqual(v, Float32Array.of(15 + i));
  });
});

test('float16 mode halves the payload and stays within the documented bound; float32 readers accept it', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache: c16, prefix } = await makeCache({ encoding: 'float16' });
  const v = randomVector(384, 3);
  const n = Math.hypot(...v);
  const unit = v.map((x) => x / n);
  await c16.setMany([{ key: 'h', value: unit }]);
  await c16.flush();
  assert.equal(await admin.strlen(`${prefix}h`), 8 + 2 * 384);
  const [got] = await c16.getMany(['h']);
  assert.ok(got);
  for (let i = 0; i < unit.length; i++) assert.ok(Math.abs(got[i]! - unit[i]!) <= 2 ** -12);
  const c32 = new RedisCache({ url: server.url, keyPrefix: prefix });
  caches.push(c32);
  await waitFor('float32 reader sees the float16 value', async () => (await c32.getMany(['h']))[0] !== undefined);
  assert.deepEqual((await c32.getMany(['h']))[0], got);
});

test('before the first connection reads are plain misses and writes wait in the queue', { timeout: TEST_TIMEOUT_MS }, async () => {
  const prefix = `t${++prefixSeq}:`;
  const cache = new RedisCache({ url: server.url, keyPrefix: prefix });
  caches.push(cache);
  assert.deepEqual(await cache.getMany(['x', 'y']), [undefined, undefined]);
  await cache.setMany([{ key: 'early', value: Float32Array.of(4, 2) }]);
  let s = cache.stats();
  assert.equal(s.healthy, true);
  assert.equal(s.errors, 0);
  assert.equal(s.skippedKeys, 2);
  await cache.flush();
  s = cache.stats();
  assert.equal(s.droppedWrites, 0);
  assert.equal(s.writtenEntries, 1);
  assert.equal(await admin.exists(`${prefix}early`), 1);
});

test('an injected client is used as is and not closed by close()', { timeout: TEST_TIMEOUT_MS }, async () => {
  const client = createRedisClient({ url: server.url });
  await once(client, 'ready');
  const cache = new RedisCache({ client, keyPrefix: `t${++prefixSeq}:` });
  await cache.setMany([{ key: 'c', value: Float32Array.of(1, 2, 3) }]);
  await cache.flush();
  assert.deepEqual(await cache.getMany(['c']), [Float32Array.of(1, 2, 3)]);
  await cache.close();
  assert.equal(client.status, 'ready');
  // After close the tier is inert.
  assert.deepEqual(await cache.getMany(['c']), [undefined]);
  await cache.setMany([{ key: 'd', value: Float32Array.of(1) }]);
  await client.quit();
});

test('close() flushes pending writes, then quits its own client', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { cache, prefix } = await makeCache();
  await cache.setMany(Array.from({ length: 30 }, (_, i) => ({ key: `c${i}`, value: Float32Array.of(i) })));
  await cache.close();
  assert.equal(await admin.exists(...Array.from({ length: 30 }, (_, i) => `${prefix}c${i}`)), 30);
  assert.equal(cache.stats().healthy, false);
  await cache.close(); // idempotent
});

test('invalid options throw a TypeError naming the option and the value', { timeout: TEST_TIMEOUT_MS }, () => {
  const cases: [Partial<RedisCacheOptions>, RegExp][] = [
    [{ url: server.url, readTimeoutMs: -1 }, /readTimeoutMs.*-1/],
    [{ url: server.url, readTimeoutMs: 1.5 }, /readTimeoutMs.*1\.5/],
    [{ url: server.url, defaultTtlMs: 0 }, /defaultTtlMs.*0/],
    [{ url: server.url, encoding: 'float64' as 'float32' }, /encoding.*"float64"/],
    [{ url: server.url, keyPrefix: 'a{b}:' }, /keyPrefix.*"a\{b\}:"/],
    [{ url: server.url, maxWriteQueue: 0 }, /maxWriteQueue.*0/],
    [{ url: server.url, writeBatchSize: Number.NaN }, /writeBatchSize.*NaN/],
    [{ url: server.url, backoffInitialMs: 500, backoffMaxMs: 100 }, /backoffMaxMs.*100/],
    [{ url: server.url, logger: { warn() {} } as never }, /logger/],
    [{ url: server.url, now: 5 as never }, /now.*5/],
    [{ url: server.url, closeClient: 'yes' as never }, /closeClient.*"yes"/],
    [{ url: 'http://localhost:6379' }, /url.*"http:\/\/localhost:6379"/],
    [{ url: 'redis://user:s3cret@' }, /url.*\*\*\*@/],
    [{}, /url \| cluster \| client.*none/],
    [{ url: server.url, cluster: [{ host: 'h', port: 1 }] }, /url and cluster/],
    [{ cluster: [] }, /cluster.*array of length 0/],
    [{ cluster: [{ host: '127.0.0.1', port: 70000 }] }, /cluster\[0\]\.port.*70000/],
    [{ cluster: [{ host: '', port: 7000 }] }, /cluster\[0\]\.host/],
    [{ client: {} as never }, /client.*an object/],
  ];
  for (const [opts, re] of cases) {
    assert.throws(
      () => new RedisCache(opts as RedisCacheOptions),
      (e: unknown) => {
        assert.ok(e instanceof TypeError, `${re}: ${String(e)}`);
        assert.match(e.message, re);
        assert.doesNotMatch(e.message, /s3cret/);
        return true;
      },
    );
  }
  const withPrefix = new Redis({ lazyConnect: true, keyPrefix: 'x:' });
  assert.throws(() => new RedisCache({ client: withPrefix }), /client.*keyPrefix/);
  withPrefix.disconnect();
});

test('defaults are exported and documented values', { timeout: TEST_TIMEOUT_MS }, () => {
  assert.equal(DEFAULT_REDIS_CACHE_OPTIONS.keyPrefix, 'polyray:v1:');
  assert.equal(DEFAULT_REDIS_CACHE_OPTIONS.defaultTtlMs, 7 * 24 * 3600 * 1000);
  assert.equal(DEFAULT_REDIS_CACHE_OPTIONS.encoding, 'float32');
  assert.equal(DEFAULT_REDIS_CACHE_OPTIONS.readTimeoutMs, 50);
  assert.ok(Object.isFrozen(DEFAULT_REDIS_CACHE_OPTIONS));
  assert.ok(decodeVector(encodeVector(new Float32Array(0))));
});
