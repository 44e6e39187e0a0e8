/**
 * Quotas and the usage ledger on a real 3-master Redis Cluster (started for this file): two real Polyray
 * replicas share one client's bucket through the Cluster, settles refund into it, the ledger's books
 * land there (clients spread over all three masters) and `usage` / `usageAll` read them back, a client's
 * keys share one hash slot, and a dead master sends quotas to the fallback (open: per-replica buckets,
 * closed: QUOTA_STORE_UNAVAILABLE) within the timeout, and back once it returns.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { addClient } from '../src/accounting/clients.ts';
import { AccountingKeys } from '../src/accounting/keys.ts';
import type { Figures } from '../src/accounting/ledger.ts';
import { QuotaManager } from '../src/accounting/quota.ts';
import { RedisBuckets } from '../src/accounting/redis-bucket.ts';
import { createAccountingRedis } from '../src/accounting/redis-client.ts';
import { isPolyrayError } from '../src/errors.ts';
import { startPolyray, type GqlResponse, type TestServer } from './helpers/polyray.ts';
import { startRedisCluster, waitFor, type RedisClusterHandle } from './helpers/redis-server.ts';

const TEST_TIMEOUT_MS = 20_000;
// Fixed: the Cluster is this file's own, and the slot of a client's keys depends on its id only.
const PREFIX = 'polyray:test:acct:';
const TIMEOUT_MS = 200; // POLYRAY_QUOTA_REDIS_TIMEOUT_MS default

const EMBED = `query($model: String!, $inputs: [EmbedInput!]!) { embed(model: $model, inputs: $inputs) { source } }`;
type EmbedData = { embed: { source: string }[] };
type Cost = { estimated: number; charged: number; remaining: number; resetMs: number };
const USAGE = `query($id: ID) { usage(clientId: $id) { clientId fleetWide rows { model source items tokens cost } totals { items tokens cost } quota { remaining store } } }`;
type UsageData = { usage: { clientId: string; fleetWide: boolean; rows: ({ model: string; source: string } & Figures)[]; totals: Figures; quota: { remaining: number; store: string } } };

/** n random one-letter words: n tokens, 2n - 1 characters (estimate 2n + 1), practically never cached. */
function words(n: number): string {
  return Array.from(randomBytes(n), (x) => String.fromCharCode(97 + (x % 26))).join(' ');
}

function costOf<T>(r: GqlResponse<T>): Cost {
  const c = r.extensions?.['cost'] as Cost | undefined;
  assert.ok(c, `response has extensions.cost: ${JSON.stringify(r)}`);
  return c;
}

function code<T>(r: GqlResponse<T>): unknown {
  return r.errors?.[0]?.extensions?.['code'];
}

