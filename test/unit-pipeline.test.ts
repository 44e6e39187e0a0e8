/**
 * CachedInference (src/service/pipeline.ts) with a fake adapter and in-process cache tiers: no ONNX
 * Runtime, no workers, no sleeps. The adapter's computations are promises the test settles by hand.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import type { Cache, CacheEntry } from '../src/cache/cache.ts';
import { emptyStats } from '../src/cache/cache.ts';
import { MemoryCache } from '../src/cache/memory.ts';
import { TieredCache } from '../src/cache/tiered.ts';
import { ErrorCode, PolyrayError } from '../src/errors.ts';
import { createLogger } from '../src/log.ts';
import { CachedInference, type Answer, type Computed, type InferenceAdapter, type Keyed } from '../src/service/pipeline.ts';

const logger = createLogger('silent');
const H = { name: 'm' };

interface Deferred {
  input: string;
  resolve: (c: Computed) => void;
  reject: (e: unknown) => void;
}

/** Keys `bad*` inputs as errors; every computation waits until the test settles it. */
class FakeAdapter implements InferenceAdapter<string, string, { name: string }> {
  readonly pending: Deferred[] = [];
  computed = 0;
  short = false;

  key(_h: { name: string }, inputs: readonly string[]): (Keyed<string> | PolyrayError)[] {
    return inputs.map((s, index) =>
      s.startsWith('bad') ? new PolyrayError(ErrorCode.BAD_USER_INPUT, 'bad', { index }) : { read: `k:${s}`, flight: `k:${s}`, payload: s },
    );
  }

  compute(_h: { name: string }, items: readonly string[]): Promise<Computed>[] {
    this.computed += items.length;
    const out = items.map((input) => new Promise<Computed>((resolve, reject) => this.pending.push({ input, resolve, reject })));
    return this.short ? out.slice(1) : out;
  }

  fill(_h: { name: string }, item: Keyed<string>, c: Computed): CacheEntry[] {
    return [{ key: item.flight, value: c.outputs[0]! }];
  }

  /** Settles every pending computation: the vector is [input length], units = length. */
  finishAll(): void {
    for (const d of this.pending.splice(0)) d.resolve({ outputs: [new Float32Array([d.input.length])], units: d.input.length, inferenceMs: 1 });
  }
}

/** A tier whose writes always fail (the contract says they should not throw; this one breaks it). */
class BrokenWrites implements Cache {
  readonly name = 'broken';
  async getMany(keys: readonly string[]) {
    return keys.map(() => undefined);
  }
  async setMany(): Promise<void> {
    throw new Error('disk full');
  }
  stats() {
    return emptyStats(this.name);
  }
  async close() {}
}

const tick = () => new Promise<void>((r) => setImmediate(r));

function pipeline(tiers: Cache[] = [new MemoryCache({ maxBytes: 1 << 20 })]) {
  const adapter = new FakeAdapter();
  const cache = new TieredCache(tiers);
  return { adapter, cache, p: new CachedInference(adapter, { cache, logger }) };
}

async function runSettled(p: CachedInference<string, string, { name: string }>, adapter: FakeAdapter, inputs: string[]) {
  const r = p.run(H, inputs);
  while (adapter.pending.length === 0 && (await Promise.race([r.then(() => true), tick().then(() => false)])) === false) {
    /* wait until the pipeline has started its computations (or answered from the cache) */
  }
  adapter.finishAll();
  return r;
}

const ok = (a: Answer | PolyrayError): Answer => {
  assert.ok(!(a instanceof PolyrayError), a instanceof PolyrayError ? a.message : '');
  return a as Answer;
};

