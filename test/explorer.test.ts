/**
 * The offline explorer (issue 25): GraphiQL served by the process itself at `/graphiql`, every asset
 * local. In headless Chromium with every request that is not to this server blocked, it runs an `embed`
 * query and shows the result; the headers tab starts with the auth header ready; `/` links to it.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

const CHROMIUM = '/usr/bin/chromium';

describe('offline GraphiQL', () => {
  let t: TestServer;
  before(async () => {
    t = await startPolyray({ models: { serve: ['text-glove'] } } as never);
  });
  after(async () => {
    await t?.stop();
  });

  test('the landing page links the explorers; the assets are local and public', async () => {
    const landing = await (await fetch(`${t.url}/`)).text();
    assert.match(landing, /href="\/graphiql"/);
    assert.match(landing, /href="\/graphql"/);
    const page = await (await fetch(`${t.url}/graphiql`)).text();
    for (const src of page.matchAll(/(?:src|href)="([^"]+)"/g)) {
      assert.ok(src[1]!.startsWith('/graphiql/assets/'), `${src[1]} is served here`);
      assert.equal((await fetch(`${t.url}${src[1]}`)).status, 200, src[1]);
    }
    assert.equal((await fetch(`${t.url}/graphiql/assets/constructor`)).status, 404);
    assert.equal((await fetch(`${t.url}/graphiql/assets/..%2Fpackage.json`)).status, 404);
  });

  test('in Chromium with the network blocked, an embed query runs and its result shows', {
    skip: !existsSync(CHROMIUM) && `${CHROMIUM} is not installed`,
    timeout: 90_000,
  }, async () => {
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
      const blocked: string[] = [];
      const origin = new URL(t.url).origin;
      await page.route('**/*', (route) => {
        const url = route.request().url();
        if (url.startsWith(origin)) return route.continue();
        blocked.push(url);
        return route.abort();
      });
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      const query = '{ embed(model: "text-glove", inputs: [{ text: "offline explorer" }]) { model dimensions } }';
      await page.goto(`${t.url}/graphiql?query=${encodeURIComponent(query)}`);
      await page.waitForSelector('.graphiql-execute-button', { timeout: 30_000 });
      await page.click('.graphiql-execute-button');
      await page.waitForFunction(() => (document.querySelector('.result-window')?.textContent ?? '').includes('dimensions'), undefined, { timeout: 30_000 });
      const result = (await page.textContent('.result-window')) ?? '';
      assert.match(result, /"dimensions": 100/);
      assert.match(result, /text-glove@/);
      const headersTab = await page.evaluate(() => document.body.textContent ?? '');
      assert.match(headersTab, /authorization/);
      assert.deepEqual(errors, []);
      assert.deepEqual(blocked, [], 'no request left this server');
      if (process.env['POLYRAY_SCREENSHOT']) await page.screenshot({ path: process.env['POLYRAY_SCREENSHOT'] });
    } finally {
      await browser.close();
    }
  });
});
