/**
 * RedisCache under faults, against real processes started for this file: redis-server SIGKILLed in the
 * middle of a read/write loop and restarted on the same port, a server that accepts connections but never
 * answers, a server stalled by DEBUG SLEEP, and junk bytes stored under the tier's keys.
 *
 * Every call is timed: nothing may throw or take longer than readTimeoutMs + SLACK_MS.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { RedisCache, type RedisCacheLogger, type RedisCacheOptions } from '../src/cache/redis.ts';
import { decodeVector, encodeVector } from '../src/cache/codec.ts';
import { recordFigures } from './helpers/faults.ts';
import { startRedisServer, waitFor, type RedisServerHandle } from './helpers/redis-server.ts';

// Bounds every test so a regression fails instead of hanging the suite (after hooks still run).
const TEST_TIMEOUT_MS = 15_000;

const READ_TIMEOUT_MS = 100;
// Generous for loaded CI machines, still far below "hanging".
const SLACK_MS = 150;

const servers: RedisServerHandle[] = [];
const caches: RedisCache[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

after(
  async () => {
    await Promise.allSettled(caches.map((c) => c.close()));
    // Last registered first: clients go before the servers they talk to.
    for (const c of cleanups.reverse())
      await Promise.resolve()
        .then(c)
        .catch(() => undefined);
    await Promise.allSettled(servers.map((s) => s.stop()));
  },
  { timeout: 30_000 },
);

interface LogLine {
  level: string;
  obj: object;
  msg: string;
}

function captureLogger(): { logger: RedisCacheLogger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (obj: object, msg: string) => void lines.push({ level, obj, msg });
  return { logger: { warn: at('warn'), info: at('info'), error: at('error') }, lines };
}

function makeCache(opts: RedisCacheOptions): RedisCache {
  const cache = new RedisCache({ readTimeoutMs: READ_TIMEOUT_MS, backoffInitialMs: 50, backoffMaxMs: 400, connectTimeoutMs: 500, ...opts });
  caches.push(cache);
  return cache;
}

/** Runs `fn`, asserting it neither throws nor exceeds `limitMs`. */
async function timed<T>(what: string, limitMs: number, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} still pending after ${limitMs * 4} ms`)), limitMs * 4);
  });
  try {
    const result = await Promise.race([fn(), hang]);
    const ms = performance.now() - t0;
    assert.ok(ms <= limitMs, `${what} took ${ms.toFixed(1)} ms (limit ${limitMs})`);
    return result;
  } finally {
    clearTimeout(timer);
  }
}

async function warm(cache: RedisCache): Promise<void> {
  await waitFor('cache connected', async () => {
    await cache.setMany([{ key: '__warm', value: new Float32Array(1) }]);
    await cache.flush();
    return (await cache.getMany(['__warm']))[0] !== undefined;
  });
}

const vec = (i: number) => Float32Array.from({ length: 16 }, (_, j) => i + j / 16);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

test('SIGKILL mid-loop: no call throws or hangs, tier turns unhealthy, recovers after restart', { timeout: TEST_TIMEOUT_MS }, async () => {
  const server = await startRedisServer();
  servers.push(server);
  const { logger, lines } = captureLogger();
  const cache = makeCache({ url: server.url, keyPrefix: 'fault1:', logger });
  await warm(cache);
  await cache.setMany(Array.from({ length: 20 }, (_, i) => ({ key: `old${i}`, value: vec(i) })));
  await cache.flush();

  // Kill while the loop runs, not between its steps, so in-flight commands see the connection die.
  const killed = sleep(150).then(() => server.kill('SIGKILL'));
  let hitsBeforeKill = 0;
  for (let i = 0; i < 60; i++) {
    const keys = Array.from({ length: 10 }, (_, j) => `old${(i + j) % 20}`);
    const got = await timed(`getMany #${i}`, READ_TIMEOUT_MS + SLACK_MS, () => cache.getMany(keys));
    assert.equal(got.length, 10);
    if (server.running) hitsBeforeKill += got.filter(Boolean).length;
    await timed(`setMany #${i}`, 20, () => cache.setMany([{ key: `loop${i}`, value: vec(i) }]));
    await sleep(5);
  }
  await killed;
  assert.ok(hitsBeforeKill > 0, 'served hits before the kill');
  await timed('flush while down', 1000 + SLACK_MS, () => cache.flush());
  let s = cache.stats();
  assert.equal(s.healthy, false);
  assert.ok(s.errors >= 1);
  assert.equal(s.unhealthyTransitions, 1);
  assert.ok(s.droppedWrites > 0, 'writes while down are dropped and counted');
  assert.ok(s.skippedKeys > 0, 'reads while down skip Redis');
  // While down, calls are instant.
  await timed('getMany while down', 20, () => cache.getMany(['old1']));

  await server.restart();
  await waitFor('healthy again', () => cache.stats().healthy, 5000);
  await cache.setMany(Array.from({ length: 10 }, (_, i) => ({ key: `new${i}`, value: vec(100 + i) })));
  await cache.flush();
  const got = await timed('getMany after restart', READ_TIMEOUT_MS + SLACK_MS, () => cache.getMany(Array.from({ length: 10 }, (_, i) => `new${i}`)));
  got.forEach((v, i) => {
    assert.deepEqual(v, vec(100 + i));
  });
  s = cache.stats();
  assert.equal(s.healthy, true);
  assert.equal(s.unhealthyTransitions, 1);

  // Logged once per transition, and never a key.
  assert.equal(lines.filter((l) => l.level === 'warn').length, 1, JSON.stringify(lines));
  assert.equal(lines.filter((l) => l.level === 'info').length, 1, JSON.stringify(lines));
  const text = JSON.stringify(lines);
  assert.doesNotMatch(text, /fault1:|old\d|new\d|loop\d/);
});

