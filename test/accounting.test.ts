/**
 * Clients, quotas and cost attribution end to end: two real Polyray replicas (real ONNX Runtime, real
 * HTTP) sharing the local Redis under a key prefix of their own.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { addClient } from '../src/accounting/clients.ts';
import type { Figures } from '../src/accounting/ledger.ts';
import { normaliseText } from '../src/cache/keys.ts';
import { code, costOf, words } from './helpers/accounting.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';
import { loadConfig } from '../src/config/index.ts';

const EMBED = `query($model: String!, $inputs: [EmbedInput!]!) { embed(model: $model, inputs: $inputs) { source } }`;
type EmbedData = { embed: { source: string }[] };

const USAGE = `query($id: ID) { usage(clientId: $id) {
  clientId name role fleetWide
  rows { model source items tokens inferenceMs cost }
  totals { items tokens inferenceMs cost }
  quota { rate burst remaining resetMs store }
} }`;
type UsageData = {
  usage: {
    clientId: string;
    name: string;
    role: string;
    fleetWide: boolean;
    rows: ({ model: string; source: string } & Figures)[];
    totals: Figures;
    quota: { rate: number; burst: number; remaining: number; resetMs: number; store: string };
  };
};

describe('clients, quotas and cost attribution across two replicas', () => {
  const prefix = `polyray:test:acct:${randomBytes(6).toString('hex')}:`;
  let dir: string;
  let a: TestServer;
  let b: TestServer;
  const keys: Record<string, string> = {};
  const auth = (id: string): Record<string, string> => ({ authorization: `Bearer ${keys[id]}` });

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-clients-'));
    const file = path.join(dir, 'clients.json');
    for (const spec of [
      { id: 'admin', name: 'Operators', role: 'admin' as const, rate: 1e6, burst: 1e9 },
      { id: 'alice', name: 'Alice', models: ['text-glove'], rate: 50, burst: 400 },
      { id: 'bob', name: 'Bob', models: ['some-other-model'] },
      { id: 'carol', name: 'Carol', rate: 1e6, burst: 1e8 },
      { id: 'dave', name: 'Dave', rate: 1e6, burst: 1e8 },
      { id: 'erin', name: 'Erin', rate: 1, burst: 100 },
    ]) {
      keys[spec.id] = (await addClient(file, spec)).key;
    }
    const overrides = {
      accounting: { clientsFile: file, redis: { kind: 'standalone' as const, url: 'redis://127.0.0.1:6379' }, keyPrefix: prefix, ledgerFlushMs: 200 },
      batching: { maxWaitUs: 3000 },
      // Small loader batches, so that one operation spans several embedMany calls.
      limits: { maxInputsPerRequest: 4 },
    };
    [a, b] = await Promise.all([startPolyray(overrides), startPolyray(overrides)]);
  });

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    const redis = new Redis('redis://127.0.0.1:6379');
    const found = await redis.keys(`${prefix}*`);
    if (found.length) await redis.del(...found);
    await redis.quit();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const work = (t: TestServer) => {
    const batcher = t.server.host.tokenQueue('text-glove')!.stats();
    return {
      calls: t.server.text.stats().calls,
      lookups: t.server.text.stats().cacheLookups,
      batched: batcher.items,
      queued: batcher.queued,
      runs: t.server.pool.stats().runs,
    };
  };
  const tokensOf = (t: TestServer, text: string): number => t.server.host.registry.get('text-glove')!.tokenizer.encode(normaliseText(text)).ids.length;

  test('a missing, malformed or wrong key is UNAUTHENTICATED (HTTP 401); Bearer and x-api-key both work', async () => {
    const none = await a.gql('{ models { name } }');
    assert.equal(none.status, 401);
    assert.equal(code(none), 'UNAUTHENTICATED');
    assert.equal(none.data, undefined);
    const wrong = await a.gql('{ models { name } }', {}, { authorization: `Bearer prk_alice_${randomBytes(32).toString('base64url')}` });
    assert.equal(wrong.status, 401);
    assert.equal(code(wrong), 'UNAUTHENTICATED');
    assert.doesNotMatch(JSON.stringify(wrong), /prk_/, 'the key is never echoed');
    const otherClients = await a.gql('{ models { name } }', {}, { authorization: `Bearer ${keys['alice']!.replace('prk_alice_', 'prk_carol_')}` });
    assert.equal(code(otherClients), 'UNAUTHENTICATED', "alice's secret is not carol's");
    assert.equal(code(await a.gql('{ models { name } }', {}, { authorization: 'Bearer nonsense' })), 'UNAUTHENTICATED');
    assert.equal(code(await a.gql('{ models { name } }', {}, { authorization: `Basic ${keys['alice']}` })), 'UNAUTHENTICATED');
    const bearer = await a.gql<{ models: { name: string }[] }>('{ models { name } }', {}, auth('alice'));
    assert.equal(bearer.errors, undefined);
    assert.equal(bearer.status, 200);
    const header = await a.gql<{ models: { name: string }[] }>('{ models { name } }', {}, { 'x-api-key': keys['alice']! });
    assert.equal(header.errors, undefined);
    const c = costOf(header);
    assert.equal(c.estimated, 0);
    assert.equal(c.charged, 0);
    assert.ok(c.remaining > 0 && c.remaining <= 400);
  });

  test('a model the client may not use is FORBIDDEN and nothing is computed', async () => {
    const before = work(a);
    const r = await a.gql(EMBED, { model: 'text-glove', inputs: [{ text: words(5) }] }, auth('bob'));
    assert.equal(code(r), 'FORBIDDEN');
    assert.equal(costOf(r).charged, 0);
    assert.deepEqual(work(a), before);
    // A model that does not exist is still MODEL_NOT_FOUND, whoever asks.
    assert.equal(code(await a.gql(EMBED, { model: 'nope', inputs: [{ text: 'x' }] }, auth('bob'))), 'MODEL_NOT_FOUND');
  });

  test('two replicas enforce one quota per client; over quota is QUOTA_EXCEEDED with a usable retryAfterMs and no work', async () => {
    // alice: 50 units/s, burst 400. text-glove costFactor 1. Estimate = min(512, length + 2) per input.
    const first = words(150); // 150 tokens, 299 characters: estimate 301
    const t0 = performance.now();
    const r1 = await a.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: first }] }, auth('alice'));
    assert.equal(r1.errors, undefined);
    const c1 = costOf(r1);
    assert.equal(c1.estimated, 301);
    assert.equal(c1.charged, tokensOf(a, first));
    assert.equal(c1.charged, 150);
    const refill = (50 * (performance.now() - t0)) / 1000;
    assert.ok(c1.remaining >= 250 && c1.remaining <= 250 + refill + 1e-6, `remaining ${c1.remaining}`);

    // On the other replica: estimate 325 > what is left of the shared bucket (≈ 250; it takes 1.5 s to
    // refill the difference). A replica-local bucket would be full (400) and admit it.
    const second = words(162);
    const before = work(b);
    const r2 = await b.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: second }] }, auth('alice'));
    assert.equal(code(r2), 'QUOTA_EXCEEDED');
    const retryAfterMs = r2.errors![0]!.extensions!['retryAfterMs'] as number;
    assert.ok(Number.isInteger(retryAfterMs) && retryAfterMs > 0 && retryAfterMs <= 1500, `retryAfterMs ${retryAfterMs}`);
    assert.equal(r2.errors![0]!.extensions!['estimated'], 325);
    const c2 = costOf(r2);
    assert.equal(c2.estimated, 325);
    assert.equal(c2.charged, 0);
    assert.deepEqual(work(b), before, 'the refused operation did no work: no service call, cache read, batch or run');

    await new Promise((r) => setTimeout(r, retryAfterMs));
    const r3 = await b.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: second }] }, auth('alice'));
    assert.equal(r3.errors, undefined, JSON.stringify(r3.errors));
    assert.equal(r3.data!.embed[0]!.source, 'COMPUTED');
    assert.equal(costOf(r3).charged, 162);
  });

  test('an operation whose worst case exceeds the burst is refused outright (no retry can help)', async () => {
    const before = work(a);
    const r = await a.gql(EMBED, { model: 'text-glove', inputs: [{ text: words(250) }] }, auth('alice'));
    assert.equal(code(r), 'QUOTA_EXCEEDED');
    assert.equal(r.errors![0]!.extensions!['retryAfterMs'], undefined);
    assert.match(r.errors![0]!.message, /burst/);
    assert.deepEqual(work(a), before);
  });

  test('an operation spanning several loader batches is priced and admitted or refused as a whole', async () => {
    // erin: burst 100. Ten posts of 20 characters: 22 units each, 4 + 4 + 2 per embedMany (maxBatchSize
    // 4). The first batch alone (88) would fit; the operation (220) does not, so none of it runs.
    const ENTITIES = `query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { id embedding(model: "text-glove") { source } } } }`;
    const posts = (n: number, len: number) =>
      Array.from({ length: n }, (_, i) => ({ __typename: 'Post', id: String(i), text: words((len + 1) / 2), imageUrls: [] }));
    const before = work(a);
    const big = await a.gql(ENTITIES, { r: posts(10, 19) }, auth('erin'));
    assert.equal(code(big), 'QUOTA_EXCEEDED');
    assert.equal(big.errors!.length, 10);
    assert.ok(big.errors!.every((e) => e.extensions?.['code'] === 'QUOTA_EXCEEDED' && e.extensions?.['estimated'] === 210));
    assert.equal(costOf(big).estimated, 210);
    assert.deepEqual(work(a), before, 'no batch of the refused operation ran');
    const fits = await a.gql<{ _entities: { embedding: { source: string } }[] }>(ENTITIES, { r: posts(9, 7) }, auth('erin'));
    assert.equal(fits.errors, undefined, JSON.stringify(fits.errors));
    assert.equal(fits.data!._entities.length, 9);
    assert.equal(costOf(fits).estimated, 81);
    assert.equal(work(a).calls, before.calls + 3, 'three embedMany calls, one reservation');
  });

  test('cost units follow the formula: computed tokens × costFactor, memory hits 0.01 each', async () => {
    const costFactor = a.server.host.registry.get('text-glove')!.manifest.costFactor;
    const texts = ['The cat sat on the mat.', words(7), `${words(3)}, ${words(4)}!`];
    const tokens = texts.map((t) => tokensOf(a, t));
    const r1 = await a.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: texts.map((text) => ({ text })) }, auth('carol'));
    const sources = r1.data!.embed.map((e) => e.source);
    const expected = sources.reduce((s, src, i) => s + (src === 'COMPUTED' ? tokens[i]! * costFactor : src === 'MEMORY' ? 0.01 : 0.05), 0);
    assert.ok(Math.abs(costOf(r1).charged - expected) < 1e-6);
    assert.equal(
      costOf(r1).estimated,
      texts.reduce((s, t) => s + Math.min(512, t.length + 2) * costFactor, 0),
    );
    const extra = words(9);
    const r2 = await a.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [...texts, extra].map((text) => ({ text })) }, auth('carol'));
    assert.deepEqual(
      r2.data!.embed.map((e) => e.source),
      ['MEMORY', 'MEMORY', 'MEMORY', 'COMPUTED'],
    );
    assert.ok(Math.abs(costOf(r2).charged - (3 * 0.01 + 9 * costFactor)) < 1e-6, String(costOf(r2).charged));
  });

  test('under concurrent mixed-client load, attributed inference ms add up to the measured total and costs match the formula', async () => {
    const clients = ['admin', 'carol', 'dave'] as const;
    const snapshot = () => ({
      runMs: a.server.pool.stats().runMsTotal + b.server.pool.stats().runMsTotal,
      batches: [a, b].reduce((s, t) => s + t.server.host.tokenQueue('text-glove')!.stats().batches, 0),
      batched: [a, b].reduce((s, t) => s + t.server.host.tokenQueue('text-glove')!.stats().items, 0),
      books: Object.fromEntries(clients.map((c) => [c, [a.server.accounting.ledger.local(c), b.server.accounting.ledger.local(c)]])),
    });
    const s0 = snapshot();
    const shared = Array.from({ length: 12 }, () => words(3 + Math.floor(Math.random() * 40)));
    const charged: Record<string, number> = { admin: 0, carol: 0, dave: 0 };
    const requests = Array.from({ length: 36 }, (_, i) => {
      const client = clients[i % 3]!;
      const server = i % 2 === 0 ? a : b;
      // Overlapping inputs: some shared across clients (joins, memory hits), some the client's own.
      const inputs = [shared[i % 12]!, shared[(i * 5) % 12]!, words(2 + ((i * 7) % 30)), words(1 + (i % 5))].map((text) => ({ text }));
      return server.gql<EmbedData>(EMBED, { model: 'text-glove', inputs }, auth(client)).then((r) => {
        assert.equal(r.errors, undefined, JSON.stringify(r.errors));
        charged[client]! += costOf(r).charged;
      });
    });
    await Promise.all(requests);
    const s1 = snapshot();
    const measured = s1.runMs - s0.runMs;
    assert.ok(measured > 0);
    assert.ok(s1.batched - s0.batched > s1.batches - s0.batches, 'items of concurrent requests shared batches');
    let attributed = 0;
    for (const c of clients) {
      let clientCost = 0;
      for (const i of [0, 1]) {
        const before = s0.books[c]![i]!;
        const after = s1.books[c]![i]!;
        attributed += after.totals.inferenceMs - before.totals.inferenceMs;
        clientCost += after.totals.cost - before.totals.cost;
        for (const row of after.rows) {
          const expected = row.source === 'COMPUTED' ? row.tokens * 1 : row.items * (row.source === 'MEMORY' ? 0.01 : 0.05);
          assert.ok(Math.abs(row.cost - expected) < 1e-6, `${c} ${row.source}: cost ${row.cost}, formula ${expected}`);
        }
      }
      assert.ok(Math.abs(clientCost - charged[c]!) < 1e-4, `${c}: ledger ${clientCost} vs responses ${charged[c]}`);
    }
    assert.ok(Math.abs(attributed - measured) < 1e-6 * Math.max(1, measured), `attributed ${attributed} ms vs measured ${measured} ms`);
  });

  test('reloadModels is admin-only', async () => {
    const r = await a.gql('mutation { reloadModels { added } }', {}, auth('alice'));
    assert.equal(code(r), 'FORBIDDEN');
  });

  test('usage: own figures fleet-wide; another client’s is FORBIDDEN unless admin; usageAll is admin-only', async () => {
    const own = await b.gql<UsageData>(USAGE, {}, auth('alice'));
    assert.equal(own.errors, undefined, JSON.stringify(own.errors));
    const u = own.data!.usage;
    assert.equal(u.clientId, 'alice');
    assert.equal(u.role, 'CLIENT');
    assert.equal(u.fleetWide, true);
    assert.deepEqual({ rate: u.quota.rate, burst: u.quota.burst, store: u.quota.store }, { rate: 50, burst: 400, store: 'REDIS' });
    assert.ok(costOf(own));

    const forbidden = await a.gql<UsageData>(USAGE, { id: 'carol' }, auth('alice'));
    assert.equal(code(forbidden), 'FORBIDDEN');
    assert.equal(forbidden.data, null);
    assert.equal(code(await a.gql('{ usageAll { clientId } }', {}, auth('alice'))), 'FORBIDDEN');

    // Both replicas served alice; the books in Redis (flushed every 200 ms) + unflushed deltas add up to
    // the sum of the two replicas' local ledgers.
    const expected = [a, b].reduce((s, t) => s + t.server.accounting.ledger.local('alice').totals.cost, 0);
    assert.ok(expected > 0);
    // A reads Redis plus its own unflushed deltas; B's reach Redis on B's next flush (every 200 ms here).
    // Flush B now rather than race its timer.
    await b.server.accounting.ledger.flush();
    const viaAdmin = await a.gql<UsageData>(USAGE, { id: 'alice' }, auth('admin'));
    assert.equal(viaAdmin.errors, undefined);
    assert.ok(Math.abs(viaAdmin.data!.usage.totals.cost - expected) < 1e-4, `${viaAdmin.data!.usage.totals.cost} vs ${expected}`);
    const computed = viaAdmin.data!.usage.rows.find((r) => r.source === 'COMPUTED')!;
    assert.equal(computed.model, 'text-glove');
    assert.equal(computed.tokens, 150 + 162);

    const all = await b.gql<{ usageAll: { clientId: string; totals: Figures }[] }>('{ usageAll { clientId totals { items cost } } }', {}, auth('admin'));
    assert.equal(all.errors, undefined);
    const ids = all.data!.usageAll.map((x) => x.clientId);
    for (const id of ['admin', 'alice', 'bob', 'carol', 'dave']) assert.ok(ids.includes(id), id);
    assert.equal(code(await a.gql(USAGE, { id: 'nobody' }, auth('admin'))), 'BAD_USER_INPUT');
    // Without a usage database there is no history by time: a clear code, not an empty answer.
    const history = await a.gql('{ usageHistory(from: "2026-11-01", to: "2026-12-01") { points { cost } } }', {}, auth('alice'));
    assert.equal(code(history), 'HISTORY_UNAVAILABLE');
    assert.match(history.errors![0]!.message, /POLYRAY_USAGE_DATABASE_URL/);
  });

  test('the ledger is flushed to Redis periodically as HINCRBYFLOAT fields', async () => {
    const redis = new Redis('redis://127.0.0.1:6379');
    try {
      const deadline = Date.now() + 3000;
      let hash: Record<string, string> = {};
      const local = a.server.accounting.ledger.local('dave').totals.items + b.server.accounting.ledger.local('dave').totals.items;
      while (Date.now() < deadline) {
        hash = await redis.hgetall(`${prefix}{client:dave}:usage`);
        const items = Object.entries(hash)
          .filter(([k]) => k.endsWith('|items'))
          .reduce((s, [, v]) => s + Number(v), 0);
        if (items === local) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(
        Object.keys(hash).some((k) => /^text-glove\|(MEMORY|GLOBAL|COMPUTED)\|inferenceMs$/.test(k)),
        JSON.stringify(Object.keys(hash)),
      );
      assert.ok(await redis.sismember(`${prefix}usage:clients`, 'dave'));
    } finally {
      await redis.quit();
    }
  });

  test('/metrics takes an admin key (a client key is FORBIDDEN, none is UNAUTHENTICATED)', async () => {
    assert.equal((await fetch(`${a.url}/metrics`)).status, 401);
    assert.equal((await fetch(`${a.url}/metrics`, { headers: auth('alice') })).status, 403);
    assert.equal((await fetch(`${a.url}/metrics`, { headers: auth('admin') })).status, 200);
  });

  test('/metrics exposes the series on a per-server registry, client-labelled', async () => {
    const res = await fetch(`${a.url}/metrics`, { headers: auth('admin') });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    const text = await res.text();
    for (const series of [
      /polyray_requests_total\{client="alice",code="OK",surface="graphql"\} \d+/,
      /polyray_requests_total\{client="alice",code="QUOTA_EXCEEDED",surface="graphql"\} \d+/,
      /polyray_items_total\{client="carol",model="text-glove",source="COMPUTED",surface="graphql"\} \d+/,
      /polyray_cache_hits_total\{client="carol",model="text-glove",tier="memory"\} \d+/,
      /polyray_tokens_computed_total\{client="dave",model="text-glove"\} \d+/,
      /polyray_batch_size_bucket\{le="\d+",model="text-glove"\} \d+/,
      /polyray_queue_depth\{model="text-glove"\} 0/,
      /polyray_inference_batch_seconds_count\{model="text-glove"\} \d+/,
      /polyray_inference_seconds_total\{client="admin",model="text-glove"\} [\d.e+-]+/,
      /polyray_cost_units_total\{client="alice",model="text-glove",source="COMPUTED",surface="graphql"\} \d+/,
      /polyray_quota_rejections_total\{client="alice"\} \d+/,
      /polyray_auth_failures_total \d+/,
      /polyray_quota_store\{store="redis"\} 1/,
      /polyray_batch_tokens_total\{model="text-glove",kind="real"\} [1-9]\d*/,
      /polyray_batch_tokens_total\{model="text-glove",kind="padded"\} [1-9]\d*/,
    ]) {
      assert.match(text, series);
    }
    const labels = new Set([...text.matchAll(/client="([^"]*)"/g)].map((m) => m[1]));
    for (const l of labels) assert.ok(['admin', 'alice', 'bob', 'carol', 'dave', 'erin', 'other'].includes(l!), l);
    // Separate registries: replica B's counters are its own.
    const textB = await (await fetch(`${b.url}/metrics`, { headers: auth('admin') })).text();
    assert.notEqual(/polyray_auth_failures_total (\d+)/.exec(textB)?.[1], /polyray_auth_failures_total (\d+)/.exec(text)?.[1]);
  });
});

