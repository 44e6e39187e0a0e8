/**
 * The usage ledger books every delta exactly once, also when a flush times out on the client side but
 * Redis runs it later (a paused server here; a reconnecting Cluster node in accounting-cluster.test.ts).
 * A real redis-server of the test's own, paused with CLIENT PAUSE.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { AccountingKeys } from '../src/accounting/keys.ts';
import { Ledger } from '../src/accounting/ledger.ts';
import { silentLogger } from '../src/log.ts';
import { startRedisServer, type RedisServerHandle } from './helpers/redis-server.ts';

const PREFIX = 'polyray-test-ledger:';
const keys = new AccountingKeys(PREFIX);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const f = (tokens: number) => ({ items: 1, tokens, inferenceMs: 0, cost: tokens });

describe('usage ledger: exactly-once flushes', () => {
  let server: RedisServerHandle;
  let admin: Redis;
  let client: Redis;
  before(async () => {
    server = await startRedisServer();
    admin = new Redis(server.url);
    // The ledger's own connection: commands queue while the server is paused, as ioredis does.
    client = new Redis(server.url, { maxRetriesPerRequest: 1 });
  });
  after(async () => {
    client?.disconnect();
    admin?.disconnect();
    await server?.stop();
  });

  const tokens = async (id: string): Promise<number> => Number((await admin.hget(keys.usage(id), 'text-glove|COMPUTED|tokens')) ?? 0);

  test('a batch that timed out and landed later is not added again by its retry', async () => {
    const ledger = new Ledger({ redis: client, keyPrefix: PREFIX, flushMs: 3_600_000, logger: silentLogger(), timeoutMs: 100 });
    ledger.record('alice', 'text-glove', 'COMPUTED', f(10));
    await admin.call('CLIENT', 'PAUSE', '600', 'ALL');
    await ledger.flush(); // times out after 100 ms; the script is still on its way
    await sleep(1000); // the pause ends (600 ms); Redis runs the queued script
    assert.equal(await tokens('alice'), 10, 'the paused script ran once the pause ended');
    // New usage arrives; the next flush resends the unconfirmed batch (found applied) and holds the new delta.
    ledger.record('alice', 'text-glove', 'COMPUTED', f(5));
    const before = await ledger.read(['alice']);
    assert.equal(before[0]!.totals.tokens >= 15, true, 'a read counts unconfirmed and pending deltas');
    await ledger.flush();
    assert.equal(await tokens('alice'), 10, 'the retry of batch 1 did not add it twice');
    await ledger.flush();
    assert.equal(await tokens('alice'), 15, 'the held delta went in the next batch');
    const [book] = await ledger.read(['alice']);
    assert.equal(book!.totals.tokens, 15);
    assert.equal(book!.fleetWide, true);
  });

  test('two replicas flushing the same client never overwrite or repeat each other', async () => {
    const a = new Ledger({ redis: client, keyPrefix: PREFIX, flushMs: 3_600_000, logger: silentLogger(), timeoutMs: 1000 });
    const b = new Ledger({ redis: client, keyPrefix: PREFIX, flushMs: 3_600_000, logger: silentLogger(), timeoutMs: 1000 });
    for (let i = 0; i < 20; i++) {
      a.record('bob', 'text-glove', 'COMPUTED', f(1));
      b.record('bob', 'text-glove', 'COMPUTED', f(2));
      await Promise.all([a.flush(), b.flush()]);
    }
    assert.equal(await tokens('bob'), 60);
    // Each replica process keeps its own batch counter, in the client's slot.
    const seqKeys = await admin.keys(`${PREFIX}{client:bob}:flushseq:*`);
    assert.equal(seqKeys.length, 2);
    assert.deepEqual((await Promise.all(seqKeys.map((k) => admin.get(k)))).map(Number).sort(), [20, 20]);
    assert.ok((await admin.pttl(seqKeys[0]!)) > 6 * 24 * 3600 * 1000, 'sequence keys expire, after days');
  });

  test('a flush that fails outright keeps its batch and lands it once Redis answers', async () => {
    const ledger = new Ledger({ redis: client, keyPrefix: PREFIX, flushMs: 3_600_000, logger: silentLogger(), timeoutMs: 200 });
    ledger.record('carol', 'text-glove', 'COMPUTED', f(7));
    await server.kill();
    await ledger.flush();
    assert.equal(ledger.local('carol').totals.tokens, 7);
    await server.restart();
    await sleep(300); // ioredis reconnects
    for (let i = 0; i < 20 && (await tokens('carol')) === 0; i++) {
      await ledger.flush();
      await sleep(100);
    }
    await ledger.flush();
    assert.equal(await tokens('carol'), 7);
  });

  test('a Redis restart that loses the books: each replica restores its own share once, and counts it', async () => {
    let resets = 0;
    const mk = () => new Ledger({ redis: client, keyPrefix: PREFIX, flushMs: 3_600_000, logger: silentLogger(), timeoutMs: 1000, onReset: () => resets++ });
    const [a, b] = [mk(), mk()];
    a.record('dana', 'text-glove', 'COMPUTED', f(3));
    b.record('dana', 'text-glove', 'COMPUTED', f(4));
    await Promise.all([a.flush(), b.flush()]);
    a.record('dana', 'text-glove', 'MEMORY', { items: 2, tokens: 0, inferenceMs: 0, cost: 0.02 });
    await a.flush();
    assert.equal(await tokens('dana'), 7);
    // The server restarts without persistence: every key is gone.
    await server.kill();
    await server.restart();
    await sleep(300);
    assert.equal(await tokens('dana'), 0, 'the books are gone');
    // New usage after the loss, then the next flushes: the lost figures come back once, the new ones too.
    b.record('dana', 'text-glove', 'COMPUTED', f(5));
    for (let i = 0; i < 20 && (await tokens('dana')) < 12; i++) {
      await Promise.all([a.flush(), b.flush()]);
      await sleep(50);
    }
    await Promise.all([a.flush(), b.flush()]);
    assert.equal(await tokens('dana'), 12, 'restored 3 + 4, plus the 5 recorded after the loss');
    assert.equal(Number(await admin.hget(keys.usage('dana'), 'text-glove|MEMORY|items')), 2);
    assert.equal(resets, 2, 'each replica found the loss once');
    assert.equal(a.resets + b.resets, 2);
    const [book] = await a.read(['dana']);
    assert.equal(book!.totals.items, 5);
    assert.ok((await admin.smembers(keys.clients)).includes('dana'), 'the client is listed again');
  });
});
