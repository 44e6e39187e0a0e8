/**
 * The usage books in PostgreSQL equal what the responses charged, to the unit, with no batch twice, through
 * the faults a fleet meets: a replica killed with SIGKILL while the database is down, the database stopped
 * for 10 s, Redis restarted empty, and a replica killed in the middle of its database transaction.
 *
 * Real replicas (child processes running src/main.ts), a PostgreSQL and a Redis of the test's own; mixed
 * GraphQL and OpenAI-compatible traffic from two clients. A replica's load stops a few flushes before it is
 * killed: SIGKILL loses what a replica recorded since its last cut (≤ one flush interval, documented), and
 * this test is about what happens to batches once cut.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import pg from 'pg';
import { addClient } from '../src/accounting/clients.ts';
import { AccountingKeys } from '../src/accounting/keys.ts';
import { type ChildServer, startChildServer } from './helpers/child-server.ts';
import { startPostgresServer, type PostgresServerHandle } from './helpers/postgres-server.ts';
import { startRedisServer, type RedisServerHandle } from './helpers/redis-server.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const PREFIX = 'polyray-test-books:';
const COMMON = ['the cat sat', 'a quick brown fox', 'hello world', 'on the mat'];
const VOCAB = ['river', 'stone', 'light', 'green', 'paper', 'music', 'cloud', 'bread', 'glass', 'horse', 'table', 'north', 'sugar', 'plant', 'metal'];

interface Totals {
  cost: number;
  items: number;
  requests: number;
  failures: number;
}

/** What one client was told it was charged, summed over the responses it received. */
class Tally {
  readonly byClient = new Map<string, Totals>();
  /** Why requests failed (HTTP status and error code, or the fetch error), for the assertion messages. */
  readonly reasons = new Map<string, number>();
  add(client: string, cost: number, items: number): void {
    const t = this.byClient.get(client) ?? { cost: 0, items: 0, requests: 0, failures: 0 };
    t.cost += cost;
    t.items += items;
    t.requests++;
    this.byClient.set(client, t);
  }
  fail(client: string, reason: string): void {
    const t = this.byClient.get(client) ?? { cost: 0, items: 0, requests: 0, failures: 0 };
    t.failures++;
    this.byClient.set(client, t);
    this.reasons.set(reason, (this.reasons.get(reason) ?? 0) + 1);
  }
}

function texts(seed: number): string[] {
  const pick = (i: number): string => VOCAB[(seed * 7 + i * 3) % VOCAB.length]!;
  // Two texts likely new (computed), two common (hits after the first time).
  return [`${pick(1)} ${pick(2)} ${seed % 97}`, `${pick(3)} ${seed}`, COMMON[seed % COMMON.length]!, COMMON[(seed + 1) % COMMON.length]!];
}

/** Sends requests to `server` as `client` until `stop()`; GraphQL and OpenAI-compatible alternately. */
function loadOn(server: ChildServer, client: string, key: string, tally: Tally, seed0: number): { stop(): Promise<void> } {
  let running = true;
  let seed = seed0;
  const loop = async (): Promise<void> => {
    while (running) {
      const s = seed++;
      const input = texts(s);
      try {
        if (s % 2 === 0) {
          const res = await fetch(`${server.url}/graphql`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
            body: JSON.stringify({
              query: 'query($i: [EmbedInput!]!) { embed(inputs: $i, model: "text-glove") { source } }',
              variables: { i: input.map((text) => ({ text })) },
            }),
          });
          const body = (await res.json()) as {
            data?: { embed: unknown[] };
            errors?: { extensions?: { code?: string } }[];
            extensions?: { cost?: { charged: number } };
          };
          if (res.status !== 200 || body.errors) tally.fail(client, `graphql ${res.status} ${body.errors?.[0]?.extensions?.code ?? ''}`);
          else tally.add(client, body.extensions!.cost!.charged, body.data!.embed.length);
        } else {
          const res = await fetch(`${server.url}/v1/embeddings`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
            body: JSON.stringify({ model: 'text-glove', input: input }),
          });
          const body = (await res.json()) as { data?: unknown[]; error?: { code?: string } };
          if (res.status !== 200) tally.fail(client, `openai ${res.status} ${body.error?.code ?? ''}`);
          else tally.add(client, Number(res.headers.get('x-polyray-cost')), body.data!.length);
        }
      } catch (e) {
        // The replica was killed with this request in flight: no answer, nothing the client was told.
        if (!running) return;
        tally.fail(client, `fetch ${(e as Error).message}`);
        await sleep(50);
      }
    }
  };
  const loops = [loop(), loop()];
  return {
    stop: async () => {
      running = false;
      await Promise.all(loops);
    },
  };
}

