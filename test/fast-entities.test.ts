/**
 * The compiled `_entities` path (src/resolvers/fast-entities.ts) answers exactly what graphql-js execution
 * answers: two real servers, one with the path and one without (POLYRAY_ENTITY_FAST_PATH=false), get the
 * same operations, and their data, errors (paths, codes, locations) and charged cost must be equal. Shapes
 * the path does not take go the ordinary way, and answer the same too.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

type Reply = { data?: unknown; errors?: unknown[]; extensions?: { cost?: { charged: number } } };

describe('compiled _entities path', () => {
  let fast: TestServer;
  let slow: TestServer;
  before(async () => {
    const models = { defaultPostModel: 'text-glove' };
    [fast, slow] = await Promise.all([startPolyray({ models }), startPolyray({ models, limits: { entityFastPath: false } })]);
  });
  after(async () => {
    await Promise.all([fast?.stop(), slow?.stop()]);
  });

  const both = async (query: string, variables: Record<string, unknown>): Promise<[Reply, Reply]> => {
    const [a, b] = await Promise.all([fast.gql(query, variables), slow.gql(query, variables)]);
    return [a as Reply, b as Reply];
  };
  const same = async (query: string, variables: Record<string, unknown>, taken: boolean): Promise<Reply> => {
    const before = fast.server.entityFastPath.served;
    const [a, b] = await both(query, variables);
    assert.deepEqual(a.errors, b.errors, JSON.stringify(a.errors));
    assert.deepEqual(a.data, b.data);
    assert.equal(a.extensions?.cost?.charged, b.extensions?.cost?.charged, 'charged alike');
    assert.equal(fast.server.entityFastPath.served - before, taken ? 1 : 0, taken ? 'the compiled path answered' : 'the ordinary path answered');
    assert.equal(slow.server.entityFastPath.served, 0);
    return a;
  };
  const posts = (texts: (string | null | undefined)[]) =>
    texts.map((text, i) => ({ __typename: 'Post', id: `p${i}`, ...(text === undefined ? {} : { text }) }));

  test('base64 and vector, aliases, dimensions and model as literals or variables, posts without text', async () => {
    const r = posts(['the cat sat', 'a dog ran', '', null, undefined, '   ', 'the cat sat']);
    await same('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "text-glove") { base64 } } } }', { r }, true);
    await same('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding { vector } } } }', { r }, true);
    const out = await same(
      'query Feed($r: [_Any!]!, $m: String, $d: Int) { e: _entities(representations: $r) { ... on Post { emb: embedding(model: $m, dimensions: $d) { v: vector } } } }',
      { r, m: 'text-glove', d: 8 },
      true,
    );
    const first = (out.data as { e: { emb: { v: number[] } | null }[] }).e[0]!.emb!.v;
    assert.equal(first.length, 8);
    assert.equal((out.data as { e: unknown[] }).e.length, r.length);
    await same('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(dimensions: 16) { base64 } } } }', { r }, true);
  });

  test('an input refused in the pipeline: the same error at the same path, the other entities served', async () => {
    const r = posts(['fine text', 'x'.repeat(70_000), 'another fine one']);
    const out = await same('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "text-glove") { base64 } } } }', { r }, true);
    assert.equal((out.errors as { extensions: { code: string } }[])[0]!.extensions.code, 'INPUT_TOO_LARGE');
  });

  test('what the path does not take answers the ordinary way, the same', async () => {
    const r = posts(['the cat sat']);
    await same('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { __typename embedding { base64 } } } }', { r }, false);
    await same('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding { base64 source } } } }', { r }, false);
    await same('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "no-such-model") { base64 } } } }', { r }, false);
    await same('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(dimensions: 100000) { base64 } } } }', { r }, false);
    await same('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "image-mobilenet") { base64 } } } }', { r }, false);
    await same(
      'query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding { base64 } } } }',
      { r: [{ __typename: 'Post', id: 1, text: 5 }] },
      false,
    );
  });

  test('property: any mix of texts (and missing ones) answers the same on both paths', async () => {
    const text = fc.oneof(fc.constantFrom('the cat sat', 'a dog ran', '', '  '), fc.string({ maxLength: 40 }), fc.constant(null));
    await fc.assert(
      fc.asyncProperty(fc.array(text, { minLength: 1, maxLength: 12 }), fc.constantFrom('base64', 'vector'), async (texts, leaf) => {
        await same(`query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding { ${leaf} } } } }`, { r: posts(texts) }, true);
      }),
      { numRuns: 25 },
    );
  });
});
