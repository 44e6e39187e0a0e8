/**
 * Shutdown in the right order (issue 28), on a replica in a child process sent SIGTERM with a backlog: work
 * still queued when POLYRAY_SHUTDOWN_GRACE_MS runs out is dropped and answered (SHUTTING_DOWN, not charged),
 * and the books are flushed before the process exits — every response delivered is booked exactly once,
 * nothing undelivered is billed. The books are read back from the shared Redis by another replica.
 * The backlog is held by a long batch timer (`POLYRAY_BATCH_MAX_WAIT_US`), so it is certainly queued.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { addClient } from '../src/accounting/clients.ts';
import { startChildServer } from './helpers/child-server.ts';
import { FAULTS_LONG, recordFigures } from './helpers/faults.ts';
import { startPolyray } from './helpers/polyray.ts';

describe('SIGTERM with a backlog', () => {
  const prefix = `polyray:test:shutdown:${randomBytes(6).toString('hex')}:`;
  let dir: string;
  let file: string;
  let key: string;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-shutdown-'));
    file = path.join(dir, 'clients.json');
    key = (await addClient(file, { id: 'app', rate: 1e6, burst: 1e9 })).key;
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('queued work past the grace period is answered and not billed; what was delivered is booked once', async () => {
    const child = await startChildServer({
      NODE_ENV: 'production',
      POLYRAY_CLIENTS_FILE: file,
      POLYRAY_QUOTA_REDIS_URL: 'redis://127.0.0.1:6379',
      POLYRAY_QUOTA_KEY_PREFIX: prefix,
      POLYRAY_LEDGER_FLUSH_MS: '60000',
      POLYRAY_SERVE_MODELS: 'text-glove',
      POLYRAY_BATCH_MAX_WAIT_US: '4000000',
      POLYRAY_SHUTDOWN_GRACE_MS: '800',
      POLYRAY_REQUEST_TIMEOUT_MS: '0',
    });
    const post = (input: string) =>
      fetch(`${child.url}/v1/embeddings`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body: JSON.stringify({ model: 'text-glove', input, encoding_format: 'float' }),
      }).then(
        async (r) => ({ status: r.status, body: (await r.json()) as { error?: { code: string } } }),
        (e: unknown) => ({ status: 0, body: { error: { code: String((e as Error).message) } } }),
      );
    // Delivered before the signal (after the 4 s batch timer); the ledger flush is a minute away, so only
    // the shutdown flush can book it.
    const delivered = await post('delivered before the signal');
    assert.equal(delivered.status, 200);
    // A backlog the batch timer holds for 4 s: still queued when the 800 ms grace period ends.
    const backlog = ['one', 'two', 'three'].map((w) => post(`queued ${w} at shutdown`));
    await sleep(300);
    const started = performance.now();
    child.process.kill('SIGTERM');
    const answers = await Promise.all(backlog);
    const exited = child.process.exitCode !== null ? Promise.resolve() : new Promise((r) => child.process.once('exit', r));
    await exited;
    const took = performance.now() - started;
    for (const a of answers) {
      assert.equal(a.status, 503, JSON.stringify(a));
      assert.equal(a.body.error?.code, 'shutting_down');
    }
    assert.ok(took < 5000, `exited ${took.toFixed(0)} ms after SIGTERM (grace 800 ms)`);
    const exitMs = Math.round(took);
    assert.equal(child.process.exitCode, 0, 'a clean exit');

    // The books, from another replica on the same Redis: the one delivered item, nothing of the dropped ones.
    const reader = await startPolyray({
      accounting: { clientsFile: file, redis: { kind: 'standalone', url: 'redis://127.0.0.1:6379' }, keyPrefix: prefix },
    });
    try {
      const r = await reader.gql<{ usage: { totals: { items: number; tokens: number }; fleetWide: boolean } }>(
        '{ usage { totals { items tokens } fleetWide } }',
        {},
        { authorization: `Bearer ${key}` },
      );
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
      assert.equal(r.data!.usage.fleetWide, true);
      assert.equal(r.data!.usage.totals.items, 1, 'booked once: the delivered item, not the dropped ones');
      assert.ok(r.data!.usage.totals.tokens > 0);
      await recordFigures('sigterm', {
        graceMs: 800,
        exitMsAfterSigterm: exitMs,
        queuedAtSignal: 3,
        answeredShuttingDown: 3,
        deliveredBefore: 1,
        booked: r.data!.usage.totals.items,
      });
    } finally {
      await reader.stop();
    }
  });
});

describe('SIGKILL under load', () => {
  const prefix = `polyray:test:sigkill:${randomBytes(6).toString('hex')}:`;
  let dir: string;
  let file: string;
  let key: string;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-sigkill-'));
    file = path.join(dir, 'clients.json');
    key = (await addClient(file, { id: 'app', rate: 1e6, burst: 1e9 })).key;
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  // 3 s of load in `npm test`; 30 s in the fault suite, where the loss is measured against a longer run.
  const RUN_MS = FAULTS_LONG ? 30_000 : 3000;
  test('lost usage is at most what was delivered in the last flush interval (200 ms)', { timeout: RUN_MS + 120_000 }, async () => {
    const child = await startChildServer({
      NODE_ENV: 'production',
      POLYRAY_CLIENTS_FILE: file,
      POLYRAY_QUOTA_REDIS_URL: 'redis://127.0.0.1:6379',
      POLYRAY_QUOTA_KEY_PREFIX: prefix,
      POLYRAY_SERVE_MODELS: 'text-glove',
    });
    const delivered: number[] = [];
    let inFlight = 0;
    let stop = false;
    let n = 0;
    const client = async (): Promise<void> => {
      while (!stop) {
        inFlight++;
        try {
          const r = await fetch(`${child.url}/v1/embeddings`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
            body: JSON.stringify({ model: 'text-glove', input: `text number ${n++ % 500} of the run` }),
          });
          await r.arrayBuffer();
          if (r.status === 200) delivered.push(performance.now());
        } catch {
          // killed mid-request
        } finally {
          inFlight--;
        }
      }
    };
    const clients = Array.from({ length: 8 }, () => client());
    await sleep(RUN_MS);
    const inFlightAtKill = inFlight;
    const killedAt = performance.now();
    child.process.kill('SIGKILL');
    stop = true;
    await Promise.all(clients);
    const before = delivered.filter((t) => t <= killedAt).length;
    const lastWindow = delivered.filter((t) => t > killedAt - 400 && t <= killedAt).length;

    const reader = await startPolyray({
      accounting: { clientsFile: file, redis: { kind: 'standalone', url: 'redis://127.0.0.1:6379' }, keyPrefix: prefix },
    });
    try {
      const r = await reader.gql<{ usage: { totals: { items: number } } }>('{ usage { totals { items } } }', {}, { authorization: `Bearer ${key}` });
      const booked = r.data!.usage.totals.items;
      const lost = before - booked;
      process.stdout.write(
        `# SIGKILL after ${before} delivered items: ${booked} booked, ${lost} lost (${((100 * Math.max(0, lost)) / before).toFixed(2)} %), ${lastWindow} delivered in the last 400 ms\n`,
      );
      await recordFigures('sigkill', {
        runS: RUN_MS / 1000,
        flushMs: 200,
        delivered: before,
        booked,
        lost,
        lostPercent: Math.round((10_000 * Math.max(0, lost)) / before) / 100,
        deliveredInLast400Ms: lastWindow,
      });
      assert.ok(before > 200, `enough load (${before} items)`);
      assert.ok(lost <= lastWindow, `lost ${lost} > ${lastWindow} delivered in the last 400 ms`);
      assert.ok(booked <= before + inFlightAtKill, 'nothing booked beyond what was delivered or in flight');
    } finally {
      await reader.stop();
    }
  });
});
