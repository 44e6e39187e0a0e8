/**
 * RedisCache against a real 3-master Redis Cluster started for this file: slot computation matches the
 * server, keys spread over all nodes read back correctly, and a getMany costs one round trip per node
 * (checked on each node with INFO deltas: MGET calls = distinct slots on that node, socket reads = 1).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { RedisCache } from '../src/cache/redis.ts';
import { keySlot } from '../src/redis/slots.ts';
import { decodeVector } from '../src/cache/codec.ts';
import { startRedisCluster, parseInfo, commandCalls, waitFor, type RedisClusterHandle } from './helpers/redis-server.ts';

// Bounds every test so a regression fails instead of hanging the suite (after hooks still run).
const TEST_TIMEOUT_MS = 15_000;

let cluster: RedisClusterHandle;
let admins: Redis[] = [];
const caches: RedisCache[] = [];

before(
  async () => {
    cluster = await startRedisCluster(3);
    admins = await Promise.all(
      cluster.nodes.map(async (n) => {
        const r = new Redis(n.port, n.host, { lazyConnect: true });
        await r.connect();
        return r;
      }),
    );
  },
  { timeout: 30_000 },
);

after(
  async () => {
    await Promise.allSettled(caches.map((c) => c.close()));
    for (const a of admins) a.disconnect();
    await cluster?.stop();
  },
  { timeout: 30_000 },
);

async function makeCache(prefix: string): Promise<RedisCache> {
  const cache = new RedisCache({ cluster: cluster.nodes, keyPrefix: prefix, readTimeoutMs: 1000 });
  caches.push(cache);
  await waitFor('cluster cache connected', async () => {
    await cache.setMany([{ key: '__warm', value: new Float32Array(1) }]);
    await cache.flush();
    return (await cache.getMany(['__warm']))[0] !== undefined;
  });
  return cache;
}

/** slot -> index of the admin connection (node) serving it, from CLUSTER SLOTS. */
async function slotOwners(): Promise<Int16Array> {
  const owners = new Int16Array(16384).fill(-1);
  const ranges = await admins[0]!.cluster('SLOTS');
  for (const [from, to, ...nodes] of ranges) {
    const port = nodes[0]![1];
    const idx = cluster.nodes.findIndex((n) => n.port === port);
    for (let s = from; s <= to; s++) owners[s] = idx;
  }
  return owners;
}

function vectorFor(i: number): Float32Array {
  return Float32Array.from({ length: 32 }, (_, j) => Math.sin(i * 31 + j));
}

test('keySlot matches CLUSTER KEYSLOT (hash tags, unicode, edge cases)', { timeout: TEST_TIMEOUT_MS }, async () => {
  const fixed = [
    '',
    'a',
    '{',
    '}',
    '{}',
    '{}x',
    'x{}',
    '{a}',
    'x{a}y',
    '{a}{b}',
    'a{b}c{d}',
    '{{a}}',
    '}{a}',
    'polyray:v1:m@1:abc',
    'ключ',
    '{ключ}x',
    'é{é}',
    '\u{1F600}{x}',
  ];
  const random = fc.sample(
    fc.oneof(
      fc.string({ maxLength: 40 }),
      fc.string({ unit: 'grapheme', maxLength: 20 }),
      fc.tuple(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 })).map(([a, b, c]) => `${a}{${b}}${c}`),
    ),
    { numRuns: 300, seed: 42 },
  );
  const keys = [...fixed, ...random];
  const pipeline = admins[0]!.pipeline();
  for (const k of keys) pipeline.cluster('KEYSLOT', k);
  const results = (await pipeline.exec())!;
  keys.forEach((k, i) => {
    assert.equal(keySlot(k), results[i]![1], `key ${JSON.stringify(k)}`);
  });
});