describe('CachedInference', () => {
  test('misses are computed once, then answered from memory; repeats within a call are charged once', async () => {
    const { p, adapter } = pipeline();
    const first = await runSettled(p, adapter, ['ab', 'abc', 'ab']);
    assert.deepEqual(
      first.map((a) => [ok(a).source, ok(a).units]),
      [
        ['COMPUTED', 2],
        ['COMPUTED', 3],
        ['COMPUTED', 0],
      ],
    );
    assert.equal(adapter.computed, 2);
    await tick();
    const second = await p.run(H, ['ab', 'abc']);
    assert.deepEqual(
      second.map((a) => [ok(a).source, ok(a).units, ok(a).hit?.[0]]),
      [
        ['MEMORY', 0, 2],
        ['MEMORY', 0, 3],
      ],
    );
    assert.equal(adapter.computed, 2);
    const s = p.stats();
    assert.deepEqual(
      { calls: s.calls, lookups: s.cacheLookups, items: s.items, bySource: s.bySource },
      { calls: 2, lookups: 2, items: 5, bySource: { MEMORY: 2, GLOBAL: 0, COMPUTED: 3 } },
    );
  });

  test('a concurrent miss joins the computation in flight and is not charged', async () => {
    const { p, adapter } = pipeline();
    const a = p.run(H, ['xyz']);
    await tick();
    const b = p.run(H, ['xyz']);
    await tick();
    assert.equal(adapter.computed, 1);
    adapter.finishAll();
    const [ra, rb] = await Promise.all([a, b]);
    assert.equal(ok(ra[0]!).units, 3);
    assert.equal(ok(rb[0]!).units, 0);
    assert.equal(ok(rb[0]!).source, 'COMPUTED');
    assert.equal(p.stats().joined, 1);
  });

  test('a miss whose tier read spans the end of the same computation joins it instead of computing again', async () => {
    let gate: (() => void) | undefined;
    const slow: Cache = {
      name: 'global',
      getMany: async (keys) => {
        if (gate === undefined) await new Promise<void>((r) => (gate = r));
        return keys.map(() => undefined);
      },
      setMany: async () => undefined,
      stats: () => emptyStats('global'),
      close: async () => undefined,
    };
    const { p, adapter } = pipeline([slow]);
    gate = () => undefined;
    const a = p.run(H, ['same']);
    await tick();
    gate = undefined;
    const b = p.run(H, ['same']); // its read waits on the gate
    await tick();
    adapter.finishAll();
    const [ra] = await a;
    gate!();
    const [rb] = await b;
    assert.equal(adapter.computed, 1, 'computed once');
    assert.equal(ok(ra!).units, 4);
    assert.deepEqual([ok(rb!).source, ok(rb!).units], ['COMPUTED', 0]);
  });

  test('a failed computation fails its waiters, stores nothing, and is computed again next time', async () => {
    const { p, adapter, cache } = pipeline();
    const r = p.run(H, ['boom', 'fine']);
    await tick();
    adapter.pending[0]!.reject(new Error('tensor shape [3] vs [4]'));
    adapter.pending.splice(0, 1);
    adapter.finishAll();
    const [boom, fine] = await r;
    assert.ok(boom instanceof PolyrayError);
    assert.equal(boom.code, ErrorCode.INFERENCE_FAILED, 'internal detail is masked');
    assert.doesNotMatch(boom.message, /tensor/);
    assert.equal(ok(fine!).source, 'COMPUTED');
    await tick();
    assert.deepEqual(
      (await cache.lookup(['k:boom', 'k:fine'])).map((h) => h !== undefined),
      [false, true],
    );
    await runSettled(p, adapter, ['boom']);
    assert.equal(adapter.computed, 3);
  });

  test('a cache fill that fails never fails the computed answer', async () => {
    const { p, adapter } = pipeline([new MemoryCache({ maxBytes: 1 << 20 }), new BrokenWrites()]);
    const [a] = await runSettled(p, adapter, ['hello']);
    assert.equal(ok(a!).computed?.outputs[0]?.[0], 5);
    await tick();
  });

  test('an adapter that starts fewer computations than items fails every waiter instead of hanging', async () => {
    const { p, adapter } = pipeline();
    adapter.short = true;
    const results = await p.run(H, ['a', 'b', 'c']);
    adapter.finishAll();
    assert.deepEqual(
      results.map((r) => (r instanceof PolyrayError ? r.code : 'ok')),
      [ErrorCode.INFERENCE_FAILED, ErrorCode.INFERENCE_FAILED, ErrorCode.INFERENCE_FAILED],
    );
  });

  test('a bad input fails only itself', async () => {
    const { p, adapter } = pipeline();
    const [bad, good] = await runSettled(p, adapter, ['bad-1', 'good']);
    assert.ok(bad instanceof PolyrayError && bad.code === ErrorCode.BAD_USER_INPUT);
    assert.equal(ok(good!).source, 'COMPUTED');
    assert.deepEqual(p.stats().errors, { BAD_USER_INPUT: 1 });
  });

  test('property: every input gets exactly one answer, in order; each distinct key is charged once per call', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.constantFrom('a', 'bb', 'ccc', 'bad', 'dddd'), { maxLength: 12 }), async (inputs) => {
        const { p, adapter } = pipeline();
        const answers = await runSettled(p, adapter, inputs);
        assert.equal(answers.length, inputs.length);
        const charged = new Map<string, number>();
        answers.forEach((a, i) => {
          if (inputs[i]!.startsWith('bad')) {
            assert.ok(a instanceof PolyrayError);
            return;
          }
          const x = ok(a);
          assert.equal(x.key, `k:${inputs[i]}`);
          charged.set(x.key, (charged.get(x.key) ?? 0) + x.units);
        });
        for (const [key, units] of charged) assert.equal(units, key.length - 2);
      }),
      { numRuns: 50 },
    );
  });
});