describe('usage books in PostgreSQL: exactly once through faults', () => {
  let pgServer: PostgresServerHandle;
  let redis: RedisServerHandle;
  let dbUrl: string;
  let dir: string;
  const keys: Record<string, string> = {};
  const children: ChildServer[] = [];
  /** Every load started, stopped in after() too: a failed assertion must not leave loops running (the test process would never exit). */
  const loads: { stop(): Promise<void> }[] = [];
  const closers: (() => unknown)[] = [];

  before(async () => {
    [pgServer, redis] = await Promise.all([startPostgresServer(), startRedisServer()]);
    dbUrl = await pgServer.createDatabase('books');
    dir = await mkdtemp(join(tmpdir(), 'polyray-books-'));
    for (const id of ['alpha', 'beta']) keys[id] = (await addClient(join(dir, 'clients.json'), { id, rate: 1e6, burst: 1e9 })).key;
  });
  after(async () => {
    // Loops told to stop before their replicas die: a request to a dead replica fails at once and the loop ends.
    const stopped = Promise.all(loads.map((l) => l.stop()));
    for (const c of children) c.process.kill('SIGKILL');
    await stopped;
    for (const close of closers) await Promise.resolve(close()).catch(() => undefined);
    await Promise.all([pgServer?.stop(), redis?.stop()]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const replica = async (): Promise<ChildServer> => {
    const c = await startChildServer({
      NODE_ENV: 'production',
      POLYRAY_CLIENTS_FILE: join(dir, 'clients.json'),
      POLYRAY_QUOTA_REDIS_URL: redis.url,
      POLYRAY_QUOTA_KEY_PREFIX: PREFIX,
      POLYRAY_SERVE_MODELS: 'text-glove',
      POLYRAY_LEDGER_FLUSH_MS: '100',
      POLYRAY_USAGE_DATABASE_URL: dbUrl,
      POLYRAY_USAGE_DATABASE_FLUSH_MS: '100',
      POLYRAY_USAGE_DATABASE_TIMEOUT_MS: '3000',
    });
    children.push(c);
    return c;
  };

  test('kill -9 with the database down, database down 10 s, Redis restarted empty, kill -9 mid-transaction', { timeout: 180_000 }, async () => {
    const tally = new Tally();
    const admin = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    admin.on('error', () => undefined);
    await admin.connect();
    closers.push(() => admin.disconnect());
    const outbox = new AccountingKeys(PREFIX).usageOutbox;
    const db = new pg.Client({ connectionString: dbUrl });
    db.on('error', () => undefined);
    closers.push(() => db.end());
    /** The replicas' last log lines, for assertion messages. */
    const logs = (): string => children.map((c, i) => `--- replica ${i} ---\n${c.log().slice(-1500)}`).join('\n');

    const [a, b] = await Promise.all([replica(), replica()]);
    const start = (s: ChildServer, seed: number) => {
      const started = [loadOn(s, 'alpha', keys['alpha']!, tally, seed), loadOn(s, 'beta', keys['beta']!, tally, seed + 50_000)];
      loads.push(...started);
      return started;
    };
    let onA = start(a, 0);
    let onB = start(b, 100_000);
    await sleep(2000);

    // The database goes away for 10 s; both replicas keep serving.
    const failuresBefore = [...tally.byClient.values()].reduce((n, t) => n + t.failures, 0);
    await pgServer.halt();
    const down = Date.now();
    await sleep(2000);
    // A stops taking traffic, cuts its last batches into the outbox, and is killed outright.
    await Promise.all(onA.map((l) => l.stop()));
    await sleep(600);
    a.process.kill('SIGKILL');
    assert.ok((await admin.hlen(outbox)) > 0, 'batches wait in the Redis outbox while the database is down');
    await sleep(Math.max(0, 10_000 - (Date.now() - down)));
    const failuresDuring = [...tally.byClient.values()].reduce((n, t) => n + t.failures, 0) - failuresBefore;
    assert.equal(failuresDuring, 0, `requests kept succeeding while the database was down (failures so far: ${JSON.stringify([...tally.reasons])})\n${logs()}`);
    await pgServer.resume();
    await db.connect();

    // B delivers its own batches, then A's once A's liveness key has expired.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const fields = await admin.hkeys(outbox);
      const { rows } = await db.query<{ n: string }>('SELECT count(*)::text AS n FROM usage_batches');
      if (fields.length <= 2 && Number(rows[0]!.n) > 0) {
        const { rows: by } = await db.query<{ replica: string; delivered_by: string }>('SELECT DISTINCT replica, delivered_by FROM usage_batches');
        if (by.some((r) => r.replica !== r.delivered_by)) break; // the orphans went in
      }
      assert.ok(Date.now() < deadline, `the killed replica's batches were delivered (outbox: ${fields.join(' ')})\n${logs()}`);
      await sleep(250);
    }

    // Redis restarts empty while B is serving: B writes what it still holds to the outbox again.
    await redis.kill();
    await redis.restart();
    await sleep(2000);

    // A third replica; then B is killed while its database transaction waits on a lock the test holds.
    const c = await replica();
    const onC = start(c, 200_000);
    const locker = new pg.Client({ connectionString: dbUrl });
    locker.on('error', () => undefined);
    await locker.connect();
    let lockerOpen = true;
    closers.push(() => (lockerOpen ? locker.end() : undefined));
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE usage_batches IN ACCESS EXCLUSIVE MODE');
    const waitUntil = Date.now() + 10_000;
    for (;;) {
      const { rows } = await db.query<{ n: string }>(
        "SELECT count(*)::text AS n FROM pg_stat_activity WHERE application_name = 'polyray' AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO usage_batches%'",
      );
      if (Number(rows[0]!.n) > 0) break;
      assert.ok(Date.now() < waitUntil, 'a replica transaction waits on the lock');
      await sleep(50);
    }
    await Promise.all(onB.map((l) => l.stop()));
    await sleep(600);
    b.process.kill('SIGKILL');
    await sleep(300);
    await locker.query('ROLLBACK');
    lockerOpen = false;
    await locker.end();
    await sleep(2000);
    await Promise.all(onC.map((l) => l.stop()));
    onA = [];
    onB = [];

    // C delivers its own and, after B's liveness key expires, B's; then it stops cleanly.
    const settle = Date.now() + 40_000;
    while ((await admin.hlen(outbox)) > 0) {
      assert.ok(Date.now() < settle, `every outbox batch was delivered (left: ${(await admin.hkeys(outbox)).join(' ')})\n${logs()}`);
      await sleep(250);
    }
    await c.stop();
    assert.equal(await admin.hlen(outbox), 0, 'nothing left in the outbox after a clean stop');

    const { rows } = await db.query<{ client_id: string; cost: string; items: string; surfaces: string }>(
      "SELECT client_id, sum(cost)::text AS cost, sum(items)::text AS items, string_agg(DISTINCT surface, ',' ORDER BY surface) AS surfaces FROM usage_hourly GROUP BY client_id ORDER BY client_id",
    );
    for (const id of ['alpha', 'beta']) {
      const told = tally.byClient.get(id)!;
      const row = rows.find((r) => r.client_id === id);
      assert.ok(row, `${id} has rows`);
      assert.ok(told.requests > 50, `${id} sent real traffic (${told.requests} answered)`);
      assert.equal(Number(row.items), told.items, `${id}: items in the database = items answered`);
      // Each response's charge is rounded to 1e-6; the database keeps 9 decimals.
      assert.ok(Math.abs(Number(row.cost) - told.cost) < 1e-6 * told.requests + 1e-6, `${id}: cost in the database ${row.cost} = charged ${told.cost}`);
      assert.equal(row.surfaces, 'graphql,openai');
    }
    // The audit trail: the raw batches add up to the hourly rows (no batch counted twice, none lost).
    const { rows: audit } = await db.query<{ from_batches: string; from_rows: string; orphans: string }>(
      `SELECT (SELECT sum((r->>'cost')::numeric(30,9))::text FROM usage_batches, jsonb_array_elements(body) r) AS from_batches,
              (SELECT sum(cost)::text FROM usage_hourly) AS from_rows,
              (SELECT count(*)::text FROM usage_batches WHERE replica <> delivered_by) AS orphans`,
    );
    assert.ok(Math.abs(Number(audit[0]!.from_batches) - Number(audit[0]!.from_rows)) < 1e-6, 'batches add up to the rows');
    assert.ok(Number(audit[0]!.orphans) > 0, 'some batches were delivered by another replica than the one that cut them');
  });
});