test('a server that accepts connections but never answers: reads resolve as misses within readTimeoutMs', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sockets = new Set<Socket>();
  const silent: Server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  silent.listen(0, '127.0.0.1');
  await once(silent, 'listening');
  const port = (silent.address() as { port: number }).port;
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((r) => silent.close(() => r()));
  });

  // Without a ready check (and without CLIENT SETINFO, which also awaits a reply) ioredis reports
  // 'ready' as soon as TCP connects, so commands are really sent and only the tier's read timeout ends them.
  const client = new Redis({
    host: '127.0.0.1',
    port,
    enableReadyCheck: false,
    disableClientInfo: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    lazyConnect: true,
  });
  cleanups.push(() => client.disconnect());
  await client.connect();
  const cache = makeCache({ client, keyPrefix: 'silent:' });

  const first = await timed('first read', READ_TIMEOUT_MS + SLACK_MS, () => cache.getMany(['a', 'b', 'c']));
  assert.deepEqual(first, [undefined, undefined, undefined]);
  let s = cache.stats();
  assert.equal(s.timeouts, 1);
  assert.equal(s.healthy, false);
  for (let i = 0; i < 10; i++) {
    assert.deepEqual(await timed(`read #${i}`, 20, () => cache.getMany(['a'])), [undefined]);
    await timed(`write #${i}`, 20, () => cache.setMany([{ key: 'a', value: vec(i) }]));
    await sleep(30);
  }
  s = cache.stats();
  assert.equal(s.healthy, false);
  assert.ok(s.probes >= 1, 'probes were sent and failed');
  assert.equal(s.timeouts, 1, 'no further reads were sent');
  await timed('flush', 20, () => cache.flush());

  // The same through a tier-built client: the ready check never completes, the grace period ends in
  // "unhealthy", and every call along the way is prompt.
  const cache2 = makeCache({ url: `redis://127.0.0.1:${port}`, keyPrefix: 'silent:', connectTimeoutMs: 200 });
  const t0 = performance.now();
  while (performance.now() - t0 < 400) {
    assert.deepEqual(await timed('read during grace', 20, () => cache2.getMany(['a'])), [undefined]);
    await sleep(20);
  }
  assert.equal(cache2.stats().healthy, false);
  await timed('close', 1000 + SLACK_MS, () => cache2.close());
});

test('DEBUG SLEEP stalls the server: reads time out as misses, then the tier recovers', { timeout: TEST_TIMEOUT_MS }, async () => {
  const server = await startRedisServer({ extraArgs: ['--enable-debug-command', 'yes'] });
  servers.push(server);
  const cache = makeCache({ url: server.url, keyPrefix: 'sleep:' });
  await warm(cache);
  await cache.setMany([{ key: 'x', value: vec(1) }]);
  await cache.flush();
  assert.deepEqual(await cache.getMany(['x']), [vec(1)]);

  const staller = new Redis(server.port, server.host, { lazyConnect: true });
  cleanups.push(() => staller.disconnect());
  await staller.connect();
  const stall = staller.debug('SLEEP', '0.5');
  await sleep(30); // let the server start sleeping
  const got = await timed('read during DEBUG SLEEP', READ_TIMEOUT_MS + SLACK_MS, () => cache.getMany(['x']));
  assert.deepEqual(got, [undefined]);
  assert.equal(cache.stats().timeouts, 1);
  assert.equal(cache.stats().healthy, false);
  await stall;
  await waitFor('healthy after the stall', () => cache.stats().healthy, 3000);
  assert.deepEqual(await cache.getMany(['x']), [vec(1)]);
});