describe('/metrics with a bearer token', () => {
  test('refuses scrapes without the token, in constant-time comparison, and serves the right one', async () => {
    const token = 'metrics-token-0123456789abcdef';
    const t = await startPolyray({ accounting: { metricsToken: token } });
    try {
      const get = (authorization?: string): Promise<Response> => fetch(`${t.url}/metrics`, authorization ? { headers: { authorization } } : {});
      for (const bad of [undefined, `Bearer ${token.slice(0, -1)}`, `Bearer ${token}x`, token, `Basic ${token}`]) {
        const res = await get(bad);
        assert.equal(res.status, 401, String(bad));
        assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer/);
        assert.equal(((await res.json()) as { error: string }).error, 'UNAUTHENTICATED');
      }
      const ok = await get(`Bearer ${token}`);
      assert.equal(ok.status, 200);
      assert.match(await ok.text(), /polyray_requests_total|polyray_queue_depth/);
      // Health endpoints stay open for load balancers.
      assert.equal((await fetch(`${t.url}/healthz`)).status, 200);
    } finally {
      await t.stop();
    }
  });

  test('a short token is a configuration error', () => {
    assert.throws(() => loadConfig({ POLYRAY_METRICS_TOKEN: 'short' }, {}), /POLYRAY_METRICS_TOKEN must be at least 16 characters/);
  });
});
