/**
 * RequestAccount (src/accounting/request.ts) as the request scope's `Account`: waves, reserve → settle,
 * attribution. In-process quota buckets and ledger (no Redis), fake pipeline calls: no ONNX Runtime.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Client } from '../src/accounting/clients.ts';
import { ClientDirectory } from '../src/accounting/clients.ts';
import { CostModel } from '../src/accounting/cost.ts';
import { Ledger } from '../src/accounting/ledger.ts';
import { AccountingMetrics } from '../src/accounting/metrics.ts';
import { QuotaManager } from '../src/accounting/quota.ts';
import { RequestAccount, type AccountingCore } from '../src/accounting/request.ts';
import { ErrorCode, PolyrayError } from '../src/errors.ts';
import { createLogger } from '../src/log.ts';
import type { TextHandle } from '../src/runtime/handle.ts';
import type { EmbedResult } from '../src/service/types.ts';

const logger = createLogger('silent');
const handle = { kind: 'text', name: 'm', version: '1', dimensions: 2, costFactor: 0.5, maxTokens: 100 } as TextHandle;

function core(): AccountingCore {
  return {
    quota: new QuotaManager({ failureMode: 'open', logger }),
    ledger: new Ledger({ keyPrefix: 'unit:', flushMs: 60_000, logger }),
    metrics: new AccountingMetrics(new Map()),
    costModel: new CostModel({ memoryHitCost: 0.01, globalHitCost: 0.05 }),
    logger,
    directory: () => new ClientDirectory('dev'),
    history: () => Promise.reject(new Error('no usage database in this test')),
    hasHistory: () => Promise.resolve(false),
  };
}

const client = (burst: number): Client => ({ id: 'c', name: 'C', role: 'client', models: ['m'], quota: { rate: 0.001, burst }, keys: [] });
const computed = (tokens: number): EmbedResult => ({ vector: new Float32Array(2), source: 'COMPUTED', model: 'm', version: '1', tokens, inferenceMs: 1 });
const hit: EmbedResult = { vector: new Float32Array(2), source: 'MEMORY', model: 'm', version: '1', tokens: 0, inferenceMs: 0 };

describe('RequestAccount', () => {
  test('calls of one tick are reserved together and settled at their actual cost', async () => {
    const c = core();
    const account = new RequestAccount(c, client(100));
    let runs = 0;
    const run = (r: EmbedResult[]) => async () => {
      runs++;
      return r;
    };
    // Estimates: (len + 2) × 0.5 → "abcd": 3, "xy": 2; actual: 2 tokens × 0.5 + one memory hit.
    const [a, b] = await Promise.all([
      account.admit(handle, { kind: 'texts', texts: ['abcd'] }, run([computed(2)])),
      account.admit(handle, { kind: 'texts', texts: ['xy'] }, run([hit])),
    ]);
    assert.equal(runs, 2);
    assert.equal((a[0] as EmbedResult).tokens, 2);
    assert.equal((b[0] as EmbedResult).source, 'MEMORY');
    const cost = await account.finish();
    assert.deepEqual({ estimated: cost.estimated, charged: cost.charged }, { estimated: 5, charged: 1.01 });
    assert.ok(Math.abs(cost.remaining - (100 - 1.01)) < 0.01, `the difference is refunded (remaining ${cost.remaining})`);
    const book = c.ledger.local('c');
    assert.deepEqual(
      book.rows.map((r) => [r.model, r.source, r.items, r.tokens]).sort((x, y) => String(x[1]).localeCompare(String(y[1]))),
      [
        ['m', 'COMPUTED', 1, 2],
        ['m', 'MEMORY', 1, 0],
      ],
    );
  });

  test('a wave the bucket cannot pay is refused as a whole and runs nothing', async () => {
    // Each call alone fits the burst of 4 (estimate 3); the wave (6) does not.
    const account = new RequestAccount(core(), client(4));
    let runs = 0;
    const run = async () => {
      runs++;
      return [computed(1)];
    };
    const results = await Promise.allSettled([
      account.admit(handle, { kind: 'texts', texts: ['abcd'] }, run),
      account.admit(handle, { kind: 'texts', texts: ['abcd'] }, run),
    ]);
    assert.equal(runs, 0);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.equal((r.reason as PolyrayError).code, ErrorCode.QUOTA_EXCEEDED);
    }
    assert.equal((await account.finish()).charged, 0);
  });

  test('a call that throws rejects only itself; the wave still settles and refunds', async () => {
    const account = new RequestAccount(core(), client(100));
    const [bad, good] = await Promise.allSettled([
      account.admit(handle, { kind: 'texts', texts: ['abcd'] }, async () => {
        throw new PolyrayError(ErrorCode.OVERLOADED, 'queue full');
      }),
      account.admit(handle, { kind: 'texts', texts: ['ab'] }, async () => [computed(4)]),
    ]);
    assert.equal(bad.status, 'rejected');
    assert.equal(good.status, 'fulfilled');
    const cost = await account.finish();
    assert.deepEqual({ estimated: cost.estimated, charged: cost.charged }, { estimated: 5, charged: 2 });
    assert.ok(Math.abs(cost.remaining - 98) < 0.01, `remaining ${cost.remaining}`);
  });

  test('per-item errors cost nothing', async () => {
    const account = new RequestAccount(core(), client(100));
    await account.admit(handle, { kind: 'texts', texts: ['x', 'y'] }, async () => [new PolyrayError(ErrorCode.INPUT_TOO_LARGE, 'too large'), computed(2)]);
    assert.equal((await account.finish()).charged, 1);
  });
});
