/**
 * Unit tests of single-flight (src/cache/single-flight.ts): concurrent callers of one key share one
 * computation, and a key is forgotten as soon as its computation settles, so a failure is never kept.
 */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { SingleFlight } from '../src/cache/single-flight.ts';

/** A promise the test settles by hand. */
function deferred<V>() {
  let resolve!: (v: V) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<V>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** The way callers use it: join the computation in flight, or start one. */
function load<V>(flight: SingleFlight<V>, key: string, compute: () => Promise<V>): Promise<V> {
  return flight.get(key) ?? flight.set(key, compute());
}

describe('SingleFlight', () => {
  test('concurrent callers of one key share one computation and its value', async () => {
    const flight = new SingleFlight<number>();
    const d = deferred<number>();
    let computes = 0;
    const compute = () => {
      computes++;
      return d.promise;
    };
    const a = load(flight, 'k', compute);
    const b = load(flight, 'k', compute);
    assert.equal(a, b, 'the same promise');
    assert.equal(computes, 1);
    assert.equal(flight.size, 1);
    d.resolve(7);
    assert.deepEqual(await Promise.all([a, b]), [7, 7]);
  });

  test('different keys do not share', async () => {
    const flight = new SingleFlight<string>();
    const a = load(flight, 'a', async () => 'A');
    const b = load(flight, 'b', async () => 'B');
    assert.equal(flight.size, 2);
    assert.deepEqual(await Promise.all([a, b]), ['A', 'B']);
  });

  test('a key is forgotten once its computation resolves: the next caller computes again', async () => {
    const flight = new SingleFlight<number>();
    let computes = 0;
    assert.equal(await load(flight, 'k', async () => ++computes), 1);
    assert.equal(flight.get('k'), undefined);
    assert.equal(flight.size, 0);
    assert.equal(await load(flight, 'k', async () => ++computes), 2);
  });

  test('a failed key is forgotten: every joined caller gets the error, and the next caller computes afresh', async () => {
    const flight = new SingleFlight<number>();
    const d = deferred<number>();
    const a = load(flight, 'k', () => d.promise);
    const b = load(flight, 'k', () => assert.fail('joined callers do not compute'));
    const boom = new Error('inference failed');
    d.reject(boom);
    const rs = await Promise.allSettled([a, b]);
    assert.ok(rs.every((r) => r.status === 'rejected' && r.reason === boom));
    assert.equal(flight.get('k'), undefined, 'no poisoned entry');
    assert.equal(await load(flight, 'k', async () => 8), 8);
  });

  test('an older computation settling does not remove a newer one for the same key', async () => {
    const flight = new SingleFlight<number>();
    const old = deferred<number>();
    const newer = deferred<number>();
    flight.set('k', old.promise);
    const p = flight.set('k', newer.promise);
    old.resolve(1);
    await old.promise;
    await Promise.resolve();
    assert.equal(flight.get('k'), p);
    newer.resolve(2);
    assert.equal(await p, 2);
    await Promise.resolve();
    assert.equal(flight.size, 0);
  });

  test('property: any mix of concurrent loads computes once per distinct key, and the table empties', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.constantFrom('a', 'b', 'c', 'd'), { minLength: 1, maxLength: 30 }), fc.boolean(), async (keys, fail) => {
        const flight = new SingleFlight<string>();
        const computed: string[] = [];
        const ps = keys.map((k) =>
          load(flight, k, async () => {
            computed.push(k);
            if (fail) throw new Error(k);
            return k.toUpperCase();
          }),
        );
        const rs = await Promise.allSettled(ps);
        assert.deepEqual(computed.sort(), [...new Set(keys)].sort());
        for (const [i, r] of rs.entries())
          assert.deepEqual(r.status === 'fulfilled' ? r.value : (r.reason as Error).message, fail ? keys[i] : keys[i]!.toUpperCase());
        await Promise.resolve();
        assert.equal(flight.size, 0);
      }),
      { numRuns: 100 },
    );
  });
});
