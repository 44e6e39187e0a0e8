/**
 * Token bucket: property tests of the arithmetic (fast-check), equivalence of the Redis Lua script with
 * the reference `step`, EVALSHA → EVAL fallback, the quota manager's Redis-down fallback, and the
 * per-node store health (fake clock): one probe at a time, backoff, stale outcomes ignored.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { step, type BucketLimits, type BucketOp, type BucketState } from '../src/accounting/bucket.ts';
import { BUCKET_SCRIPT_SHA, RedisBuckets } from '../src/accounting/redis-bucket.ts';
import { QuotaManager } from '../src/accounting/quota.ts';
import { HealthGate, type Attempt } from '../src/redis/health.ts';
import { isPolyrayError } from '../src/errors.ts';
import { startRedisServer, type RedisServerHandle } from './helpers/redis-server.ts';

const limitsArb = fc.record({
  rate: fc.double({ min: 0.01, max: 1e6, noNaN: true }),
  burst: fc.double({ min: 0.01, max: 1e7, noNaN: true }),
});
const amountArb = fc.double({ min: 0, max: 2e7, noNaN: true });
const opArb: fc.Arbitrary<BucketOp> = fc.oneof(
  amountArb.map((amount) => ({ kind: 'take' as const, amount })),
  fc.double({ min: -2e7, max: 2e7, noNaN: true }).map((amount) => ({ kind: 'adjust' as const, amount })),
);
const dtArb = fc.integer({ min: 0, max: 100_000 });

function run(limits: BucketLimits, ops: { dt: number; op: BucketOp }[], t0 = 1_000_000) {
  let state: BucketState | undefined;
  let now = t0;
  const outcomes = [];
  for (const { dt, op } of ops) {
    now += dt;
    const r = step(state, now, limits, op);
    if (r.state) state = r.state;
    outcomes.push({ now, op, state, outcome: r.outcome });
  }
  return outcomes;
}

describe('token bucket arithmetic (property tests)', () => {
  test('the level never exceeds burst, and takes alone never push it below zero', () => {
    fc.assert(
      fc.property(limitsArb, fc.array(fc.record({ dt: dtArb, amount: amountArb }), { maxLength: 30 }), (limits, seq) => {
        for (const r of run(
          limits,
          seq.map(({ dt, amount }) => ({ dt, op: { kind: 'take', amount } })),
        )) {
          assert.ok(r.outcome.tokens <= limits.burst);
          assert.ok(r.outcome.tokens >= -1e-9 * Math.max(1, limits.burst));
        }
      }),
    );
  });

  test('what a fresh bucket admits over time T is at most burst + rate × T', () => {
    fc.assert(
      fc.property(limitsArb, fc.array(fc.record({ dt: dtArb, amount: amountArb }), { maxLength: 40 }), (limits, seq) => {
        const out = run(
          limits,
          seq.map(({ dt, amount }) => ({ dt, op: { kind: 'take', amount } })),
        );
        if (out.length === 0) return;
        const taken = out.filter((r) => r.outcome.allowed).reduce((s, r) => s + (r.op as { amount: number }).amount, 0);
        const span = out.at(-1)!.now - 1_000_000;
        const bound = limits.burst + (limits.rate * span) / 1000;
        assert.ok(taken <= bound * (1 + 1e-9) + 1e-6, `taken ${taken} > bound ${bound}`);
      }),
    );
  });

  test('a refused take changes nothing, and succeeds after retryAfterMs (or never, when above burst)', () => {
    fc.assert(
      fc.property(limitsArb, fc.array(fc.record({ dt: dtArb, op: opArb }), { maxLength: 20 }), amountArb, (limits, seq, amount) => {
        const out = run(limits, seq);
        const state = out.at(-1)?.state;
        const now = out.at(-1)?.now ?? 1_000_000;
        const r = step(state, now, limits, { kind: 'take', amount });
        if (r.outcome.allowed) return;
        assert.equal(r.state, undefined);
        if (amount > limits.burst) {
          assert.equal(r.outcome.retryAfterMs, -1);
          return;
        }
        assert.ok(r.outcome.retryAfterMs > 0);
        const later = step(state, now + r.outcome.retryAfterMs, limits, { kind: 'take', amount });
        assert.equal(later.outcome.allowed, true, `not allowed after ${r.outcome.retryAfterMs} ms`);
      }),
    );
  });

  test('reserve worst case then settle actual = taking actual (when nothing is capped)', () => {
    fc.assert(
      fc.property(limitsArb, fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true }), (limits, fw, fa) => {
        const worst = limits.burst * fw;
        const actual = worst * fa;
        const reserved = step(undefined, 0, limits, { kind: 'take', amount: worst });
        assert.equal(reserved.outcome.allowed, true);
        const settled = step(reserved.state, 0, limits, { kind: 'adjust', amount: actual - worst });
        const direct = step(undefined, 0, limits, { kind: 'take', amount: actual });
        assert.ok(Math.abs(settled.outcome.tokens - direct.outcome.tokens) <= 1e-9 * limits.burst);
      }),
    );
  });

  test('waiting never lowers the level; the bucket is full after resetMs', () => {
    fc.assert(
      fc.property(limitsArb, fc.array(fc.record({ dt: dtArb, op: opArb }), { maxLength: 20 }), dtArb, (limits, seq, wait) => {
        const out = run(limits, seq);
        const state = out.at(-1)?.state;
        const now = out.at(-1)?.now ?? 1_000_000;
        const a = step(state, now, limits, { kind: 'adjust', amount: 0 }).outcome;
        const b = step(state, now + wait, limits, { kind: 'adjust', amount: 0 }).outcome;
        assert.ok(b.tokens >= a.tokens);
        const full = step(state, now + a.resetMs, limits, { kind: 'adjust', amount: 0 }).outcome;
        assert.ok(full.tokens >= limits.burst * (1 - 1e-9));
      }),
    );
  });

  test('a clock step backwards refills nothing', () => {
    const limits = { rate: 10, burst: 100 };
    const a = step(undefined, 10_000, limits, { kind: 'take', amount: 60 });
    const b = step(a.state, 5_000, limits, { kind: 'adjust', amount: 0 });
    assert.equal(b.outcome.tokens, 40);
    const c = step(a.state, 11_000, limits, { kind: 'adjust', amount: 0 });
    assert.equal(c.outcome.tokens, 50);
  });
});

describe('Redis Lua script', () => {
  const prefix = `polyray:test:bucket:${randomBytes(6).toString('hex')}:`;
  let redis: Redis;
  before(() => {
    redis = new Redis('redis://127.0.0.1:6379', { lazyConnect: false });
  });
  after(async () => {
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length) await redis.del(...keys);
    await redis.quit();
  });

  test('agrees with the reference step on random operation sequences (explicit clock)', async () => {
    const buckets = new RedisBuckets(redis, prefix);
    let n = 0;
    await fc.assert(
      fc.asyncProperty(limitsArb, fc.array(fc.record({ dt: dtArb, op: opArb }), { minLength: 1, maxLength: 12 }), async (limits, seq) => {
        const id = `eq${n++}`;
        let state: BucketState | undefined;
        let now = 1_700_000_000_000;
        for (const { dt, op } of seq) {
          now += dt;
          const ref = step(state, now, limits, op);
          if (ref.state) state = ref.state;
          const got = await buckets.apply(id, limits, op, now);
          assert.equal(got.allowed, ref.outcome.allowed);
          assert.equal(got.retryAfterMs, ref.outcome.retryAfterMs);
          assert.equal(got.resetMs, ref.outcome.resetMs);
          assert.ok(Math.abs(got.tokens - ref.outcome.tokens) <= 1e-9 * Math.max(1, Math.abs(ref.outcome.tokens)), `${got.tokens} vs ${ref.outcome.tokens}`);
        }
      }),
      { numRuns: 30 },
    );
  });

  test('uses Redis TIME when no clock is passed: a refused take succeeds after retryAfterMs', async () => {
    const buckets = new RedisBuckets(redis, prefix);
    const limits = { rate: 100, burst: 50 };
    assert.equal((await buckets.apply('time', limits, { kind: 'take', amount: 50 })).allowed, true);
    const refused = await buckets.apply('time', limits, { kind: 'take', amount: 20 });
    assert.equal(refused.allowed, false);
    assert.ok(refused.retryAfterMs > 0 && refused.retryAfterMs <= 200, String(refused.retryAfterMs));
    const [, ts] = (await redis.hmget(buckets.key('time'), 'tokens', 'ts')) as [string, string];
    assert.ok(Math.abs(Number(ts) - Date.now()) < 5000, 'stored timestamp is Redis wall-clock milliseconds');
    await new Promise((r) => setTimeout(r, refused.retryAfterMs));
    assert.equal((await buckets.apply('time', limits, { kind: 'take', amount: 20 })).allowed, true);
    assert.ok((await redis.pttl(buckets.key('time'))) > 0, 'bucket keys expire once they would be full');
  });
});

describe('EVALSHA fallback and Redis outages (private redis-server)', () => {
  let server: RedisServerHandle;
  let redis: Redis;
  const lines: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) });
  before(async () => {
    server = await startRedisServer();
    redis = new Redis(server.url, { enableOfflineQueue: false, maxRetriesPerRequest: 1, commandTimeout: 200, retryStrategy: () => 50 });
    redis.on('error', () => undefined);
    await new Promise((r) => redis.once('ready', r));
  });
  after(async () => {
    redis.disconnect();
    await server.stop();
  });

  test('EVALSHA answered NOSCRIPT falls back to EVAL once, which loads the script', async () => {
    assert.deepEqual(await redis.script('EXISTS', BUCKET_SCRIPT_SHA), [0]);
    const buckets = new RedisBuckets(redis, 'p:');
    await buckets.apply('a', { rate: 1, burst: 10 }, { kind: 'take', amount: 1 });
    assert.equal(buckets.evalFallbacks, 1);
    await buckets.apply('a', { rate: 1, burst: 10 }, { kind: 'take', amount: 1 });
    assert.equal(buckets.evalFallbacks, 1);
    assert.deepEqual(await redis.script('EXISTS', BUCKET_SCRIPT_SHA), [1]);
  });

  test('Redis down: open falls back to per-replica buckets and logs it; closed refuses; recovery is logged', async () => {
    const limits = { rate: 0.001, burst: 10 };
    const buckets = new RedisBuckets(redis, 'q:');
    const open = new QuotaManager({ redis: buckets, failureMode: 'open', logger, retryMs: 50 });
    const closed = new QuotaManager({ redis: buckets, failureMode: 'closed', logger, retryMs: 50 });
    assert.equal((await open.reserve('c', limits, 8)).store, 'redis');
    await server.kill();
    const fallback = await open.reserve('c', limits, 8);
    assert.equal(fallback.store, 'local', 'a fresh local bucket admits what the Redis one could not');
    assert.equal(open.store, 'local');
    assert.ok(lines.some((l) => l.level === 40 && /falling back to per-replica/.test(l.msg)));
    await assert.rejects(
      closed.reserve('c', limits, 1),
      (e: unknown) =>
        isPolyrayError(e) &&
        e.code === 'QUOTA_EXCEEDED' &&
        e.extensions['reason'] === 'QUOTA_STORE_UNAVAILABLE' &&
        typeof e.extensions['retryAfterMs'] === 'number',
    );
    await server.restart();
    await new Promise<void>((resolve) => (redis.status === 'ready' ? resolve() : redis.once('ready', () => resolve())));
    await new Promise((r) => setTimeout(r, 60));
    // Redis restarted empty (no persistence): the bucket there is full again.
    const back = await open.reserve('c', limits, 8);
    assert.equal(back.store, 'redis');
    assert.ok(lines.some((l) => l.level === 30 && /reachable again/.test(l.msg)));
    await assert.rejects(
      open.reserve('c', limits, 8),
      (e: unknown) => isPolyrayError(e) && e.code === 'QUOTA_EXCEEDED' && (e.extensions['retryAfterMs'] as number) > 0,
    );
  });
});

describe('store health per node (fake clock)', () => {
  test('a failure takes one node down; probes come one at a time, backing off retryMs → maxRetryMs', () => {
    let now = 1_000;
    const events: string[] = [];
    const h = new HealthGate({ retryMs: 100, maxRetryMs: 350, now: () => now, onTransition: (n, to, d) => events.push(`${n}:${to}:${d.nodesDown}`) });
    const a = h.admit('A')!;
    const b = h.admit('B')!;
    assert.deepEqual([a.probe, b.probe], [false, false]);
    h.failed(a, new Error('boom'));
    assert.deepEqual(events, ['A:down:1']);
    assert.equal(h.isDown('A'), true);
    assert.equal(h.isDown('B'), false, 'the other node is untouched');
    h.succeeded(b);
    assert.ok(h.admit('B'), 'B is still used');
    assert.equal(h.admit('A'), undefined, 'A is left alone until retryMs has passed');
    assert.equal(h.retryInMs('A'), 100);
    // The probe schedule: 100 ms after the failure, then 200, 350 (capped), 350 ms after each failed probe.
    const waits: number[] = [];
    let last = now;
    for (let i = 0; i < 4; i++) {
      let p: Attempt | undefined = h.admit('A');
      while (!p) {
        now += 1;
        p = h.admit('A');
      }
      waits.push(now - last);
      assert.equal(p.probe, true);
      assert.equal(h.admit('A'), undefined, 'one probe at a time: the others fall back while it is out');
      now += 5;
      h.failed(p, new Error('still down'));
      last = now;
    }
    assert.deepEqual(waits, [100, 200, 350, 350], 'measured from each failure');
    assert.deepEqual(h.down(), ['A']);
    while (!h.admit('A')) now += 1;
    const probe = h.admit('A', { probe: false });
    assert.equal(probe, undefined, 'probe: false never calls a down node');
  });

  test('a probe answering brings the node back; outcomes of calls sent in an earlier state change nothing', () => {
    let now = 0;
    const h = new HealthGate({ retryMs: 10, maxRetryMs: 10, now: () => now });
    const early1 = h.admit('A')!;
    const early2 = h.admit('A')!;
    h.failed(early1, new Error('x'));
    h.failed(early2, new Error('x')); // a second failure of the same outage: no extra backoff
    now = 10;
    const probe = h.admit('A')!;
    assert.equal(probe.probe, true);
    h.succeeded(early2); // a stale success is not a probe's
    assert.equal(h.isDown('A'), true);
    h.succeeded(probe);
    assert.equal(h.isDown('A'), false);
    h.failed(early1, new Error('late')); // sent before the outage, answered after the recovery
    assert.equal(h.isDown('A'), false, 'a late failure from before the recovery does not take it down again');
    const fresh = h.admit('A')!;
    h.failed(fresh, new Error('down again'));
    assert.equal(h.isDown('A'), true);
  });

  test('down nodes that serve no slot any more are forgotten; an unknown topology forgets nothing', () => {
    const h = new HealthGate({ retryMs: 10 });
    h.failed(h.admit('old-master')!, new Error('x'));
    h.failed(h.admit('other')!, new Error('x'));
    assert.deepEqual(h.down(() => undefined).sort(), ['old-master', 'other']);
    assert.deepEqual(
      h.down(() => new Set(['other', 'promoted'])),
      ['other'],
    );
    assert.equal(h.isDown('old-master'), false);
    assert.throws(() => new HealthGate({ retryMs: 100, maxRetryMs: 50 }), /maxRetryMs must be >= retryMs \(100\), received 50/);
  });
});
