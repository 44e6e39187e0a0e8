/**
 * Unit tests of the tiered read-through (src/cache/tiered.ts) over fake `Cache` tiers that record
 * every call: which tier answers, back-fill of the tiers above it only, a failing tier turning into
 * misses, and writes reaching every tier. No Redis.
 */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { type Cache, type CacheEntry, emptyStats, type TierStats } from '../src/cache/cache.ts';
import { TieredCache } from '../src/cache/tiered.ts';

/** A map-backed tier. `failing`: it keeps the `Cache` contract by answering misses and counting errors. */
class FakeTier implements Cache {
  readonly name: string;
  readonly map = new Map<string, Float32Array>();
  readonly reads: string[][] = [];
  readonly writes: CacheEntry[][] = [];
  failing = false;
  flushed = 0;
  closed = false;
  readonly #stats: TierStats;

  constructor(name: string, entries: Record<string, number> = {}) {
    this.name = name;
    this.#stats = emptyStats(name);
    for (const [k, v] of Object.entries(entries)) this.map.set(k, vec(v));
  }

  async getMany(keys: readonly string[]): Promise<(Float32Array | undefined)[]> {
    this.reads.push([...keys]);
    if (this.failing) {
      this.#stats.errors++;
      return keys.map(() => undefined);
    }
    return keys.map((k) => this.map.get(k));
  }

  async setMany(entries: readonly CacheEntry[]): Promise<void> {
    this.writes.push([...entries]);
    if (this.failing) return;
    for (const e of entries) this.map.set(e.key, e.value);
  }

  stats(): TierStats {
    return { ...this.#stats };
  }

  async flush(): Promise<void> {
    this.flushed++;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

const vec = (x: number): Float32Array => Float32Array.of(x, -x);
const hitsOf = (hits: ({ value: Float32Array; tier: string } | undefined)[]) => hits.map((h) => (h ? [h.tier, h.value[0]] : undefined));
const keysWritten = (t: FakeTier): string[][] => t.writes.map((w) => w.map((e) => e.key));

describe('TieredCache', () => {
  test('needs at least one tier', () => {
    assert.throws(() => new TieredCache([]), { name: 'TypeError', message: 'TieredCache needs at least one tier, received an empty list' });
  });

  test('the first tier that has a key answers it; each tier reads only what is still missing, once', async () => {
    const memory = new FakeTier('memory', { a: 1 });
    const global = new FakeTier('global', { b: 2, a: 99 });
    const tiered = new TieredCache([memory, global]);
    assert.deepEqual(tiered.tierNames, ['memory', 'global']);
    const hits = await tiered.lookup(['a', 'b', 'c']);
    assert.deepEqual(hitsOf(hits), [['memory', 1], ['global', 2], undefined]);
    assert.deepEqual(memory.reads, [['a', 'b', 'c']]);
    assert.deepEqual(global.reads, [['b', 'c']]);
  });

  test('a hit back-fills only the tiers above the one that answered', async () => {
    const memory = new FakeTier('memory');
    const near = new FakeTier('near', { n: 1 });
    const far = new FakeTier('far', { f: 2 });
    const tiered = new TieredCache([memory, near, far]);
    assert.deepEqual(hitsOf(await tiered.lookup(['f', 'n', 'x'])), [['far', 2], ['near', 1], undefined]);
    assert.deepEqual(keysWritten(memory), [['n'], ['f']]);
    assert.deepEqual(keysWritten(near), [['f']]);
    assert.deepEqual(far.writes, [], 'the answering tier is not written');
    // The next read is answered from memory without touching the tiers below.
    assert.deepEqual(hitsOf(await tiered.lookup(['f', 'n'])), [
      ['memory', 2],
      ['memory', 1],
    ]);
    assert.equal(near.reads.length, 1);
    assert.equal(far.reads.length, 1);
  });

  test('a memory hit writes nothing and reads no lower tier', async () => {
    const memory = new FakeTier('memory', { a: 1 });
    const global = new FakeTier('global');
    await new TieredCache([memory, global]).lookup(['a']);
    assert.deepEqual(memory.writes, []);
    assert.deepEqual(global.reads, []);
  });

  test('a failing tier returns misses: the read goes on to the tier below, and never throws', async () => {
    const memory = new FakeTier('memory');
    const global = new FakeTier('global', { a: 1 });
    const archive = new FakeTier('archive', { a: 1, b: 2 });
    global.failing = true;
    const tiered = new TieredCache([memory, global, archive]);
    assert.deepEqual(hitsOf(await tiered.lookup(['a', 'b'])), [
      ['archive', 1],
      ['archive', 2],
    ]);
    assert.deepEqual(archive.reads, [['a', 'b']]);
    assert.equal(tiered.stats()[1]!.errors, 1, 'the failure is visible in the tier stats');
    assert.deepEqual(keysWritten(memory), [['a', 'b']]);
  });

  test('every tier failing is all misses', async () => {
    const tiers = [new FakeTier('memory', { a: 1 }), new FakeTier('global', { a: 1 })];
    for (const t of tiers) t.failing = true;
    assert.deepEqual(await new TieredCache(tiers).lookup(['a']), [undefined]);
  });

  test('store goes to every tier; an empty store writes nothing', async () => {
    const tiers = [new FakeTier('memory'), new FakeTier('global'), new FakeTier('archive')];
    const tiered = new TieredCache(tiers);
    await tiered.store([]);
    assert.ok(tiers.every((t) => t.writes.length === 0));
    const entries = [{ key: 'k', value: vec(3), ttlMs: 5000 }];
    await tiered.store(entries);
    for (const t of tiers) assert.deepEqual(t.writes, [entries]);
  });

  test('flush, stats and close reach every tier, in order', async () => {
    const tiers = [new FakeTier('memory'), new FakeTier('global')];
    const tiered = new TieredCache(tiers);
    await tiered.flush();
    assert.deepEqual(
      tiers.map((t) => t.flushed),
      [1, 1],
    );
    assert.deepEqual(
      tiered.stats().map((s) => s.tier),
      ['memory', 'global'],
    );
    await tiered.close();
    assert.ok(tiers.every((t) => t.closed));
  });

  test('property: each key is answered by the topmost tier holding it, and is then in every tier above', async () => {
    const tierCount = 3;
    await fc.assert(
      fc.asyncProperty(
        // For each key, the set of tiers holding it (each with its own value).
        fc.array(fc.subarray([0, 1, 2]), { minLength: 1, maxLength: 20 }),
        async (holders) => {
          const tiers = Array.from({ length: tierCount }, (_, t) => new FakeTier(`t${t}`));
          for (const [k, hs] of holders.entries()) for (const t of hs) tiers[t]!.map.set(`k${k}`, vec(k * 10 + t));
          const keys = holders.map((_, k) => `k${k}`);
          const hits = await new TieredCache(tiers).lookup(keys);
          for (const [k, hs] of holders.entries()) {
            if (hs.length === 0) {
              assert.equal(hits[k], undefined);
              continue;
            }
            const top = Math.min(...hs);
            assert.deepEqual([hits[k]!.tier, hits[k]!.value[0]], [`t${top}`, k * 10 + top]);
            for (let t = 0; t < top; t++) assert.equal(tiers[t]!.map.get(`k${k}`)?.[0], k * 10 + top, `k${k} back-filled into t${t}`);
          }
          for (const t of tiers) assert.ok(t.reads.length <= 1, 'one read per tier');
        },
      ),
      { numRuns: 200 },
    );
  });
});
