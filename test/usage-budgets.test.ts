/**
 * Budgets, usage history and reports against a real PostgreSQL (the test's own) and two real replicas in
 * this process, on a fake clock so that a month can end during the test:
 *   - a client at 95 % of its budget gets the soft alert once for the fleet; at 100 % every replica refuses
 *     with BUDGET_EXCEEDED (GraphQL and REST); a raised budget in the clients file applies within seconds;
 *     the next month it is served again;
 *   - `Query.usageHistory` and `polyray usage report` (CSV, JSON) agree with the database; a client cannot
 *     read another's history; malformed dates, reversed or absurd ranges and unknown clients get clear errors;
 *   - a batch delivered again (an outbox entry whose delete failed, found by another replica) is not added twice.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import pg from 'pg';
import { addClient } from '../src/accounting/clients.ts';
import { AccountingKeys } from '../src/accounting/keys.ts';
import { silentLogger } from '../src/log.ts';
import { UsageBooks, type UsageBooksOptions } from '../src/usage/books.ts';
import { migrateUsageDatabase } from '../src/usage/database.ts';
import { code, words } from './helpers/accounting.ts';
import { polyrayCli } from './helpers/cli.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';
import { startPostgresServer, type PostgresServerHandle } from './helpers/postgres-server.ts';
import { startRedisServer, type RedisServerHandle } from './helpers/redis-server.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const EMBED = 'query($t: String!) { embed(inputs: [{ text: $t }], model: "text-glove") { source } }';
const NOV_30 = Date.UTC(2026, 10, 30, 22, 0, 0);
const DEC_1 = Date.UTC(2026, 11, 1, 0, 0, 1);

/** Books that flush only when asked (`delivered()`), on `db` and, when given, an outbox in `redis`. */
const booksOptions = (db: pg.Pool, keyPrefix: string, redis?: Redis): UsageBooksOptions => ({
  db,
  ...(redis ? { redis } : {}),
  keyPrefix,
  flushMs: 3_600_000,
  maxUnconfirmed: 10,
  redisTimeoutMs: 1000,
  retentionDays: 400,
  batchRetentionDays: 30,
  logger: silentLogger(),
});

