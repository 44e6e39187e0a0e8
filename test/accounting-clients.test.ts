/**
 * Clients file, API keys, the `clients` CLI, the development default, accounting config and metric
 * labels — everything of accounting that needs no model and no Redis.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { Accounting } from '../src/accounting/index.ts';
import { clientsCommand } from '../src/accounting/cli.ts';
import { ClientDirectory, DEV_CLIENT, addClient, hashKey, parseClientsFile, readClientsFileSync } from '../src/accounting/clients.ts';
import { AccountingMetrics, MAX_CLIENT_LABELS } from '../src/accounting/metrics.ts';
import { CostModel } from '../src/accounting/cost.ts';
import { loadConfig } from '../src/config/index.ts';
import { isPolyrayError } from '../src/errors.ts';

const unauthenticated = (e: unknown): boolean => isPolyrayError(e) && e.code === 'UNAUTHENTICATED';

describe('clients and keys', () => {
  let dir: string;
  let file: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-clients-unit-'));
    file = path.join(dir, 'sub', 'clients.json');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('keys look like prk_<id>_<secret>, are stored only as SHA-256, and authenticate by Bearer or x-api-key', async () => {
    const { key, client, created } = await addClient(file, { id: 'search', name: 'Search', models: ['text-glove'], rate: 10, burst: 100 });
    assert.equal(created, true);
    assert.match(key, /^prk_search_[A-Za-z0-9_-]{43}$/);
    const raw = await readFile(file, 'utf8');
    assert.doesNotMatch(raw, new RegExp(key.slice(11)), 'the secret is not in the file');
    assert.match(raw, new RegExp(hashKey(key)));
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.deepEqual(client.quota, { rate: 10, burst: 100 });
    const dirx = new ClientDirectory(readClientsFileSync(file).clients);
    assert.equal(dirx.authenticate({ authorization: `Bearer ${key}` }).id, 'search');
    assert.equal(dirx.authenticate({ authorization: `bearer   ${key}` }).id, 'search');
    assert.equal(dirx.authenticate({ 'x-api-key': key }).id, 'search');
    assert.throws(() => dirx.authenticate({}), unauthenticated);
    assert.throws(() => dirx.authenticate({ authorization: `Bearer ${key}x` }), unauthenticated);
    assert.throws(() => dirx.authenticate({ authorization: `Bearer ${key.replace('prk_search_', 'prk_nobody_')}` }), unauthenticated);
    assert.throws(() => dirx.authenticate({ authorization: key }), unauthenticated);
  });

  test('adding to an existing client updates it and adds a key; --replace-keys revokes the old ones', async () => {
    const first = await addClient(file, { id: 'ops', role: 'admin' });
    const second = await addClient(file, { id: 'ops', name: 'Operations', rate: 5 });
    assert.equal(second.created, false);
    let d = new ClientDirectory(readClientsFileSync(file).clients);
    assert.equal(d.authenticate({ 'x-api-key': first.key }).name, 'Operations');
    assert.equal(d.authenticate({ 'x-api-key': second.key }).role, 'admin');
    const third = await addClient(file, { id: 'ops', replaceKeys: true });
    d = new ClientDirectory(readClientsFileSync(file).clients);
    assert.throws(() => d.authenticate({ 'x-api-key': first.key }), unauthenticated);
    assert.equal(d.authenticate({ 'x-api-key': third.key }).quota.rate, 5);
    assert.equal(d.list().length, 2);
  });

  test('invalid clients files are refused with a message naming the entry', () => {
    assert.throws(() => parseClientsFile({}, 'f.json'), /"clients" array/);
    assert.throws(() => parseClientsFile({ clients: [{ id: 'Bad_Id' }] }, 'f.json'), /clients\[0\]\.id/);
    assert.throws(() => parseClientsFile({ clients: [{ id: 'other' }] }, 'f.json'), /clients\[0\]\.id/);
    assert.throws(() => parseClientsFile({ clients: [{ id: 'a' }, { id: 'a' }] }, 'f.json'), /appears twice/);
    assert.throws(() => parseClientsFile({ clients: [{ id: 'a', quota: { rate: 0, burst: 1 } }] }, 'f.json'), /quota\.rate/);
    assert.throws(() => parseClientsFile({ clients: [{ id: 'a', role: 'root' }] }, 'f.json'), /role/);
    assert.throws(() => parseClientsFile({ clients: [{ id: 'a', keys: [{ sha256: 'nothex' }] }] }, 'f.json'), /sha256/);
    const ok = parseClientsFile({ clients: [{ id: 'a' }] }, 'f.json').clients[0]!;
    assert.deepEqual({ role: ok.role, models: ok.models }, { role: 'client', models: '*' });
  });

  test('CLI: `clients add` prints the key once on stdout, `clients list` never shows keys', async () => {
    const out: string[] = [];
    const err: string[] = [];
    const io = { out: (s: string) => void out.push(s), err: (s: string) => void err.push(s) };
    const f = path.join(dir, 'cli.json');
    assert.equal(
      await clientsCommand(
        'add',
        ['--id', 'cli', '--name', 'CLI client', '--role', 'admin', '--models', 'text-glove,other-model', '--rate', '7', '--burst', '70'],
        f,
        io,
      ),
      0,
    );
    assert.equal(out.length, 1);
    const key = out[0]!.trim();
    assert.match(key, /^prk_cli_/);
    assert.doesNotMatch(err.join(''), /prk_/);
    const c = readClientsFileSync(f).clients[0]!;
    assert.deepEqual(
      { role: c.role, models: c.models, quota: c.quota, name: c.name },
      { role: 'admin', models: ['text-glove', 'other-model'], quota: { rate: 7, burst: 70 }, name: 'CLI client' },
    );
    out.length = 0;
    assert.equal(await clientsCommand('list', [], f, io), 0);
    assert.doesNotMatch(out.join(''), /prk_|sha256/);
    assert.match(out.join(''), /"id":"cli"/);
    assert.equal(await clientsCommand('add', ['--id', 'x'], undefined, io), 2, 'no file configured');
    await assert.rejects(clientsCommand('add', ['--id', 'x', '--rate', '-1'], f, io), /--rate/);
    await assert.rejects(clientsCommand('add', ['--id', 'X!'], f, io), /--id/);
  });
});

describe('accounting without Redis', () => {
  const lines: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) });

  test('no clients file: one local development client, announced at start-up; no key needed', async () => {
    const config = loadConfig({}).accounting;
    assert.equal(config.clientsFile, undefined);
    const acct = new Accounting({ config, logger });
    await acct.start();
    try {
      assert.ok(lines.some((l) => l.level === 40 && /local development client/.test(l.msg)));
      const account = acct.authenticate({});
      assert.equal(account.client.id, DEV_CLIENT.id);
      assert.equal(account.client.role, 'admin');
      assert.equal(account.client.models, '*');
      const cost = await account.finish();
      assert.deepEqual({ estimated: cost.estimated, charged: cost.charged }, { estimated: 0, charged: 0 });
      assert.equal(cost.remaining, DEV_CLIENT.quota.burst);
      const usage = await account.usage();
      assert.deepEqual(
        { id: usage.clientId, role: usage.role, fleetWide: usage.fleetWide, store: usage.quota?.store },
        { id: 'local-dev', role: 'ADMIN', fleetWide: false, store: 'LOCAL' },
      );
    } finally {
      await acct.close();
    }
  });

  test('an invalid clients file stops start-up; a changed file is reloaded while serving', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'polyray-clients-reload-'));
    try {
      const bad = path.join(dir, 'bad.json');
      await writeFile(bad, '{ "clients": [ { "id": "" } ] }');
      const broken = new Accounting({ config: loadConfig({ POLYRAY_CLIENTS_FILE: bad }).accounting, logger });
      await assert.rejects(broken.start(), /bad\.json.*clients\[0\]\.id/);
      await broken.close();

      const file = path.join(dir, 'clients.json');
      const { key: k1 } = await addClient(file, { id: 'one' });
      const acct = new Accounting({ config: loadConfig({ POLYRAY_CLIENTS_FILE: file }).accounting, logger, clientsPollMs: 20 });
      await acct.start();
      try {
        assert.equal(acct.authenticate({ authorization: `Bearer ${k1}` }).client.id, 'one');
        assert.throws(
          () => acct.authenticate({}),
          (e: unknown) => (e as { extensions?: Record<string, unknown> }).extensions?.['code'] === 'UNAUTHENTICATED',
        );
        const { key: k2 } = await addClient(file, { id: 'two' });
        const deadline = Date.now() + 3000;
        while (!acct.directory().get('two') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        assert.equal(acct.authenticate({ authorization: `Bearer ${k2}` }).client.id, 'two');
        assert.equal(acct.metrics.clientLabel('two'), 'two');
      } finally {
        await acct.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('metric client labels: configured clients only (capped), everything else "other"', () => {
    const m = new AccountingMetrics(new Map());
    m.setClients(Array.from({ length: MAX_CLIENT_LABELS + 5 }, (_, i) => `c${i}`));
    assert.equal(m.clientLabel('c0'), 'c0');
    assert.equal(m.clientLabel(`c${MAX_CLIENT_LABELS - 1}`), `c${MAX_CLIENT_LABELS - 1}`);
    assert.equal(m.clientLabel(`c${MAX_CLIENT_LABELS}`), 'other');
    assert.equal(m.clientLabel('stranger'), 'other');
    assert.equal(m.clientLabel(undefined), 'other');
    assert.equal(m.codeLabel('QUOTA_EXCEEDED'), 'QUOTA_EXCEEDED');
    assert.equal(m.codeLabel('SOMETHING_NEW'), 'OTHER');
  });

  test('the cost estimate bounds every item from above', () => {
    const cm = new CostModel({ memoryHitCost: 0.01, globalHitCost: 0.05 });
    const model = { costFactor: 2, maxTokens: 512 };
    assert.equal(cm.estimate(model, ['abc', '']), (3 + 2) * 2 + 2 * 2);
    assert.equal(cm.estimate(model, ['x'.repeat(5000)]), 512 * 2);
    assert.equal(cm.estimate({ costFactor: 0.001, maxTokens: 512 }, ['a']), 0.05, 'never below the price of a hit');
    assert.equal(cm.itemCost(model, 'COMPUTED', 7), 14);
    assert.equal(cm.itemCost(model, 'MEMORY', 0), 0.01);
    assert.equal(cm.itemCost(model, 'GLOBAL', 0), 0.05);
  });
});

describe('accounting configuration', () => {
  test('defaults, and POLYRAY_QUOTA_REDIS_URL before REDIS_URL', () => {
    const d = loadConfig({}).accounting;
    assert.deepEqual(
      {
        redis: d.redis,
        keyPrefix: d.keyPrefix,
        failureMode: d.failureMode,
        replicas: d.replicas,
        allowAnonymous: d.allowAnonymous,
        memoryHitCost: d.memoryHitCost,
        globalHitCost: d.globalHitCost,
        ledgerFlushMs: d.ledgerFlushMs,
      },
      {
        redis: { kind: 'none' },
        keyPrefix: 'polyray:acct:v2:',
        failureMode: 'share',
        replicas: 2,
        allowAnonymous: false,
        memoryHitCost: 0.01,
        globalHitCost: 0.05,
        ledgerFlushMs: 200,
      },
    );
    const store = (env: Record<string, string>) => loadConfig(env).accounting.redis;
    assert.deepEqual(store({ POLYRAY_QUOTA_REDIS_URL: 'redis://q:6379' }), { kind: 'standalone', url: 'redis://q:6379' });
    assert.deepEqual(store({ REDIS_URL: 'redis://c:6379', POLYRAY_QUOTA_REDIS_URL: 'redis://q:6379' }), { kind: 'standalone', url: 'redis://q:6379' });
    assert.deepEqual(store({ REDIS_URL: 'redis://c:6379' }), { kind: 'standalone', url: 'redis://c:6379' });
  });

  test('quota store precedence: quota URL, quota Cluster nodes, then the cache’s REDIS_URL or REDIS_CLUSTER_NODES', () => {
    const store = (env: Record<string, string>) => loadConfig(env).accounting.redis;
    const cache = [
      { host: 'c1', port: 7000 },
      { host: 'c2', port: 7001 },
    ];
    assert.deepEqual(store({ REDIS_CLUSTER_NODES: 'c1:7000,c2:7001' }), { kind: 'cluster', nodes: cache }, 'follows the cache onto its Cluster');
    assert.deepEqual(store({ REDIS_CLUSTER_NODES: 'c1:7000', POLYRAY_QUOTA_REDIS_URL: 'redis://q:6379' }), { kind: 'standalone', url: 'redis://q:6379' });
    assert.deepEqual(store({ REDIS_URL: 'redis://c:6379', POLYRAY_QUOTA_REDIS_CLUSTER_NODES: 'q1:7000, [::1]:7001' }), {
      kind: 'cluster',
      nodes: [
        { host: 'q1', port: 7000 },
        { host: '::1', port: 7001 },
      ],
    });
    assert.deepEqual(store({ REDIS_CLUSTER_NODES: 'c1:7000', POLYRAY_QUOTA_REDIS_CLUSTER_NODES: 'q1:7000' }), {
      kind: 'cluster',
      nodes: [{ host: 'q1', port: 7000 }],
    });
    assert.throws(
      () => store({ POLYRAY_QUOTA_REDIS_URL: 'redis://q:6379', POLYRAY_QUOTA_REDIS_CLUSTER_NODES: 'q1:7000' }),
      /both POLYRAY_QUOTA_REDIS_URL and POLYRAY_QUOTA_REDIS_CLUSTER_NODES/,
    );
    assert.throws(
      () => store({ POLYRAY_QUOTA_REDIS_CLUSTER_NODES: 'q1' }),
      /POLYRAY_QUOTA_REDIS_CLUSTER_NODES entries must look like host:port, received "q1"/,
    );
    assert.throws(() => loadConfig({ POLYRAY_QUOTA_KEY_PREFIX: 'x{}:' }), /POLYRAY_QUOTA_KEY_PREFIX must not contain an empty hash tag/);
    assert.equal(loadConfig({ POLYRAY_QUOTA_KEY_PREFIX: '{acct}:' }).accounting.keyPrefix, '{acct}:');
  });

  test('cost and failure-mode settings, validation', () => {
    assert.equal(loadConfig({ POLYRAY_COST_MEMORY_HIT: '0.5', POLYRAY_QUOTA_FAILURE_MODE: 'closed' }).accounting.memoryHitCost, 0.5);
    assert.throws(() => loadConfig({ POLYRAY_QUOTA_FAILURE_MODE: 'sometimes' }), /POLYRAY_QUOTA_FAILURE_MODE/);
    assert.throws(() => loadConfig({ POLYRAY_COST_GLOBAL_HIT: '-1' }), /POLYRAY_COST_GLOBAL_HIT/);
    assert.throws(() => loadConfig({ POLYRAY_QUOTA_REDIS_URL: 'http://x' }), /POLYRAY_QUOTA_REDIS_URL/);
    assert.match(loadConfig({ POLYRAY_CLIENTS_FILE: 'rel/clients.json' }).accounting.clientsFile!, /^\/.*rel\/clients\.json$/);
  });
});