test('many keys across slots and nodes round-trip correctly', { timeout: TEST_TIMEOUT_MS }, async () => {
  const cache = await makeCache('ct1:');
  const n = 600;
  await cache.setMany(Array.from({ length: n }, (_, i) => ({ key: `key-${i}`, value: vectorFor(i) })));
  await cache.flush();
  // The data really is spread: every master holds some of it.
  const owners = await slotOwners();
  const perNode = [0, 0, 0];
  for (let i = 0; i < n; i++) perNode[owners[keySlot(`ct1:key-${i}`)]!]!++;
  assert.ok(
    perNode.every((c) => c > 100),
    `per node ${perNode}`,
  );
  for (let i = 0; i < n; i += 97) {
    const owner = admins[owners[keySlot(`ct1:key-${i}`)]!]!;
    assert.deepEqual(decodeVector((await owner.getBuffer(`ct1:key-${i}`))!), vectorFor(i));
  }
  const keys = Array.from({ length: n + 50 }, (_, i) => `key-${i}`); // the last 50 were never written
  const got = await cache.getMany(keys);
  for (let i = 0; i < n; i++) assert.deepEqual(got[i], vectorFor(i), `key-${i}`);
  for (let i = n; i < n + 50; i++) assert.equal(got[i], undefined);
  const s = cache.stats();
  assert.equal(s.errors, 0);
  assert.equal(s.healthy, true);
});

test('one round trip per node per getMany (INFO deltas on every node)', { timeout: TEST_TIMEOUT_MS }, async () => {
  const cache = await makeCache('ct2:');
  const n = 200;
  const keys = Array.from({ length: n }, (_, i) => `k${i}`);
  await cache.setMany(keys.map((k, i) => ({ key: k, value: vectorFor(i) })));
  await cache.flush();
  await cache.getMany(keys); // warm every node connection before measuring
  const owners = await slotOwners();
  const slotsPerNode = [new Set<number>(), new Set<number>(), new Set<number>()];
  for (const k of keys) {
    const slot = keySlot(`ct2:${k}`);
    slotsPerNode[owners[slot]!]!.add(slot);
  }
  const snapshot = () =>
    Promise.all(
      admins.map(async (a) => {
        const info = await a.info('everything'); // one INFO = one server read, both sections
        return { mget: commandCalls(info, 'mget'), get: commandCalls(info, 'get'), reads: Number(parseInfo(info).get('total_reads_processed')) };
      }),
    );
  for (let round = 0; round < 3; round++) {
    const a = await snapshot();
    const got = await cache.getMany(keys);
    const b = await snapshot();
    assert.equal(got.filter(Boolean).length, n);
    for (let node = 0; node < 3; node++) {
      const slotCount = slotsPerNode[node]!.size;
      assert.ok(slotCount > 0);
      // Cluster refuses cross-slot MGET, so a node gets one MGET per slot, all in one pipeline.
      assert.equal(b[node]!.mget - a[node]!.mget, slotCount, `node ${node} MGET calls`);
      assert.equal(b[node]!.get - a[node]!.get, 0, `node ${node} GET calls`);
      assert.equal(b[node]!.reads - a[node]!.reads - 1, 1, `node ${node} socket reads (round trips)`);
    }
  }
});

test('a slot-grouped getMany with a subset of nodes only touches those nodes', { timeout: TEST_TIMEOUT_MS }, async () => {
  const cache = await makeCache('ct3:');
  const owners = await slotOwners();
  // Pick keys that all live on node 0.
  const keys: string[] = [];
  for (let i = 0; keys.length < 20; i++) if (owners[keySlot(`ct3:s${i}`)] === 0) keys.push(`s${i}`);
  await cache.setMany(keys.map((k, i) => ({ key: k, value: vectorFor(i) })));
  await cache.flush();
  await cache.getMany(keys);
  const reads = () => Promise.all(admins.map(async (a) => Number(parseInfo(await a.info('stats')).get('total_reads_processed'))));
  const a = await reads();
  const got = await cache.getMany(keys);
  const b = await reads();
  assert.equal(got.filter(Boolean).length, 20);
  assert.deepEqual(
    b.map((x, i) => x - a[i]! - 1),
    [1, 0, 0],
  );
});
