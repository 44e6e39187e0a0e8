/**
 * Image, postray and head work is charged like text: permission → reserve → run → settle + ledger.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Cost } from './helpers/accounting.ts';
import { patternImage } from './helpers/images.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

const EMBED = `query($model: String!, $inputs: [EmbedInput!]!) { embed(model: $model, inputs: $inputs) { source } }`;

describe('image accounting', () => {
  let t: TestServer;
  before(async () => {
    t = await startPolyray({ models: { serve: ['text-glove', 'image-mobilenet', 'head-nsfw'] } });
  });
  after(async () => {
    await t?.stop();
  });

  test('a computed image costs pixels/1000 × costFactor, a memory hit the hit cost, and both reach the ledger', async () => {
    const img = (await patternImage(300, 200, 4242)).toString('base64');
    const first = await t.gql<{ embed: { source: string }[] }>(EMBED, { model: 'image-mobilenet', inputs: [{ imageBase64: img }] });
    assert.equal(first.errors, undefined);
    assert.equal(first.data!.embed[0]!.source, 'COMPUTED');
    const c1 = first.extensions!['cost'] as Cost;
    // 224 × 224 model input pixels, costFactor 1 per 1000 pixels.
    assert.equal(c1.charged, 50.176);
    assert.ok(c1.estimated >= c1.charged);
    const second = await t.gql<{ embed: { source: string }[] }>(EMBED, { model: 'image-mobilenet', inputs: [{ imageBase64: img }] });
    assert.equal(second.data!.embed[0]!.source, 'MEMORY');
    assert.equal((second.extensions!['cost'] as Cost).charged, 0.01);
    const usage = await t.gql<{ usage: { rows: { model: string; source: string; items: number; tokens: number; cost: number }[] } }>(
      '{ usage { rows { model source items tokens cost } } }',
    );
    assert.equal(usage.errors, undefined, JSON.stringify(usage.errors));
    const rows = usage.data!.usage.rows.filter((r) => r.model === 'image-mobilenet');
    const computed = rows.find((r) => r.source === 'COMPUTED')!;
    assert.equal(computed.items, 1);
    assert.equal(computed.tokens, 50176);
    assert.equal(computed.cost, 50.176);
    assert.ok(rows.some((r) => r.source === 'MEMORY' && r.items === 1));
  });

  test('post images through Post.embedding are charged too', async () => {
    const img = (await patternImage(64, 64, 777)).toString('base64');
    const r = await t.gql<{ embed: { source: string }[] }>(EMBED, { model: 'postray', inputs: [{ imageBase64: img }] });
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    assert.ok((r.extensions!['cost'] as Cost).charged >= 50.176, JSON.stringify(r.extensions));
  });
});