describe('quotas and the usage ledger on a Redis Cluster, two replicas', () => {
  const keys = new AccountingKeys(PREFIX);
  let cluster: RedisClusterHandle;
  let admins: Redis[] = [];
  let dir: string;
  let a: TestServer;
  let b: TestServer;
  const apiKeys: Record<string, string> = {};
  const auth = (id: string): Record<string, string> => ({ authorization: `Bearer ${apiKeys[id]}` });

  before(async () => {
    cluster = await startRedisCluster(3);
    admins = await Promise.all(
      cluster.nodes.map(async (n) => {
        const r = new Redis(n.port, n.host, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => 50 });
        r.on('error', () => undefined); // the fault test kills a node
        await r.connect();
        return r;
      }),
    );
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-clients-'));
    const file = path.join(dir, 'clients.json');
    for (const spec of [
      { id: 'admin', name: 'Operators', role: 'admin' as const, rate: 1e6, burst: 1e9 },
      // A rate this low refills 0.01 units per second: the levels below are exact to 0.1 units.
      { id: 'alice', name: 'Alice', models: ['text-glove'], rate: 0.01, burst: 400 },
      { id: 'bob', name: 'Bob', rate: 1e6, burst: 1e8 },
      { id: 'carol', name: 'Carol', rate: 1e6, burst: 1e8 },
      { id: 'erin', name: 'Erin', rate: 1e6, burst: 1e8 },
      { id: 'frank', name: 'Frank', rate: 0.01, burst: 100 },
    ]) {
      apiKeys[spec.id] = (await addClient(file, spec)).key;
    }
    const overrides = {
      accounting: { clientsFile: file, redis: { kind: 'cluster' as const, nodes: cluster.nodes }, keyPrefix: PREFIX, ledgerFlushMs: 100, redisTimeoutMs: TIMEOUT_MS },
      batching: { maxWaitUs: 3000 },
    };
    [a, b] = await Promise.all([startPolyray(overrides), startPolyray(overrides)]);
  }, { timeout: 60_000 });

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    for (const r of admins) r.disconnect();
    await cluster?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, { timeout: 30_000 });

  /** slot -> index of the master serving it, from CLUSTER SLOTS. */
  async function slotOwners(): Promise<Int16Array> {
    const owners = new Int16Array(16384).fill(-1);
    for (const [from, to, ...nodes] of await admins[0]!.cluster('SLOTS')) {
      const idx = cluster.nodes.findIndex((n) => n.port === nodes[0]![1]);
      for (let s = from; s <= to; s++) owners[s] = idx;
    }
    return owners;
  }

  const keySlot = async (key: string): Promise<number> => Number(await admins[0]!.cluster('KEYSLOT', key));
  const ownerOf = async (key: string): Promise<Redis> => admins[(await slotOwners())[await keySlot(key)]!]!;
  const metric = async (t: TestServer, store: string): Promise<number> => Number(new RegExp(`polyray_quota_store\\{store="${store}"\\} (\\d+)`).exec(await (await fetch(`${t.url}/metrics`)).text())?.[1]);

  test('two replicas share one client’s bucket through the Cluster; settles refund into it', { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.equal(a.server.accounting.quota.store, 'redis');
    assert.equal(await metric(a, 'redis'), 1);
    assert.equal(await metric(b, 'redis'), 1);
    const bucket = keys.bucket('alice');
    const owner = await ownerOf(bucket);
    const level = async (): Promise<number> => Number(await owner.hget(bucket, 'tokens'));

    // Replica A: reserves 301 (worst case), settles the 150 it cost: the Cluster's bucket holds 250.
    const first = words(150);
    const r1 = await a.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: first }] }, auth('alice'));
    assert.equal(r1.errors, undefined, JSON.stringify(r1.errors));
    assert.deepEqual([costOf(r1).estimated, costOf(r1).charged], [301, 150]);
    assert.ok(costOf(r1).remaining >= 250 && costOf(r1).remaining < 250.1, `remaining ${costOf(r1).remaining}`);
    const afterA = await level();
    assert.ok(afterA >= 250 && afterA < 250.1, `bucket in the Cluster after A: ${afterA} (a per-replica bucket leaves it absent)`);

    // Replica B: 325 > 250 left in the shared bucket. Its own full bucket (400) would have admitted it.
    const refused = await b.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: words(162) }] }, auth('alice'));
    assert.equal(code(refused), 'QUOTA_EXCEEDED');
    assert.equal(refused.errors![0]!.extensions!['estimated'], 325);
    assert.ok((refused.errors![0]!.extensions!['remaining'] as number) < 250.1);
    assert.equal(costOf(refused).charged, 0);
    assert.ok((await level()) >= 250 && (await level()) < 250.1, 'a refused take changes nothing');

    // Replica B, smaller: reserves 201 of the 250, settles 100 → 150 left, which replica A then sees.
    const r2 = await b.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: words(100) }] }, auth('alice'));
    assert.equal(r2.errors, undefined, JSON.stringify(r2.errors));
    assert.deepEqual([costOf(r2).estimated, costOf(r2).charged], [201, 100]);
    const afterB = await level();
    assert.ok(afterB >= 150 && afterB < 150.1, `bucket after B: ${afterB}`);
    const seenByA = await a.gql<UsageData>(USAGE, {}, auth('alice'));
    assert.equal(seenByA.data!.usage.quota.store, 'REDIS');
    assert.ok(seenByA.data!.usage.quota.remaining >= 150 && seenByA.data!.usage.quota.remaining < 150.1, JSON.stringify(seenByA.data));
  });

  test('the ledger flushes every client’s books to the master of its slot; usage and usageAll read them back', { timeout: TEST_TIMEOUT_MS }, async () => {
    const ids = ['bob', 'carol', 'erin'];
    const owners = await slotOwners();
    const nodes = new Set(await Promise.all(ids.map(async (id) => owners[await keySlot(keys.usage(id))])));
    assert.equal(nodes.size, 3, 'the books of these clients live on three different masters: one flush writes to all of them');
    // Every client on both replicas, so neither replica's own figures equal the fleet's.
    for (const id of ids) {
      for (const t of [a, b]) {
        const r = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: words(6) }, { text: words(8) }] }, auth(id));
        assert.equal(r.errors, undefined, JSON.stringify(r.errors));
      }
    }
    const local = (id: string) => [a, b].map((t) => t.server.accounting.ledger.local(id).totals);
    for (const id of ids) {
      const [la, lb] = local(id);
      assert.equal(la!.tokens + lb!.tokens, 28);
      // The flush (every 100 ms) lands in the Cluster: HINCRBYFLOAT fields on the owning master.
      const owner = await ownerOf(keys.usage(id));
      await waitFor(`${id}'s books in the Cluster`, async () => {
        const hash = await owner.hgetall(keys.usage(id));
        return Object.entries(hash).filter(([k]) => k.endsWith('|tokens')).reduce((s, [, v]) => s + Number(v), 0) === 28;
      });
      const hash = await owner.hgetall(keys.usage(id));
      assert.equal(Number(hash['text-glove|COMPUTED|items']), 4);
      assert.ok(Math.abs(Number(hash['text-glove|COMPUTED|cost']) - (la!.cost + lb!.cost)) < 1e-9);
    }
    assert.deepEqual((await (await ownerOf(keys.clients)).smembers(keys.clients)).filter((id) => ids.includes(id)).sort(), ids);

    for (const id of ids) {
      const [la, lb] = local(id);
      const u = await b.gql<UsageData>(USAGE, { id }, auth('admin'));
      assert.equal(u.errors, undefined, JSON.stringify(u.errors));
      assert.equal(u.data!.usage.fleetWide, true);
      assert.deepEqual(u.data!.usage.totals, { items: 4, tokens: 28, cost: la!.cost + lb!.cost });
    }
    const all = await a.gql<{ usageAll: { clientId: string; totals: { items: number; tokens: number } }[] }>('{ usageAll { clientId totals { items tokens } } }', {}, auth('admin'));
    assert.equal(all.errors, undefined, JSON.stringify(all.errors));
    const byId = new Map(all.data!.usageAll.map((x) => [x.clientId, x.totals]));
    for (const id of ids) assert.deepEqual(byId.get(id), { items: 4, tokens: 28 }, id);
    assert.equal(byId.get('alice')?.tokens, 250, 'alice: 150 on A + 100 on B');
  });

  test('a client’s keys share one hash slot (CLUSTER KEYSLOT), which holds both', { timeout: TEST_TIMEOUT_MS }, async () => {
    const bucket = keys.bucket('alice');
    const usage = keys.usage('alice');
    assert.ok(bucket.startsWith(PREFIX) && usage.startsWith(PREFIX), 'keys begin with the prefix (SCAN MATCH, ACL patterns)');
    const slot = await keySlot(bucket);
    assert.equal(await keySlot(usage), slot);
    const owner = await ownerOf(bucket);
    assert.equal(await owner.exists(bucket, usage), 2, 'the master of that slot holds the bucket and the books');
    assert.notEqual(await keySlot(keys.bucket('bob')), slot, 'the tag holds the client id: clients spread over slots');
    // Even a prefix with a tag of its own keeps one client's keys together.
    const odd = new AccountingKeys('x{y:');
    assert.equal(await keySlot(odd.bucket('alice')), await keySlot(odd.usage('alice')));
  });

  test('a dead master: open falls back to per-replica buckets within the timeout (metric local), closed refuses; both recover', { timeout: TEST_TIMEOUT_MS }, async () => {
    const owners = await slotOwners();
    const victim = owners[await keySlot(keys.bucket('frank'))]!;
    const server = cluster.servers[victim]!;
    // A second, closed-mode manager on its own Cluster connection.
    const closedRedis = createAccountingRedis({ kind: 'cluster', nodes: cluster.nodes }, { timeoutMs: TIMEOUT_MS });
    closedRedis.on('error', () => undefined);
    await closedRedis.connect();
    const stores: string[] = [];
    const closed = new QuotaManager({ redis: new RedisBuckets(closedRedis, PREFIX, { timeoutMs: TIMEOUT_MS }), failureMode: 'closed', logger: pino({ level: 'silent' }), retryMs: 100, onStoreChange: (s) => stores.push(s) });
    const limits = { rate: 0.01, burst: 100 };
    try {
      assert.equal((await closed.reserve('frank', limits, 1)).store, 'redis');
      await server.kill();
      // Open (replica A's default): served from A's own bucket, and no slower than the timeout allows.
      // ioredis alone would retry the closed connection 16 × 100 ms before giving up.
      const t0 = performance.now();
      const r = await a.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: words(10) }] }, auth('frank'));
      const ms = performance.now() - t0;
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
      assert.ok(ms < TIMEOUT_MS + 600, `answered in ${ms.toFixed(0)} ms`);
      assert.equal(a.server.accounting.quota.store, 'local');
      assert.equal(await metric(a, 'local'), 1);
      assert.equal(await metric(a, 'redis'), 0);
      // Closed: refused, with the reason, within the timeout.
      const t1 = performance.now();
      await assert.rejects(closed.reserve('frank', limits, 1), (e: unknown) => isPolyrayError(e) && e.code === 'QUOTA_EXCEEDED' && e.extensions['reason'] === 'QUOTA_STORE_UNAVAILABLE');
      assert.ok(performance.now() - t1 < TIMEOUT_MS + 100, `refused in ${(performance.now() - t1).toFixed(0)} ms`);
      assert.equal(closed.store, 'unavailable');
      assert.deepEqual(stores, ['unavailable']);

      // Back within the Cluster's node timeout (2 s), so the Cluster never declares the master failed.
      await server.restart();
      await waitFor('closed-mode manager back on the Cluster', async () => {
        try {
          return (await closed.reserve('frank', limits, 1)).store === 'redis';
        } catch {
          return false;
        }
      }, 10_000);
      assert.deepEqual(stores, ['unavailable', 'redis']);
      // Replica A retries Redis a second after the failure.
      await waitFor('replica A back on the Cluster', async () => {
        const again = await a.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: words(2) }] }, auth('frank'));
        return again.errors === undefined && a.server.accounting.quota.store === 'redis';
      }, 10_000);
      assert.equal(await metric(a, 'redis'), 1);
      assert.equal(await metric(a, 'local'), 0);
    } finally {
      closedRedis.disconnect();
    }
  });
});
