/**
 * The dashboard: admin-only page and data (the same keys as GraphQL), and a headless Chromium that
 * loads the page from the service (Chart.js served from node_modules, no network), checks that every
 * chart drew data, and saves a screenshot to test-artifacts/dashboard.png.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { addClient } from '../src/accounting/clients.ts';
import type { DeepPartial, PolyrayConfig } from '../src/config/index.ts';
import type { DashboardData } from '../src/http/dashboard.ts';
import { zipfIds } from '../src/policy/synthetic.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

const CHROMIUM = '/usr/bin/chromium';
const EMBED = `query($inputs: [EmbedInput!]!) { embed(model: "text-glove", inputs: $inputs) { source } }`;
const SCREENSHOT = path.resolve('test-artifacts/dashboard.png');

describe('dashboard', () => {
  let dir: string;
  let s: TestServer;
  const keys: Record<string, string> = {};
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-dash-'));
    const clientsFile = path.join(dir, 'clients.json');
    for (const [id, role] of [
      ['ops', 'admin'],
      ['search', 'client'],
      ['feed', 'client'],
      ['ads', 'client'],
    ] as const) {
      keys[id] = (await addClient(clientsFile, { id, role })).key;
    }
    s = await startPolyray({
      models: { serve: ['text-glove'] },
      batching: { maxWaitUs: 0 },
      accounting: { clientsFile },
      cache: { memory: { maxBytes: 300 * 638, ttlMs: 60_000 } },
      trace: { sampleRate: 1 },
      policy: { seriesIntervalMs: 200, intervalMs: 3_600_000 },
    } as DeepPartial<PolyrayConfig>);
    // Three clients with different volumes and popularity, for ~2.5 s (a dozen hit-rate points).
    const ids = [...zipfIds({ n: 3000, s: 1.0, churn: 0.01, requests: 6000, seed: 2 })];
    const deadline = Date.now() + 2500;
    for (let i = 0; i < ids.length && Date.now() < deadline; i += 6) {
      const client = i % 5 < 3 ? 'search' : i % 5 < 4 ? 'feed' : 'ads';
      const inputs = [...new Set(ids.slice(i, i + 6))].map((id) => ({ text: `post ${id} ${client === 'ads' ? 'sale' : 'story'}` }));
      const r = await s.gql(EMBED, { inputs }, { 'x-api-key': keys[client]! });
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    }
    s.server.policy.sample();
    await s.server.policy.recompute();
  });
  after(async () => {
    await s?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('admin only: 401 without a key, 403 for a client, 200 for an admin (header or ?key=)', async () => {
    assert.equal((await fetch(`${s.url}/dashboard`)).status, 401);
    assert.equal((await fetch(`${s.url}/dashboard/data.json`, { headers: { 'x-api-key': 'prk_ops_wrongwrongwrongwrongwrongwrongwrongwrong' } })).status, 401);
    assert.equal((await fetch(`${s.url}/dashboard?key=${keys['search']}`)).status, 403);
    const page = await fetch(`${s.url}/dashboard?key=${keys['ops']}`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /chart\.umd\.min\.js/);
    const data = await fetch(`${s.url}/dashboard/data.json`, { headers: { authorization: `Bearer ${keys['ops']}` } });
    assert.equal(data.status, 200);
    const d = (await data.json()) as DashboardData;
    assert.deepEqual(new Set(d.usage.rows.map((r) => r.client)), new Set(['search', 'feed', 'ads']));
    assert.equal(d.usage.source, 'ledger');
    assert.equal(d.history, null, 'no usage database: no history by time');
    assert.ok(d.hitRates.length >= 3, `${d.hitRates.length} hit-rate points`);
    assert.ok(d.policy && d.policy.grid.length > 10);
    // Like for like: measured over the same window as the simulation; at rate 1 the sampled keys are all keys.
    const all = d.policy.measured.allKeys;
    assert.ok(all, 'all keys measured over the window');
    assert.equal(all.items, d.policy.measured.sampledKeys.items);
    assert.ok(Math.abs(all.memoryHitRate - d.policy.measured.sampledKeys.memoryHitRate) < 1e-9);
    assert.deepEqual(d.policy.models, ['text-glove']);
    assert.equal(d.policy.current.memoryHitRateError, 0, 'rate 1: no sampling error');
    // Assets hold no data and are public; Chart.js comes from node_modules.
    const lib = await fetch(`${s.url}/dashboard/assets/chart.umd.min.js`);
    assert.equal(lib.status, 200);
    assert.match(await lib.text(), /Chart/);
    assert.equal((await fetch(`${s.url}/dashboard/assets/..%2Fpackage.json`)).status, 404);
    // The same rule in GraphQL.
    const q = '{ cachePolicy { recommended { memoryBytes } } }';
    const denied = await s.gql(q, {}, { 'x-api-key': keys['feed']! });
    assert.equal(denied.errors?.[0]?.extensions?.['code'], 'FORBIDDEN');
    const allowed = await s.gql<{ cachePolicy: { recommended: { memoryBytes: number } } }>(q, {}, { 'x-api-key': keys['ops']! });
    assert.ok(allowed.data!.cachePolicy.recommended.memoryBytes > 0);
  });

  test('headless Chromium renders every chart with data; screenshot saved', {
    skip: !existsSync(CHROMIUM) && `${CHROMIUM} is not installed`,
    timeout: 60_000,
  }, async () => {
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
      const failed: string[] = [];
      page.on('requestfailed', (r) => failed.push(r.url()));
      page.on('pageerror', (e) => failed.push(e.message));
      await page.goto(`${s.url}/dashboard?key=${encodeURIComponent(keys['ops']!)}&refresh=0`);
      await page.waitForSelector('body[data-ready="true"]', { timeout: 20_000 });
      const charts = await page.evaluate(() => {
        const w = window as unknown as {
          __polyray: { charts: Record<string, { data: { datasets: { label?: string; data: unknown[] }[] }; canvas: HTMLCanvasElement }> };
        };
        return Object.fromEntries(
          Object.entries(w.__polyray.charts).map(([id, c]) => {
            const points = c.data.datasets.reduce((n, ds) => n + ds.data.filter((v) => v !== null && v !== undefined).length, 0);
            const ctx = c.canvas.getContext('2d')!;
            const px = ctx.getImageData(0, 0, c.canvas.width, c.canvas.height).data;
            let painted = 0;
            for (let i = 3; i < px.length; i += 4) if (px[i]! > 0) painted++;
            return [id, { points, painted, labels: c.data.datasets.map((d) => d.label ?? '') }];
          }),
        );
      });
      assert.deepEqual(Object.keys(charts).sort(), ['chart-cost', 'chart-hits', 'chart-items', 'chart-size', 'chart-ttl']);
      for (const [id, c] of Object.entries(charts)) {
        assert.ok(c.points > 0, `${id} has data points`);
        assert.ok(c.painted > 2000, `${id} painted ${c.painted} pixels`);
      }
      assert.ok(charts['chart-size']!.labels.includes('recommended') && charts['chart-size']!.labels.includes('current'), 'current and recommended are marked');
      assert.match((await page.textContent('#advice')) ?? '', /recommended/);
      assert.ok(await page.isVisible('#history-none'), 'the history card says it needs the usage database');
      assert.deepEqual(failed, []);
      await mkdir(path.dirname(SCREENSHOT), { recursive: true });
      await page.screenshot({ path: SCREENSHOT });
      assert.ok(existsSync(SCREENSHOT));
    } finally {
      await browser.close();
    }
  });
});