describe('budgets, history and reports on the usage database', () => {
  let pgServer: PostgresServerHandle;
  let redis: RedisServerHandle;
  let dbUrl: string;
  let dir: string;
  let file: string;
  let db: pg.Client;
  const keys: Record<string, string> = {};
  let now = NOV_30;
  const servers: TestServer[] = [];

  const setBudget = async (cost: number): Promise<void> => {
    const data = JSON.parse(await readFile(file, 'utf8')) as { clients: { id: string; budget?: unknown }[] };
    data.clients.find((c) => c.id === 'thrifty')!.budget = { cost, period: 'month', alerts: [0.5, 0.95] };
    await writeFile(file, JSON.stringify(data));
  };

  before(async () => {
    [pgServer, redis] = await Promise.all([startPostgresServer(), startRedisServer()]);
    dbUrl = await pgServer.createDatabase('budgets');
    dir = await mkdtemp(join(tmpdir(), 'polyray-budgets-'));
    file = join(dir, 'clients.json');
    for (const [id, role] of [
      ['thrifty', 'client'],
      ['neighbour', 'client'],
      ['boss', 'admin'],
    ] as const)
      keys[id] = (await addClient(file, { id, role, rate: 1e6, burst: 1e9 })).key;
    await setBudget(100);
    for (let i = 0; i < 2; i++) {
      servers.push(
        await startPolyray(
          {
            accounting: { clientsFile: file },
            usage: { databaseUrl: dbUrl, flushMs: 50, budgetRefreshMs: 50 },
          } as never,
          { clock: () => now },
        ),
      );
    }
    db = new pg.Client({ connectionString: dbUrl });
    await db.connect();
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await db?.end();
    await Promise.all([pgServer?.stop(), redis?.stop()]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const as = (id: string) => ({ authorization: `Bearer ${keys[id]}` });
  /** Waits until every replica's books are in the database and every replica has read the spend. */
  const settle = async (): Promise<void> => {
    for (const s of servers) await s.server.accounting.books!.delivered();
    for (const s of servers) await s.server.accounting.budgets!.refresh();
  };
  const alerts = async (): Promise<number> => {
    let n = 0;
    for (const s of servers) {
      const text = await (await fetch(`${s.url}/metrics`, { headers: as('boss') })).text();
      for (const m of text.matchAll(/^polyray_budget_alerts_total\{[^}]*client="thrifty"[^}]*\} (\d+)/gm)) n += Number(m[1]);
    }
    return n;
  };

  test('soft alert once at 95 %, BUDGET_EXCEEDED from every replica at 100 %, a raised budget applies, the next month serves again', async () => {
    // 9 × 10 tokens = 90 units (text-glove costs a unit per computed token), alternating replicas.
    for (let i = 0; i < 9; i++) {
      const r = await servers[i % 2]!.gql(EMBED, { t: words(10) }, as('thrifty'));
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    }
    await settle();
    const { rows: half } = await db.query('SELECT threshold::float AS t FROM budget_alerts ORDER BY threshold');
    assert.deepEqual(
      half.map((r) => r.t),
      [0.5],
      'the 50 % alert was recorded once',
    );
    const at96 = await servers[0]!.gql(EMBED, { t: words(6) }, as('thrifty'));
    assert.equal(at96.errors, undefined);
    await settle();
    await settle();
    const { rows: both } = await db.query<{ t: number; alerted_by: string }>('SELECT threshold::float AS t, alerted_by FROM budget_alerts ORDER BY threshold');
    assert.deepEqual(
      both.map((r) => r.t),
      [0.5, 0.95],
      'the 95 % alert was recorded once for the fleet',
    );
    assert.equal(await alerts(), 2, 'each alert counted once across both replicas');
    const remaining = (await servers[1]!.gql('{ models { name } }', {}, as('thrifty'))).extensions?.['cost'] as { budgetRemaining?: number };
    assert.ok(Math.abs(remaining.budgetRemaining! - 4) < 1e-6, `extensions.cost.budgetRemaining is 4 (got ${remaining.budgetRemaining})`);

    // 96 < 100: this one is admitted and takes the client over; afterwards every replica refuses.
    assert.equal((await servers[1]!.gql(EMBED, { t: words(5) }, as('thrifty'))).errors, undefined);
    await settle();
    for (const s of servers) {
      const r = await s.gql(EMBED, { t: words(3) }, as('thrifty'));
      assert.equal(code(r), 'BUDGET_EXCEEDED', JSON.stringify(r.errors));
      assert.match(r.errors![0]!.message, /budget of 100 cost units/);
      const rest = await fetch(`${s.url}/v1/embeddings`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...as('thrifty') },
        body: JSON.stringify({ model: 'text-glove', input: 'more words please' }),
      });
      assert.equal(rest.status, 402);
      assert.equal(((await rest.json()) as { error: { code: string } }).error.code, 'budget_exceeded');
      assert.ok(Number(rest.headers.get('retry-after')) > 0, 'retry-after says when the period renews');
    }
    // Another client is not affected.
    assert.equal((await servers[0]!.gql(EMBED, { t: words(4) }, as('neighbour'))).errors, undefined);
    const { rows: spent } = await db.query<{ cost: string }>("SELECT sum(cost)::text AS cost FROM usage_hourly WHERE client_id = 'thrifty'");
    assert.equal(Number(spent[0]!.cost), 101, 'refused requests were not charged');

    // A raised budget in the clients file applies within seconds (the file is polled every 2 s).
    await setBudget(1000);
    const raised = Date.now();
    for (;;) {
      const r = await servers[0]!.gql(EMBED, { t: words(2) }, as('thrifty'));
      if (!r.errors) break;
      assert.ok(Date.now() - raised < 8000, 'the raised budget applied within 8 s');
      await sleep(200);
    }
    await setBudget(100);
    await sleep(2500);
    await settle();
    assert.equal(code(await servers[1]!.gql(EMBED, { t: words(2) }, as('thrifty'))), 'BUDGET_EXCEEDED');

    // December: a new period.
    now = DEC_1;
    for (const s of servers) {
      const r = await s.gql(EMBED, { t: words(2) }, as('thrifty'));
      assert.equal(r.errors, undefined, `served again in the next period: ${JSON.stringify(r.errors)}`);
    }
    await settle();
  });

  test('usageHistory and usage report agree with the database; access and input errors', async () => {
    await settle();
    const q =
      'query($f: String!, $t: String!, $g: UsageGranularity, $c: ID) { usageHistory(from: $f, to: $t, granularity: $g, clientId: $c) { granularity points { clientId start items cost } } }';
    type H = { usageHistory: { granularity: string; points: { clientId: string; start: string; items: number; cost: number }[] } };
    const own = await servers[0]!.gql<H>(q, { f: '2026-11-01', t: '2027-01-01', g: 'MONTH' }, as('thrifty'));
    assert.equal(own.errors, undefined, JSON.stringify(own.errors));
    const { rows } = await db.query<{ m: string; cost: string; items: string }>(
      "SELECT to_char(date_trunc('month', hour, 'UTC') AT TIME ZONE 'UTC', 'YYYY-MM') AS m, sum(cost)::text AS cost, sum(items)::text AS items FROM usage_hourly WHERE client_id = 'thrifty' GROUP BY 1 ORDER BY 1",
    );
    assert.deepEqual(
      own.data!.usageHistory.points.map((p) => [p.clientId, p.start.slice(0, 7), p.items, p.cost]),
      rows.map((r) => ['thrifty', r.m, Number(r.items), Number(r.cost)]),
    );
    assert.equal(own.data!.usageHistory.points.length, 2, 'November and December');

    const all = await servers[1]!.gql<H>(q, { f: '2026-11-30', t: '2026-12-02', g: 'HOUR' }, as('boss'));
    assert.deepEqual([...new Set(all.data!.usageHistory.points.map((p) => p.clientId))].sort(), ['neighbour', 'thrifty'], 'an admin sees every client');
    assert.equal(code(await servers[0]!.gql(q, { f: '2026-11-01', t: '2026-12-01', c: 'neighbour' }, as('thrifty'))), 'FORBIDDEN');

    const bad: [Record<string, unknown>, string][] = [
      [{ f: '2026-13-01', t: '2026-12-01' }, 'from'],
      [{ f: '2026-02-31', t: '2026-03-05' }, 'from'],
      [{ f: 'yesterday', t: '2026-12-01' }, 'from'],
      [{ f: '2026-12-01', t: '2026-11-01' }, 'from'],
      [{ f: '2000-01-01', t: '2026-12-01', g: 'HOUR' }, 'granularity'],
      [{ f: '2026-11-01', t: '2026-12-01', c: 'nobody' }, 'clientId'],
    ];
    for (const [vars, argument] of bad) {
      const r = await servers[0]!.gql(q, vars, as('boss'));
      assert.equal(code(r), 'BAD_USER_INPUT', `${JSON.stringify(vars)}: ${JSON.stringify(r.errors)}`);
      assert.equal(r.errors![0]!.extensions!['argument'], argument, JSON.stringify(vars));
    }

    const env = { POLYRAY_USAGE_DATABASE_URL: dbUrl, LOG_LEVEL: 'warn' };
    const csv = await polyrayCli(['usage', 'report', '--from', '2026-11-01', '--to', '2027-01-01', '--by', 'model', '--format', 'csv'], env);
    assert.equal(csv.code, 0, csv.err);
    const { rows: byModel } = await db.query<{ client_id: string; cost: string; items: string; tokens: string }>(
      "SELECT client_id, sum(items)::text AS items, sum(tokens)::text AS tokens, sum(cost)::text AS cost FROM usage_hourly WHERE hour >= '2026-11-01' AND hour < '2027-01-01' GROUP BY client_id ORDER BY client_id",
    );
    const lines = csv.out.trim().split('\n');
    assert.equal(lines[0], 'client,model,items,tokens,inferenceMs,cost');
    assert.deepEqual(
      lines.slice(1).map((l) => {
        const [c, m, items, tokens, , cost] = l.split(',');
        return [c, m, Number(items), Number(tokens), Number(cost)];
      }),
      byModel.map((r) => [r.client_id, 'text-glove', Number(r.items), Number(r.tokens), Number(r.cost)]),
    );
    const json = await polyrayCli(
      ['usage', 'report', '--from', '2026-12-01', '--to', '2026-12-02', '--client', 'thrifty', '--by', 'hour', '--format', 'json'],
      env,
    );
    assert.equal(json.code, 0, json.err);
    const report = JSON.parse(json.out) as { rows: { clientId: string; key: string; cost: number }[] };
    assert.deepEqual(
      report.rows.map((r) => [r.clientId, r.key]),
      [['thrifty', '2026-12-01T00:00:00Z']],
    );
    const table = await polyrayCli(['usage', 'report', '--from', '2026-11-01', '--to', '2027-01-01'], env);
    assert.match(table.out, /^client\s+day\s+items/);
    assert.match(table.out, /\ntotal\s/);

    for (const [args, pattern] of [
      [['--from', '2026-12-01', '--to', '2026-11-01'], /--from/],
      [['--from', 'soon', '--to', '2026-11-01'], /--from must be an ISO 8601 date/],
      [['--from', '1990-01-01', '--to', '2026-11-01'], /--from must be/],
      [['--from', '2020-01-01', '--to', '2026-11-01'], /at most 1100/],
      [['--from', '2026-11-01', '--to', '2026-12-01', '--by', 'week'], /--by must be one of/],
      [['--from', '2026-11-01', '--to', '2026-12-01', '--format', 'xml'], /--format must be one of/],
      [['--from', '2026-11-01', '--to', '2026-12-01', '--client', 'nobody'], /unknown client/],
      [['--from', '2026-11-01'], /needs --from and --to/],
    ] as const) {
      const r = await polyrayCli(['usage', 'report', ...args], env);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.err, pattern, args.join(' '));
    }
    const noDb = await polyrayCli(['usage', 'report', '--from', '2026-11-01', '--to', '2026-12-01'], { LOG_LEVEL: 'warn', POLYRAY_USAGE_DATABASE_URL: '' });
    assert.match(noDb.err, /POLYRAY_USAGE_DATABASE_URL/);
  });

  test('the dashboard draws cost over time from the database: last 24 h by hour, last 30 days by day', async () => {
    await settle();
    const res = await fetch(`${servers[0]!.url}/dashboard/data.json`, { headers: as('boss') });
    assert.equal(res.status, 200);
    const d = (await res.json()) as {
      history: { last24h: { client: string; start: string; cost: number }[]; last30d: { client: string; start: string; cost: number }[] };
    };
    const byDay = await db.query<{ client_id: string; d: string; cost: string }>(
      "SELECT client_id, to_char(date_trunc('day', hour, 'UTC') AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS d, sum(cost)::text AS cost FROM usage_hourly GROUP BY 1, 2 ORDER BY 1, 2",
    );
    assert.deepEqual(
      d.history.last30d.map((p) => [p.client, p.start.slice(0, 10), p.cost]),
      byDay.rows.map((r) => [r.client_id, r.d, Number(r.cost)]),
    );
    // The fake clock stands at 2026-12-01 00:00:01: the last 24 h hold November 30th 22:00 and December 1st 00:00.
    assert.deepEqual([...new Set(d.history.last24h.map((p) => p.start))].sort(), ['2026-11-30T22:00:00Z', '2026-12-01T00:00:00Z']);
    if (!existsSync('/usr/bin/chromium')) return;
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
    });
    try {
      const page = await browser.newPage();
      await page.goto(`${servers[0]!.url}/dashboard?key=${encodeURIComponent(keys['boss']!)}&refresh=0`);
      await page.waitForSelector('body[data-ready="true"]', { timeout: 20_000 });
      const points = () =>
        page.evaluate(() => {
          const c = (window as unknown as { __polyray: { charts: Record<string, { data: { labels: string[]; datasets: { label: string }[] } }> } }).__polyray
            .charts['chart-history']!;
          return { labels: c.data.labels, clients: c.data.datasets.map((x) => x.label).sort() };
        });
      assert.deepEqual(await points(), { labels: ['22:00', '00:00'], clients: ['neighbour', 'thrifty'] });
      await page.click('#history-30d');
      assert.deepEqual((await points()).labels, ['11-30', '12-01']);
      assert.equal(await page.isVisible('#history-none'), false);
    } finally {
      await browser.close();
    }
  });

  test('a connection ended between two queries of a delivery (the database shutting down) does not end the process; the batch is delivered later', async () => {
    const url = await pgServer.createDatabase('dropped');
    await migrateUsageDatabase(url, silentLogger());
    const pool = new pg.Pool({ connectionString: url });
    const admin = new pg.Pool({ connectionString: url });
    // The first delivery's connection is terminated right after its BEGIN, while no query runs, as a database
    // shutdown ends it: the client hears of it as an 'error' event, which nobody listening for would be an
    // uncaught exception.
    let drop = true;
    const connect = pool.connect.bind(pool) as (...args: unknown[]) => unknown;
    (pool as unknown as { connect: (...args: unknown[]) => unknown }).connect = (...args: unknown[]) => {
      if (args.length > 0) return connect(...args);
      return (connect() as Promise<pg.PoolClient>).then((c) => {
        if (!drop) return c;
        drop = false;
        const query = c.query.bind(c) as (...q: unknown[]) => Promise<unknown>;
        (c as unknown as { query: (...q: unknown[]) => Promise<unknown> }).query = async (...q: unknown[]) => {
          const r = await query(...q);
          if (q[0] === 'BEGIN') {
            await admin.query('SELECT pg_terminate_backend($1)', [(c as unknown as { processID: number }).processID]);
            await new Promise((resolve) => setTimeout(resolve, 200));
          }
          return r;
        };
        return c;
      });
    };
    const books = new UsageBooks(booksOptions(pool, 'polyray-test-dropped:'));
    try {
      books.record('c1', 'text-glove', 'COMPUTED', 'graphql', { items: 2, tokens: 20, inferenceMs: 1, cost: 20 });
      await books.delivered();
      assert.equal(drop, false, 'the connection was dropped');
      assert.equal(books.deliveries.added, 0, 'not delivered through the dropped connection');
      await books.delivered();
      assert.equal(books.deliveries.added, 1, 'delivered on the next flush');
      const { rows } = await admin.query<{ cost: string }>('SELECT sum(cost)::text AS cost FROM usage_hourly');
      assert.equal(Number(rows[0]!.cost), 20, 'counted once');
      await books.close();
    } finally {
      await Promise.all([pool.end(), admin.end()]);
    }
  });

  test('a batch found again in the outbox (its delete failed) is not added twice', async () => {
    const url = await pgServer.createDatabase('outbox');
    await migrateUsageDatabase(url, silentLogger());
    const pool = new pg.Pool({ connectionString: url });
    const client = new Redis(redis.url);
    const prefix = 'polyray-test-outbox:';
    const k = new AccountingKeys(prefix);
    const makeOptions = () => booksOptions(pool, prefix, client);
    const make = () => new UsageBooks(makeOptions());
    try {
      const owner = make();
      owner.record('c1', 'text-glove', 'COMPUTED', 'graphql', { items: 3, tokens: 30, inferenceMs: 1, cost: 30 });
      await owner.delivered();
      assert.equal(await client.hlen(k.usageOutbox), 0, 'delivered and removed from the outbox');
      // The owner's delete "failed" and the owner died: the entry is back, the owner's liveness key gone.
      await client.hset(
        k.usageOutbox,
        `${owner.replica}:1`,
        JSON.stringify({ replica: owner.replica, seq: 1, rows: (await pool.query('SELECT body FROM usage_batches')).rows[0].body }),
      );
      await client.del(k.usageAlive(owner.replica));
      const other = make();
      await other.delivered();
      assert.equal(other.deliveries.duplicate, 1, 'found already added');
      assert.equal(other.deliveries.orphans, 0);
      assert.equal(await client.hlen(k.usageOutbox), 0, 'and removed');
      const { rows } = await pool.query<{ cost: string; items: string }>('SELECT sum(cost)::text AS cost, sum(items)::text AS items FROM usage_hourly');
      assert.deepEqual([Number(rows[0]!.cost), Number(rows[0]!.items)], [30, 3], 'counted once');
      await owner.close();
      await other.close();

      // A live replica whose delete failed (or whose outbox write raced the delivery) finds its own entry
      // on a later scan and removes it: it would otherwise stay for as long as the replica lives.
      let clock = 1_000_000;
      const alive = new UsageBooks({ ...makeOptions(), flushMs: 1000, clock: () => clock });
      alive.record('c1', 'text-glove', 'COMPUTED', 'graphql', { items: 1, tokens: 10, inferenceMs: 1, cost: 10 });
      await alive.delivered();
      const body = (await pool.query('SELECT body FROM usage_batches WHERE replica = $1', [alive.replica])).rows[0].body;
      await client.hset(k.usageOutbox, `${alive.replica}:1`, JSON.stringify({ replica: alive.replica, seq: 1, rows: body }));
      clock += 6000;
      alive.record('c1', 'text-glove', 'COMPUTED', 'graphql', { items: 1, tokens: 10, inferenceMs: 1, cost: 10 });
      await alive.delivered();
      assert.equal(await client.hlen(k.usageOutbox), 0, "the replica's own stale entry was removed while it lives");
      assert.equal(alive.deliveries.duplicate, 1, 'and not added again');
      const { rows: after } = await pool.query<{ cost: string }>('SELECT sum(cost)::text AS cost FROM usage_hourly');
      assert.equal(Number(after[0]!.cost), 50, 'each batch counted once');
      await alive.close();
    } finally {
      client.disconnect();
      await pool.end();
    }
  });
});
