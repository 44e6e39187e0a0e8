/**
 * Quotas and the usage ledger on a real 3-master Redis Cluster (started for this file): two real Polyray
 * replicas share one client's bucket through the Cluster, settles refund into it, the ledger's books
 * land there (clients spread over all three masters) and `usage` / `usageAll` read them back, a client's
 * keys share one hash slot, and a dead master sends only the clients whose buckets it serves to the
 * fallback (open: per-replica buckets, closed: QUOTA_STORE_UNAVAILABLE) within the timeout, while a
 * client on a live master keeps its shared bucket; after the restart both are on the Cluster again.
 *
 * The nodes run with `cluster-require-full-coverage no`, so the live masters keep serving if the Cluster
 * marks the killed one failed (after its 2 s node timeout) before the restart. Runs in about 10 s.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
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
import { keySlot as localKeySlot } from '../src/redis/slots.ts';
import { isPolyrayError } from '../src/errors.ts';
import { code, costOf, words } from './helpers/accounting.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';
import { startRedisCluster, waitFor, type RedisClusterHandle } from './helpers/redis-server.ts';

const TEST_TIMEOUT_MS = 20_000;
// Fixed: the Cluster is this file's own, and the slot of a client's keys depends on its id only.
const PREFIX = 'polyray:test:acct:';
const TIMEOUT_MS = 200; // POLYRAY_QUOTA_REDIS_TIMEOUT_MS default

const EMBED = `query($model: String!, $inputs: [EmbedInput!]!) { embed(model: $model, inputs: $inputs) { source } }`;
type EmbedData = { embed: { source: string }[] };
const USAGE = `query($id: ID) { usage(clientId: $id) { clientId fleetWide rows { model source items tokens cost } totals { items tokens cost } quota { remaining store } } }`;
type UsageData = {
  usage: {
    clientId: string;
    fleetWide: boolean;
    rows: ({ model: string; source: string } & Figures)[];
    totals: Figures;
    quota: { remaining: number; store: string };
  };
};

describe('quotas and the usage ledger on a Redis Cluster, two replicas', () => {
  const keys = new AccountingKeys(PREFIX);
  let cluster: RedisClusterHandle;
  let admins: Redis[] = [];
  let dir: string;
  let a: TestServer;
  let b: TestServer;
  const apiKeys: Record<string, string> = {};
  // Picked by slot in `before`: downId's bucket lives on master 0 (killed by the fault test), upId's on master 1.
  let downId = '';
  let upId = '';
  const auth = (id: string): Record<string, string> => ({ authorization: `Bearer ${apiKeys[id]}` });

  before(
    async () => {
      cluster = await startRedisCluster(3, { extraArgs: ['--cluster-require-full-coverage', 'no'] });
      admins = await Promise.all(
        cluster.nodes.map(async (n) => {
          const r = new Redis(n.port, n.host, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => 50 });
          r.on('error', () => undefined); // the fault test kills a node
          await r.connect();
          return r;
        }),
      );
      const owners = await slotOwners();
      const pick = (stem: string, node: number): string => {
        for (let i = 0; i < 10_000; i++) if (owners[localKeySlot(keys.bucket(`${stem}${i}`))] === node) return `${stem}${i}`;
        throw new Error(`no id ${stem}<n> with its bucket on master ${node}`);
      };
      downId = pick('down', 0);
      upId = pick('up', 1);
      dir = await mkdtemp(path.join(tmpdir(), 'polyray-clients-'));
      const file = path.join(dir, 'clients.json');
      for (const spec of [
        { id: 'admin', name: 'Operators', role: 'admin' as const, rate: 1e6, burst: 1e9 },
        // A rate this low refills 0.01 units per second: the levels below are exact to 0.1 units.
        { id: 'alice', name: 'Alice', models: ['text-glove'], rate: 0.01, burst: 400 },
        { id: 'bob', name: 'Bob', rate: 1e6, burst: 1e8 },
        { id: 'carol', name: 'Carol', rate: 1e6, burst: 1e8 },
        { id: 'erin', name: 'Erin', rate: 1e6, burst: 1e8 },
        { id: downId, name: 'On the master that dies', rate: 0.01, burst: 100 },
        { id: upId, name: 'On a master that lives', rate: 0.01, burst: 100 },
      ]) {
        apiKeys[spec.id] = (await addClient(file, spec)).key;
      }
      const overrides = {
        accounting: {
          clientsFile: file,
          redis: { kind: 'cluster' as const, nodes: cluster.nodes },
          keyPrefix: PREFIX,
          ledgerFlushMs: 100,
          redisTimeoutMs: TIMEOUT_MS,
        },
        batching: { maxWaitUs: 3000 },
      };
      [a, b] = await Promise.all([startPolyray(overrides), startPolyray(overrides)]);
    },
    { timeout: 60_000 },
  );

  after(
    async () => {
      await Promise.all([a?.stop(), b?.stop()]);
      for (const r of admins) r.disconnect();
      await cluster?.stop();
      if (dir) await rm(dir, { recursive: true, force: true });
    },
    { timeout: 30_000 },
  );

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
  const scrape = async (t: TestServer): Promise<string> => (await fetch(`${t.url}/metrics`, { headers: auth('admin') })).text();
  const metric = async (t: TestServer, store: string): Promise<number> =>
    Number(new RegExp(`polyray_quota_store\\{store="${store}"\\} (\\d+)`).exec(await scrape(t))?.[1]);
  const nodesDown = async (t: TestServer): Promise<number> => Number(/polyray_quota_store_nodes_down (\d+)/.exec(await scrape(t))?.[1]);

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
        return (
          Object.entries(hash)
            .filter(([k]) => k.endsWith('|tokens'))
            .reduce((s, [, v]) => s + Number(v), 0) === 28
        );
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
    const all = await a.gql<{ usageAll: { clientId: string; totals: { items: number; tokens: number } }[] }>(
      '{ usageAll { clientId totals { items tokens } } }',
      {},
      auth('admin'),
    );
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

  test('a dead master: only its clients fall back (open: per replica, closed: refused); a live master’s client keeps the shared bucket; both recover', {
    timeout: TEST_TIMEOUT_MS,
  }, async () => {
    const owners = await slotOwners();
    assert.equal(owners[await keySlot(keys.bucket(downId))], 0, `${downId}'s bucket is on master 0 (server KEYSLOT agrees with keySlot)`);
    assert.equal(owners[await keySlot(keys.bucket(upId))], 1, `${upId}'s bucket is on master 1`);
    const victim = cluster.servers[0]!;
    // A second, closed-mode manager on its own Cluster connection. Its own prefix: its buckets are not the
    // replicas', but sit in the same slots (the slot is the `{client:<id>}` tag's).
    const closedRedis = createAccountingRedis({ kind: 'cluster', nodes: cluster.nodes }, { timeoutMs: TIMEOUT_MS });
    closedRedis.on('error', () => undefined);
    await closedRedis.connect();
    const stores: string[] = [];
    const closed = new QuotaManager({
      redis: new RedisBuckets(closedRedis, `${PREFIX}closed:`, { timeoutMs: TIMEOUT_MS }),
      failureMode: 'closed',
      logger: pino({ level: 'silent' }),
      retryMs: 100,
      onStoreChange: (s) => stores.push(s),
    });
    const limits = { rate: 0.01, burst: 100 };
    /**
     * Replica `first` spends 20 units (reserves 41), which the bucket in the Cluster shows; `second` then asks
     * for 91, more than is left there, and must be refused, though its own full bucket (100) would admit it.
     * Relative to the level found: a take queued for the dead master may still land once it is back.
     */
    const shared = async (id: string, admin: Redis, first: TestServer, second: TestServer): Promise<void> => {
      const found = await admin.hget(keys.bucket(id), 'tokens');
      const start = found === null ? limits.burst : Number(found);
      const r = await first.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: words(20) }] }, auth(id));
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
      assert.deepEqual([costOf(r).estimated, costOf(r).charged], [41, 20]);
      const level = Number(await admin.hget(keys.bucket(id), 'tokens'));
      assert.ok(
        level >= start - 20 && level < start - 19.9,
        `${id}'s bucket in the Cluster: ${level}, expected ${start} - 20 (a per-replica bucket leaves it untouched)`,
      );
      const refused = await second.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: words(45) }] }, auth(id));
      assert.equal(code(refused), 'QUOTA_EXCEEDED', `${id} on the second replica: ${JSON.stringify(refused.errors ?? refused.data)}`);
      assert.equal(refused.errors![0]!.extensions!['estimated'], 91);
      assert.ok((refused.errors![0]!.extensions!['remaining'] as number) < start - 19.9);
    };
    try {
      for (const id of [downId, upId]) assert.equal((await closed.reserve(id, limits, 1)).store, 'redis');
      await victim.kill();

      // Open (the replicas' default): the client on the dead master is served from each replica's own
      // bucket, no slower than the timeout allows (ioredis alone would retry 16 × 100 ms).
      for (const t of [a, b]) {
        const t0 = performance.now();
        const r = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: words(10) }] }, auth(downId));
        const ms = performance.now() - t0;
        assert.equal(r.errors, undefined, JSON.stringify(r.errors));
        assert.ok(ms < TIMEOUT_MS + 600, `answered in ${ms.toFixed(0)} ms`);
        assert.equal(t.server.accounting.quota.storeFor(downId), 'local');
      }
      // Both replicas have seen master 0 fail, yet the client on master 1 still has one bucket, in the Cluster.
      await shared(upId, admins[1]!, a, b);
      for (const t of [a, b]) {
        assert.equal(t.server.accounting.quota.storeFor(upId), 'redis');
        assert.equal(t.server.accounting.quota.store, 'local', 'the whole store: some clients are on the fallback');
        assert.deepEqual([await metric(t, 'local'), await metric(t, 'redis'), await nodesDown(t)], [1, 0, 1]);
      }
      // Query.usage says where each client's bucket is. The ledger: the live master's books are read
      // fleet-wide; the dead one's cannot be, so that client gets this replica's own figures.
      const upUsage = (await a.gql<UsageData>(USAGE, {}, auth(upId))).data!.usage;
      assert.deepEqual([upUsage.quota.store, upUsage.fleetWide, upUsage.totals.tokens], ['REDIS', true, 20]);
      const downUsage = (await a.gql<UsageData>(USAGE, {}, auth(downId))).data!.usage;
      assert.deepEqual([downUsage.quota.store, downUsage.fleetWide, downUsage.totals.tokens], ['LOCAL', false, 10]);

      // Closed: the dead master's client is refused, with the reason, within the timeout; the other is not.
      const t1 = performance.now();
      await assert.rejects(
        closed.reserve(downId, limits, 1),
        (e: unknown) => isPolyrayError(e) && e.code === 'QUOTA_EXCEEDED' && e.extensions['reason'] === 'QUOTA_STORE_UNAVAILABLE',
      );
      assert.ok(performance.now() - t1 < TIMEOUT_MS + 100, `refused in ${(performance.now() - t1).toFixed(0)} ms`);
      assert.equal((await closed.reserve(upId, limits, 1)).store, 'redis', 'a client on a live master is not refused');
      assert.deepEqual([closed.storeFor(downId), closed.storeFor(upId), closed.store, closed.nodesDown], ['unavailable', 'redis', 'unavailable', 1]);
      assert.deepEqual(stores, ['unavailable']);

      await victim.restart();
      await waitFor(
        'closed-mode manager back on master 0',
        async () => {
          try {
            return (await closed.reserve(downId, limits, 1)).store === 'redis';
          } catch {
            return false;
          }
        },
        10_000,
      );
      assert.deepEqual(stores, ['unavailable', 'redis']);
      // The replicas probe master 0 with backoff (1 s, 2 s, ...); a usage read (a peek: it spends nothing) is a probe.
      for (const t of [a, b]) {
        await waitFor(
          `replica ${t === a ? 'A' : 'B'} back on master 0`,
          async () => (await t.gql<UsageData>(USAGE, {}, auth(downId))).data?.usage.quota.store === 'REDIS',
          10_000,
        );
      }
      // Both replicas share the bucket on the restarted master again.
      await shared(downId, admins[0]!, a, b);
      for (const t of [a, b]) {
        assert.equal(t.server.accounting.quota.storeFor(upId), 'redis');
        assert.deepEqual([await metric(t, 'redis'), await metric(t, 'local'), await nodesDown(t)], [1, 0, 0]);
      }
      // The ledger kept the deltas it could not flush to master 0 and lands them once it is back, exactly
      // once: flushes that timed out while the master was down sit in ioredis' node queue and land too, but
      // each batch carries a number the script applies only once (ledger.ts).
      const recorded = a.server.accounting.ledger.local(downId).totals.tokens + b.server.accounting.ledger.local(downId).totals.tokens;
      const booked = async (): Promise<number> =>
        Object.entries(await admins[0]!.hgetall(keys.usage(downId)))
          .filter(([k]) => k.endsWith('|tokens'))
          .reduce((s, [, v]) => s + Number(v), 0);
      await waitFor(`${downId}'s books on master 0`, async () => (await booked()) >= recorded);
      // Let every queued and retried flush land, then the books must equal what the replicas recorded.
      await Promise.all([a, b].map((t) => t.server.accounting.ledger.flush()));
      await new Promise((r) => setTimeout(r, 1500));
      await Promise.all([a, b].map((t) => t.server.accounting.ledger.flush()));
      assert.equal(await booked(), recorded, 'each token booked once');
    } finally {
      closedRedis.disconnect();
    }
  });
});
