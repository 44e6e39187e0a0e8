/**
 * Unit tests of the shared Redis pieces (src/redis/) that need no server: the deadline helper, the health
 * gate's active probing (the cache tier's mode; the passive mode is tested in quota-bucket.test.ts), and
 * the client factory's validation. Against real servers: redis-cache, redis-faults, redis-cluster and the
 * accounting suites.
 */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createRedisClient } from '../src/redis/client.ts';
import { DeadlineExceeded, withDeadline } from '../src/redis/deadline.ts';
import { HealthGate } from '../src/redis/health.ts';
import { keySlot } from '../src/redis/slots.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('withDeadline', () => {
  test('settles like the call when it is in time; rejects with DeadlineExceeded naming what and the setting otherwise', async () => {
    assert.equal(await withDeadline(Promise.resolve(7), 50, { what: 'x' }), 7);
    await assert.rejects(withDeadline(Promise.reject(new Error('boom')), 50, { what: 'x' }), /boom/);
    const never = new Promise<never>(() => undefined);
    await assert.rejects(withDeadline(never, 5, { what: 'accounting Redis', option: 'POLYRAY_QUOTA_REDIS_TIMEOUT_MS' }), (e: unknown) => {
      assert.ok(e instanceof DeadlineExceeded);
      assert.equal(e.ms, 5);
      assert.equal(e.message, 'accounting Redis did not answer within 5 ms (POLYRAY_QUOTA_REDIS_TIMEOUT_MS)');
      return true;
    });
  });

  test('a stalled event loop is not a slow Redis: a reply that arrived during the stall wins; a silent call still times out', async () => {
    const busy = (ms: number): void => {
      const until = performance.now() + ms;
      while (performance.now() < until) {
        // a synchronous task holding the event loop
      }
    };
    // The reply is due at 30 ms, the deadline at 20 ms; the loop is stalled for 200 ms from the start.
    const reply = new Promise<string>((r) => setTimeout(() => r('answered'), 30));
    const bounded = withDeadline(reply, 20, { what: 'x' });
    busy(200);
    assert.equal(await bounded, 'answered');
    // An I/O reply read in the poll phase after the timer phase also wins (the verdict waits for setImmediate).
    const io = new Promise<string>((r) => {
      const t0 = performance.now();
      const poll = (): void => void (performance.now() - t0 > 25 ? r('io') : setImmediate(poll));
      poll();
    });
    assert.equal(await withDeadline(io, 40, { what: 'x' }), 'io');
    // Without a stall, silence is still a timeout, on time.
    const t0 = performance.now();
    await assert.rejects(withDeadline(new Promise<never>(() => undefined), 20, { what: 'x' }), DeadlineExceeded);
    assert.ok(performance.now() - t0 < 200);
  });

  test('no deadline: the call as it is', async () => {
    const p = Promise.resolve('same');
    assert.equal(withDeadline(p, undefined, { what: 'x' }), p);
  });
});

describe('HealthGate with active probing', () => {
  test('a down node is never admitted; the gate probes it on its backoff timer, one probe at a time, until one answers', async () => {
    let answers = false;
    let probes = 0;
    let inFlight = 0;
    let maxInFlight = 0;
    const events: string[] = [];
    const gate = new HealthGate({
      retryMs: 10,
      maxRetryMs: 20,
      probe: async () => {
        probes++;
        maxInFlight = Math.max(maxInFlight, ++inFlight);
        await sleep(2);
        inFlight--;
        return answers;
      },
      onTransition: (node, to) => events.push(`${node}:${to}`),
    });
    gate.failed(gate.admit('n')!, new Error('x'));
    assert.equal(gate.admit('n'), undefined);
    for (let i = 0; i < 200 && probes < 2; i++) await sleep(5);
    assert.ok(probes >= 2, `probed ${probes} times`);
    assert.equal(maxInFlight, 1);
    assert.equal(gate.isDown('n'), true);
    answers = true;
    for (let i = 0; i < 200 && gate.isDown('n'); i++) await sleep(5);
    assert.equal(gate.isDown('n'), false);
    assert.deepEqual(events, ['n:down', 'n:up']);
    gate.close();
  });

  test('wake probes at once; close stops probing for good', async () => {
    let probes = 0;
    const gate = new HealthGate({
      retryMs: 60_000,
      probe: async () => {
        probes++;
        return false;
      },
    });
    gate.markDown('n', new Error('connection lost'));
    assert.equal(gate.isDown('n'), true);
    gate.markDown('n', new Error('again')); // already down: nothing changes
    gate.wake('n');
    await sleep(5);
    assert.equal(probes, 1, 'woken, although the backoff is a minute');
    gate.close();
    gate.wake('n');
    await sleep(5);
    assert.equal(probes, 1);
  });
});

describe('createRedisClient', () => {
  test('invalid targets and options throw a TypeError naming the field and what arrived, never a password', () => {
    const cases: [Parameters<typeof createRedisClient>, RegExp][] = [
      [[{ url: 'http://h:1' }], /url.*"http:\/\/h:1"/],
      [[{ url: 'redis://u:s3cret@' }], /url.*\*\*\*@/],
      [[{ cluster: [] }], /cluster.*array of length 0/],
      [[{ cluster: [{ host: 'h', port: 0 }] }], /cluster\[0\]\.port.*0/],
      [[{ url: 'redis://h:1' }, { connectTimeoutMs: -1 }], /connectTimeoutMs.*-1/],
      [[{ url: 'redis://h:1' }, { commandTimeoutMs: Number.NaN }], /commandTimeoutMs.*NaN/],
    ];
    for (const [args, re] of cases) {
      assert.throws(
        () => createRedisClient(...args),
        (e: unknown) => e instanceof TypeError && re.test(e.message) && !/s3cret/.test(e.message),
        String(re),
      );
    }
  });

  test('a lazy client touches no network until connect()', () => {
    const client = createRedisClient({ url: 'redis://127.0.0.1:1' }, { lazyConnect: true, commandTimeoutMs: 100 });
    assert.equal(client.status, 'wait');
    client.disconnect();
  });
});

test('keySlot: hash tags put keys in one slot (the accounting layout relies on it)', () => {
  assert.equal(keySlot('p:{client:a}:bucket'), keySlot('p:{client:a}:usage'));
  assert.equal(keySlot('123456789'), 0x31c3 & 0x3fff, 'CRC16/XMODEM check value');
});
