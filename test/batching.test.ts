import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { startPolyray } from './helpers/polyray.ts';

const ENTITIES = `query($reps: [_Any!]!) { _entities(representations: $reps) { ... on Post { id embedding(model: "text-glove") { source dimensions } } } }`;
type EntitiesData = { _entities: { id: string; embedding: { source: string; dimensions: number } | null }[] };
const EMBED = `query($inputs: [EmbedInput!]!) { embed(model: "text-glove", inputs: $inputs) { source } }`;

const words = ['river', 'mountain', 'city', 'music', 'garden', 'market', 'winter', 'school', 'ocean', 'train'];
function sentence(i: number, salt: string): string {
  return `${salt} ${words[i % 10]} ${words[(i * 7) % 10]} ${words[(i * 3) % 10]} number ${i}`;
}

describe('batching', () => {
  test('500 posts through _entities: one cache read and ceil(misses/maxBatch) inference runs', async () => {
    const t = await startPolyray({ batching: { maxItems: 64, maxWaitUs: 1000 } });
    try {
      const salt = randomUUID();
      const reps = Array.from({ length: 500 }, (_, i) => ({ __typename: 'Post', id: String(i), text: sentence(i, salt), imageUrls: [] }));
      // A few posts repeat the text of another: they share the computation.
      reps[499]!.text = reps[0]!.text;
      reps[498]!.text = reps[1]!.text;
      const before = t.server.text.stats();
      const runsBefore = t.server.pool.stats().runs;
      const r = await t.gql<EntitiesData>(ENTITIES, { reps });
      assert.equal(r.errors, undefined);
      assert.equal(r.data!._entities.length, 500);
      assert.ok(r.data!._entities.every((p) => p.embedding?.source === 'COMPUTED' && p.embedding.dimensions === 100));
      const after = t.server.text.stats();
      assert.equal(after.calls - before.calls, 1, 'one embedMany call for the whole _entities batch');
      assert.equal(after.cacheLookups - before.cacheLookups, 1, 'one tiered cache read');
      const misses = 498;
      assert.equal(t.server.pool.stats().runs - runsBefore, Math.ceil(misses / 64));
      assert.equal(t.server.host.tokenQueue('text-glove')!.stats().items, misses);

      // The same query again is all memory hits: one read, no inference.
      const runs2 = t.server.pool.stats().runs;
      const again = await t.gql<EntitiesData>(ENTITIES, { reps });
      assert.ok(again.data!._entities.every((p) => p.embedding?.source === 'MEMORY'));
      assert.equal(t.server.pool.stats().runs, runs2);
      assert.equal(t.server.text.stats().cacheLookups - after.cacheLookups, 1);
    } finally {
      await t.stop();
    }
  });

  test('concurrent requests share batches, and identical concurrent misses compute once', async () => {
    const t = await startPolyray({ batching: { maxItems: 64, maxWaitUs: 300_000 } });
    try {
      const salt = randomUUID();
      const runsBefore = t.server.pool.stats().runs;
      const rs = await Promise.all(
        Array.from({ length: 10 }, (_, i) => t.gql<{ embed: { source: string }[] }>(EMBED, { inputs: [{ text: sentence(i, salt) }] })),
      );
      assert.ok(rs.every((r) => r.data?.embed[0]?.source === 'COMPUTED'));
      const runs = t.server.pool.stats().runs - runsBefore;
      assert.ok(runs >= 1 && runs <= 2, `10 concurrent single-item requests ran in ${runs} batches`);

      const same = `${salt} identical text`;
      const itemsBefore = t.server.host.tokenQueue('text-glove')!.stats().items;
      const joinedBefore = t.server.text.stats().joined;
      const pair = await Promise.all([
        t.gql<{ embed: { source: string }[] }>(EMBED, { inputs: [{ text: same }] }),
        t.gql<{ embed: { source: string }[] }>(EMBED, { inputs: [{ text: same }] }),
      ]);
      assert.deepEqual(
        pair.map((r) => r.data?.embed[0]?.source),
        ['COMPUTED', 'COMPUTED'],
      );
      assert.equal(t.server.host.tokenQueue('text-glove')!.stats().items - itemsBefore, 1, 'one computation for two identical concurrent misses');
      assert.equal(t.server.text.stats().joined - joinedBefore, 1);
    } finally {
      await t.stop();
    }
  });

  test('length grouping: short inputs are not padded to a long one', async () => {
    const t = await startPolyray({ batching: { maxItems: 8, maxTokens: 16384, maxWaitUs: 300_000 } });
    try {
      const salt = randomUUID();
      const long = `${salt} ${'word '.repeat(300)}`;
      const shorts = Array.from({ length: 7 }, (_, i) => ({ text: `${salt} short ${i}` }));
      const r = await t.gql<{ embed: { source: string }[] }>(EMBED, {
        inputs: [{ text: long }, ...shorts, ...Array.from({ length: 7 }, (_, i) => ({ text: `${salt} other ${i}` }))],
      });
      assert.equal(r.errors, undefined);
      const s = t.server.host.tokenQueue('text-glove')!.stats();
      // 15 items, max 8 per batch: the long one rides with the fewest short ones possible.
      assert.equal(s.batches, 2);
      // Padding everything to the long input would cost 15 × ~301 tokens; grouping keeps it near half.
      assert.ok(s.paddedTokens < 8 * 302 + 8 * 10, `padded tokens ${s.paddedTokens}`);
    } finally {
      await t.stop();
    }
  });

  test('a full queue refuses with OVERLOADED and loses nothing already queued', async () => {
    const t = await startPolyray({ batching: { maxItems: 64, maxWaitUs: 500_000, maxQueueItems: 4 }, limits: { maxInputsPerRequest: 4 } });
    try {
      const salt = randomUUID();
      const first = t.gql<{ embed: { source: string }[] }>(EMBED, { inputs: Array.from({ length: 4 }, (_, i) => ({ text: `${salt} queued ${i}` })) });
      await new Promise((r) => setTimeout(r, 100));
      const second = await t.gql(EMBED, { inputs: [{ text: `${salt} refused` }] });
      assert.equal(second.errors?.[0]?.extensions?.['code'], 'OVERLOADED');
      assert.equal(typeof second.errors?.[0]?.extensions?.['retryAfterMs'], 'number');
      const ok = await first;
      assert.equal(ok.errors, undefined);
      assert.equal(ok.data!.embed.length, 4);
    } finally {
      await t.stop();
    }
  });

  test('graceful shutdown drains queued batches', async () => {
    const t = await startPolyray({ batching: { maxItems: 64, maxWaitUs: 400_000 } });
    const salt = randomUUID();
    const pending = t.gql<{ embed: { source: string }[] }>(EMBED, { inputs: [{ text: `${salt} drain me` }] });
    await new Promise((r) => setTimeout(r, 100));
    const stopped = t.stop();
    const r = await pending;
    await stopped;
    assert.equal(r.errors, undefined);
    assert.equal(r.data!.embed[0]!.source, 'COMPUTED');
    assert.equal(t.server.state, 'stopped');
  });
});
