/**
 * The compiled `_entities` route (src/resolvers/fast-entities.ts) answers exactly what Apollo and graphql-js
 * answer: two real servers, one with the route and one without (POLYRAY_ENTITY_FAST_PATH=false), get the
 * same operations, and their data, errors (paths, codes, locations), charged cost, status, content type and
 * Cache-Control must be equal. Shapes, documents, variables and bodies the route does not take go to
 * Apollo, and answer the same too.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { addClient } from '../src/accounting/clients.ts';
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

  /** The same request sent to both servers as raw HTTP: status, the headers a client or cache reads, and the body. */
  const raw = async (body: unknown, headers: Record<string, string> = {}) => {
    const send = async (t: TestServer) => {
      const res = await fetch(`${t.url}/graphql`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
      const text = await res.text();
      return { status: res.status, type: res.headers.get('content-type'), cache: res.headers.get('cache-control'), text };
    };
    const before = fast.server.entityFastPath.served;
    const [a, b] = await Promise.all([send(fast), send(slow)]);
    return { a, b, taken: fast.server.entityFastPath.served - before === 1 };
  };
  const QUERY = 'query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding { base64 } } } }';

  test('headers and body text as Apollo writes them: content type by Accept, Cache-Control, one JSON line', async () => {
    const r = posts(['the cat sat', null, 'a dog ran']);
    for (const accept of [undefined, 'application/json', 'application/graphql-response+json', 'application/json, */*;q=0.5', '*/*']) {
      const { a, b, taken } = await raw({ query: QUERY, variables: { r } }, accept === undefined ? {} : { accept });
      assert.ok(taken, `taken with Accept ${accept}`);
      assert.deepEqual([a.status, a.type, a.cache], [b.status, b.type, b.cache], `Accept ${accept}`);
      assert.ok(a.text.endsWith('}\n') && !a.text.slice(0, -1).includes('\n'), 'one line, newline-terminated, as Apollo writes it');
      const [pa, pb] = [JSON.parse(a.text), JSON.parse(b.text)];
      assert.deepEqual(pa.data, pb.data);
      assert.deepEqual(Object.keys(pa), Object.keys(pb), 'the same top-level fields in the same order');
      assert.deepEqual(Object.keys(pa.extensions.cost), Object.keys(pb.extensions.cost));
    }
    // An Accept that takes no JSON is Apollo's to refuse.
    const { a, b, taken } = await raw({ query: QUERY, variables: { r } }, { accept: 'text/html' });
    assert.equal(taken, false);
    assert.deepEqual([a.status, a.type], [b.status, b.type]);
    assert.equal(a.status, 406);
  });

  test('documents, variables and bodies the route does not take are answered by Apollo, alike', async () => {
    const r = posts(['the cat sat']);
    const cases: { body: unknown; taken: boolean }[] = [
      { body: { query: QUERY, variables: { r: 'not a list' } }, taken: false },
      { body: { query: QUERY, variables: { r: [...r, null] } }, taken: false },
      // One representation where a list belongs is a list of one (GraphQL input coercion), as Apollo reads it.
      { body: { query: QUERY, variables: { r: r[0] } }, taken: true },
      { body: { query: QUERY, variables: {} }, taken: false },
      { body: { query: QUERY, variables: { r }, operationName: 'Other' }, taken: false },
      { body: { query: QUERY.replace('query(', 'query Feed('), variables: { r }, operationName: 'Feed' }, taken: true },
      { body: { query: `${QUERY} query Two { __typename }`, variables: { r } }, taken: false },
      { body: { query: QUERY.replace('base64', 'nope'), variables: { r } }, taken: false },
      { body: { query: QUERY.replace('[_Any!]!', 'String'), variables: { r: 'x' } }, taken: false },
      { body: { query: QUERY, variables: { r }, extensions: { persistedQuery: { version: 1, sha256Hash: 'ab' } } }, taken: false },
      { body: { query: QUERY, variables: '{"r": []}' }, taken: false },
      {
        body: {
          query: 'query($r: [_Any!]!, $d: Int) { _entities(representations: $r) { ... on Post { embedding(dimensions: $d) { base64 } } } }',
          variables: { r, d: '8' },
        },
        taken: false,
      },
      {
        body: {
          query: 'query($r: [_Any!]!, $d: Int) { _entities(representations: $r) { ... on Post { embedding(dimensions: $d) { base64 } } } }',
          variables: { r, d: 2 ** 40 },
        },
        taken: false,
      },
      // A default value is the variable's value when the request gives none.
      {
        body: {
          query: 'query($r: [_Any!]!, $d: Int = 8) { _entities(representations: $r) { ... on Post { embedding(dimensions: $d) { vector } } } }',
          variables: { r },
        },
        taken: true,
      },
      { body: { query: QUERY, variables: { r: [...r, { __typename: 'Post', id: 'x', text: ['a list'] }] } }, taken: false },
    ];
    for (const { body, taken } of cases) {
      const { a, b, taken: was } = await raw(body);
      const label = JSON.stringify(body).slice(0, 160);
      assert.equal(was, taken, label);
      assert.deepEqual([a.status, a.type, a.cache], [b.status, b.type, b.cache], label);
      const [pa, pb] = [JSON.parse(a.text), JSON.parse(b.text)];
      assert.deepEqual(pa.errors, pb.errors, label);
      assert.deepEqual(pa.data, pb.data, label);
    }
  });

  test('vector answers: text remembered per cached vector, bounded in bytes, the same answers', async () => {
    const metric = async (t: TestServer, name: string): Promise<number> => {
      const text = await (await fetch(`${t.url}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name}{memo="vector_text"}`));
      assert.ok(line, `${name} is exported`);
      return Number(line.split(' ').at(-1));
    };
    const VECTOR = 'query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding { vector } } } }';
    const entries0 = await metric(fast, 'polyray_memo_entries');
    const r = posts(['memo river stone', 'memo green field', 'memo river stone']);
    await same(VECTOR, { r }, true);
    await same(VECTOR, { r }, true); // from the memo this time
    assert.equal((await metric(fast, 'polyray_memo_entries')) - entries0, 2, 'one entry per distinct vector');
    const bytes0 = await metric(fast, 'polyray_memo_bytes');
    await same(QUERY, { r }, true);
    await same(QUERY, { r }, true);
    assert.equal((await metric(fast, 'polyray_memo_entries')) - entries0, 2, 'base64 joins the same entries');
    assert.ok((await metric(fast, 'polyray_memo_bytes')) > bytes0, 'with its own text');
    // A small bound holds what fits, and answers stay exact past it.
    const small = await startPolyray({ models: { defaultPostModel: 'text-glove' }, limits: { vectorTextMemoBytes: 1024 * 1024 } });
    try {
      const words = [
        'cat',
        'dog',
        'house',
        'tree',
        'river',
        'city',
        'music',
        'water',
        'light',
        'stone',
        'green',
        'happy',
        'quick',
        'road',
        'paper',
        'table',
        'bread',
        'chair',
        'cloud',
        'field',
        'glass',
        'horse',
        'ocean',
        'plant',
      ];
      const texts = words.flatMap((a) => words.map((b) => `the ${a} and the ${b}`));
      for (let i = 0; i < texts.length; i += 64) {
        const batch = posts(texts.slice(i, i + 64));
        const [a, b] = await Promise.all([small.gql(VECTOR, { r: batch }), slow.gql(VECTOR, { r: batch })]);
        assert.deepEqual(a.data, b.data);
      }
      const bytes = await metric(small, 'polyray_memo_bytes');
      assert.ok(bytes > 0 && bytes <= 1024 * 1024, `memo bytes ${bytes} within 1 MiB`);
      assert.ok((await metric(small, 'polyray_memo_entries')) < texts.length, 'not every vector kept');
    } finally {
      await small.stop();
    }
  });

  test('more posts than one pipeline batch (POLYRAY_MAX_INPUTS): batches as the loader makes them, the same answers and cost', async () => {
    const models = { defaultPostModel: 'text-glove' };
    const [a, b] = await Promise.all([
      startPolyray({ models, limits: { maxInputsPerRequest: 4 } }),
      startPolyray({ models, limits: { maxInputsPerRequest: 4, entityFastPath: false } }),
    ]);
    try {
      const r = posts([
        'the cat sat',
        'a dog ran',
        '',
        'the cat sat',
        'green field',
        'x'.repeat(70_000),
        'river stone',
        'a dog ran',
        'paper table',
        null,
        'blue sky',
      ]);
      for (let round = 0; round < 2; round++) {
        const [x, y] = await Promise.all([a.gql(QUERY, { r }), b.gql(QUERY, { r })]);
        assert.deepEqual(x.errors, y.errors);
        assert.deepEqual(x.data, y.data);
        const charged = (t: { extensions?: Record<string, unknown> }) => (t.extensions?.['cost'] as { charged: number } | undefined)?.charged;
        assert.equal(charged(x), charged(y));
        assert.ok((charged(x) ?? 0) > 0);
      }
      assert.equal(a.server.entityFastPath.served, 2);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  test('a refused key is refused once: UNAUTHENTICATED, counted once', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'polyray-fast-auth-'));
    const file = path.join(dir, 'clients.json');
    const { key } = await addClient(file, { id: 'c1' });
    const t = await startPolyray({ models: { defaultPostModel: 'text-glove' }, accounting: { clientsFile: file } } as never);
    try {
      const r = posts(['the cat sat']);
      const failures = async () => (await t.server.accounting.metrics.authFailures.get()).values.reduce((s, v) => s + v.value, 0);
      const before = await failures();
      const refused = await t.gql(QUERY, { r }, { authorization: 'Bearer wrong' });
      assert.equal(refused.errors?.[0]?.extensions?.['code'], 'UNAUTHENTICATED');
      assert.equal((await failures()) - before, 1, 'one failure counted for one request');
      assert.equal(t.server.entityFastPath.served, 0);
      const ok = await t.gql<{ _entities: { embedding: { base64: string } }[] }>(QUERY, { r }, { authorization: `Bearer ${key}` });
      assert.equal(ok.errors, undefined);
      assert.equal(typeof ok.data?._entities[0]?.embedding.base64, 'string');
      assert.equal(t.server.entityFastPath.served, 1);
    } finally {
      await t.stop();
      await rm(dir, { recursive: true, force: true });
    }
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
