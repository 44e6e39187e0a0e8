/**
 * Deadlines and callers who go away, through a real server: inputs still queued when the request's deadline
 * passes (`x-request-timeout-ms`) or when its HTTP connection closes are dropped before inference —
 * DEADLINE_EXCEEDED, nothing run, nothing charged, nothing cached. The queue is kept waiting by a long
 * batch timer (`maxWaitUs`), so the inputs are certainly still queued when the deadline or the abort comes.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { addClient } from '../src/accounting/clients.ts';
import type { Batcher } from '../src/runtime/batcher.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

describe('deadlines and aborted callers', () => {
  let dir: string;
  let t: TestServer;
  const keys: Record<string, string> = {};
  const expired = () => (t.server.host.queues.get('text-glove') as Batcher).stats().expired;
  const usage = async (id: string) =>
    (await t.gql<{ usage: { totals: { items: number; cost: number } } }>('{ usage { totals { items cost } } }', {}, { authorization: `Bearer ${keys[id]}` }))
      .data!.usage.totals;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-deadline-'));
    const file = path.join(dir, 'clients.json');
    for (const id of ['late', 'gone', 'patient']) keys[id] = (await addClient(file, { id, rate: 1e6, burst: 1e9 })).key;
    // A lone item waits 1.5 s for company before its batch goes.
    t = await startPolyray({ accounting: { clientsFile: file }, batching: { maxWaitUs: 1_500_000 } });
  });
  after(async () => {
    await t?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const post = (id: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${t.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${keys[id]}`, ...headers },
      body: JSON.stringify(body),
    });

  test('a deadline that passes in the queue: DEADLINE_EXCEEDED at once, not run, not charged', async () => {
    // Warm: the tokenizer thread loads the vocabulary on first use.
    assert.equal((await post('patient', { model: 'text-glove', input: 'warm up' })).status, 200);
    const before = expired();
    const started = performance.now();
    const res = await post('late', { model: 'text-glove', input: 'a text that waits too long' }, { 'x-request-timeout-ms': '150' });
    const waited = performance.now() - started;
    assert.equal(res.status, 504);
    const error = ((await res.json()) as { error: { code: string; message: string } }).error;
    assert.equal(error.code, 'deadline_exceeded');
    assert.match(error.message, /deadline passed .* nothing was run or charged/);
    assert.ok(waited < 1200, `answered at the deadline, not after the batch timer (${waited.toFixed(0)} ms)`);
    assert.equal(expired() - before, 1);
    assert.deepEqual(await usage('late'), { items: 0, cost: 0 });
    // GraphQL carries the code too.
    const r = await t.gql(
      '{ embed(model: "text-glove", inputs: [{ text: "another late one" }]) { vector } }',
      {},
      { authorization: `Bearer ${keys['late']}`, 'x-request-timeout-ms': '100' },
    );
    assert.equal(r.errors?.[0]?.extensions?.['code'], 'DEADLINE_EXCEEDED');
  });

  test('a caller that closes its connection: its queued inputs are dropped, never run, never charged, never cached', async () => {
    const before = expired();
    const text = 'a text whose caller hangs up';
    const body = JSON.stringify({ model: 'text-glove', input: text });
    const req = request(`${t.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${keys['gone']}`, 'content-length': Buffer.byteLength(body) },
    });
    req.on('error', () => undefined);
    req.end(body);
    await sleep(200);
    req.destroy();
    for (let i = 0; i < 50 && expired() === before; i++) await sleep(20);
    assert.equal(expired() - before, 1, 'dropped from the queue when the connection closed');
    assert.deepEqual(await usage('gone'), { items: 0, cost: 0 });
    // Nothing was stored: the next caller computes it (after the batch timer), and is charged for it.
    const patientBefore = (await usage('patient')).items;
    const res = await post('patient', { model: 'text-glove', input: text }, { 'x-request-timeout-ms': '10000' });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-polyray-cache-hits'), '0');
    assert.equal((await usage('patient')).items - patientBefore, 1);
  });
});
