/**
 * Lost books on a Redis Cluster (issue 28): one master restarted without persistence loses only its slots'
 * books. Each client's flush sequence key is the marker of that client's books (it lives in the client's
 * slot), so a replica's next flush of that client finds it gone and restores its share, once, and only for
 * the clients that master served; the others are untouched. Two ledgers, a real 3-master Cluster of this
 * file's own. Runs in about 10 s.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { AccountingKeys } from '../src/accounting/keys.ts';
import { type Figures, Ledger } from '../src/accounting/ledger.ts';
import { type AccountingRedis, createAccountingRedis } from '../src/accounting/redis-client.ts';
import { silentLogger } from '../src/log.ts';
import { keySlot } from '../src/redis/slots.ts';
import { type RedisClusterHandle, startRedisCluster } from './helpers/redis-server.ts';

const PREFIX = 'polyray:test:ledger-cluster:';
const keys = new AccountingKeys(PREFIX);
const f = (tokens: number): Figures => ({ items: 1, tokens, inferenceMs: 1, cost: tokens / 100 });
const CLIENTS = Array.from({ length: 12 }, (_, i) => `team-${i}`);

describe('usage books on a Redis Cluster whose master loses its data', () => {
  let cluster: RedisClusterHandle;
  let redis: AccountingRedis;
  before(async () => {
    cluster = await startRedisCluster(3, { extraArgs: ['--cluster-require-full-coverage', 'no'] });
    redis = createAccountingRedis({ kind: 'cluster', nodes: cluster.nodes }, { timeoutMs: 1000 });
    await redis.connect?.();
  });
  after(async () => {
    redis?.disconnect();
    await cluster?.stop();
  });

  /** The master serving a key's slot, by asking each node which slots it holds. */
  async function masterOf(key: string): Promise<number> {
    const slot = keySlot(key);
    for (const [i, s] of cluster.servers.entries()) {
      const node = new Redis({ host: s.host, port: s.port, lazyConnect: true });
      await node.connect();
      const slots = (await node.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][];
      node.disconnect();
      if (slots.some(([from, to, [, port]]) => slot >= from && slot <= to && port === s.port)) return i;
    }
    throw new Error(`no master for slot ${slot}`);
  }

  async function tokens(client: string): Promise<number> {
    const all = (await redis.hgetall(keys.usage(client))) as Record<string, string>;
    let n = 0;
    for (const [field, v] of Object.entries(all)) if (field.endsWith('|tokens')) n += Number(v);
    return n;
  }

  test("a restarted master's clients are restored once by each replica; the other clients are untouched", { timeout: 60_000 }, async () => {
    let resets = 0;
    const mk = () => new Ledger({ redis, keyPrefix: PREFIX, flushMs: 3_600_000, logger: silentLogger(), timeoutMs: 1000, onReset: () => resets++ });
    const [a, b] = [mk(), mk()];
    const expected = new Map<string, number>();
    const book = (l: Ledger, client: string, n: number) => {
      l.record(client, 'text-glove', 'COMPUTED', f(n));
      expected.set(client, (expected.get(client) ?? 0) + n);
    };
    // Two rounds each, so every client has a confirmed batch from each replica.
    for (let round = 0; round < 2; round++) {
      for (const [i, c] of CLIENTS.entries()) {
        book(a, c, i + 1);
        book(b, c, 100);
      }
      await Promise.all([a.flush(), b.flush()]);
    }
    for (const c of CLIENTS) assert.equal(await tokens(c), expected.get(c), c);

    const owner = new Map<string, number>();
    for (const c of CLIENTS) owner.set(c, await masterOf(keys.usage(c)));
    const victim = owner.get(CLIENTS[0]!)!;
    const lost = CLIENTS.filter((c) => owner.get(c) === victim);
    const kept = CLIENTS.filter((c) => owner.get(c) !== victim);
    assert.ok(lost.length > 0 && kept.length > 0, `clients on the victim and elsewhere (${lost.length} / ${kept.length})`);

    // The master restarts without persistence: its slots come back (nodes.conf) and its data does not.
    await cluster.servers[victim]!.kill();
    await cluster.servers[victim]!.restart();
    for (let i = 0; i < 100; i++) {
      try {
        if ((await tokens(lost[0]!)) === 0) break;
      } catch {
        // the node is coming back
      }
      await sleep(100);
    }
    for (const c of lost) assert.equal(await tokens(c), 0, `${c}'s books are gone`);

    // New usage of every client from both replicas, then flushes until Redis has it all.
    for (const c of CLIENTS) {
      book(a, c, 1000);
      book(b, c, 10_000);
    }
    for (let i = 0; i < 50; i++) {
      await Promise.all([a.flush(), b.flush()]);
      const now = await Promise.all(CLIENTS.map((c) => tokens(c).catch(() => -1)));
      if (now.every((n, j) => n === expected.get(CLIENTS[j]!))) break;
      await sleep(100);
    }
    for (const c of CLIENTS) assert.equal(await tokens(c), expected.get(c), `${c}: the books equal everything recorded, exactly once`);
    assert.equal(resets, 2 * lost.length, 'each replica found each lost client once');
    assert.equal(a.resets, lost.length);
    assert.equal(b.resets, lost.length);
    // Further flushes find nothing more to restore.
    for (const c of CLIENTS) book(a, c, 1);
    await Promise.all([a.flush(), b.flush()]);
    assert.equal(resets, 2 * lost.length);
    for (const c of CLIENTS) assert.equal(await tokens(c), expected.get(c));
  });
});