test('garbage values stored under the tier keys are misses (counted as corrupt, deleted), never thrown', { timeout: TEST_TIMEOUT_MS }, async () => {
  const server = await startRedisServer();
  servers.push(server);
  const admin = new Redis(server.port, server.host, { lazyConnect: true });
  cleanups.push(() => admin.disconnect());
  await admin.connect();
  const cache = makeCache({ url: server.url, keyPrefix: 'junk:' });
  await warm(cache);

  const valid = encodeVector(vec(3));
  const junk: Uint8Array[] = [
    Buffer.alloc(0),
    Buffer.from('PY'),
    valid.subarray(0, valid.length - 1),
    Buffer.concat([valid, Buffer.from([0])]),
    Buffer.from([0x50, 0x59, 9, 1, 0, 0, 0, 0]), // unknown version
    ...fc.sample(fc.uint8Array({ maxLength: 200 }), { numRuns: 60, seed: 7 }),
    // Valid header, random tail of a random length.
    ...fc.sample(fc.tuple(fc.nat(10), fc.uint8Array({ maxLength: 48 })), { numRuns: 30, seed: 8 }).map(([dims, tail]) => {
      const h = Buffer.from([0x50, 0x59, 1, 1, dims, 0, 0, 0]);
      return Buffer.concat([h, tail]);
    }),
  ];
  const pipeline = admin.pipeline();
  junk.forEach((bytes, i) => {
    pipeline.set(`junk:g${i}`, Buffer.from(bytes));
  });
  await pipeline.exec();

  const keys = junk.map((_, i) => `g${i}`);
  const base = cache.stats();
  const got = await timed('read junk', READ_TIMEOUT_MS + SLACK_MS, () => cache.getMany(keys));
  let expectedCorrupt = 0;
  junk.forEach((bytes, i) => {
    const expected = decodeVector(Buffer.from(bytes)); // the codec is the oracle: a few tails are valid
    if (!expected) expectedCorrupt++;
    assert.deepEqual(got[i], expected, `junk #${i}`);
  });
  assert.ok(expectedCorrupt >= junk.length - 10);
  const s = cache.stats();
  assert.equal(s.corrupt - base.corrupt, expectedCorrupt);
  assert.equal(s.misses - base.misses, expectedCorrupt);
  assert.equal(s.healthy, true);
  await cache.flush();
  const remaining = await admin.exists(...keys.map((k) => `junk:${k}`));
  assert.equal(remaining, junk.length - expectedCorrupt, 'corrupt values were deleted');
});

test('with the default backoff, a Redis that hung for 5 s is used again within about 1 s of answering', { timeout: TEST_TIMEOUT_MS }, async () => {
  const server = await startRedisServer();
  servers.push(server);
  // Default backoff (250 ms doubling to 1 s): only the read timeout is this file's.
  const cache = new RedisCache({ url: server.url, keyPrefix: 'fault5:', readTimeoutMs: READ_TIMEOUT_MS });
  caches.push(cache);
  await warm(cache);
  const admin = new Redis(server.url);
  cleanups.push(() => admin.disconnect());
  const pauseMs = 5000;
  await admin.call('CLIENT', 'PAUSE', String(pauseMs), 'ALL');
  const pausedAt = performance.now();
  await cache.getMany(['__warm']); // times out: the tier turns unhealthy and starts probing
  assert.equal(cache.stats().healthy, false);
  await sleep(pausedAt + pauseMs - performance.now());
  const answering = performance.now();
  await waitFor('healthy again', () => cache.stats().healthy, 5000);
  const back = performance.now() - answering;
  assert.ok(back < 1300, `back ${back.toFixed(0)} ms after Redis answered (probes at most 1 s apart)`);
  await recordFigures('redis-hang', { hungMs: 5000, globalTierBackAfterMs: Math.round(back) });
});
