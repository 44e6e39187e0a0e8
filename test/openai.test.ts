/**
 * `POST /v1/embeddings` and `GET /v1/models` through the official `openai` npm client (6.x) against a real
 * server: the vectors equal GraphQL's for the same model and text (float and base64 encodings), dimensions
 * are cut and re-normalised, usage counts tokens of computed and cached inputs alike, a wrong key raises
 * AuthenticationError, an exhausted quota raises RateLimitError and the client's own retry (after
 * Retry-After) succeeds. Bad input gets 4xx in OpenAI's error shape naming the field.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { addClient } from '../src/accounting/clients.ts';
import { words } from './helpers/accounting.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

describe('OpenAI-compatible /v1', () => {
  let dir: string;
  let t: TestServer;
  const keys: Record<string, string> = {};
  const client = (id: string, maxRetries = 0) => new OpenAI({ apiKey: keys[id]!, baseURL: `${t.url}/v1`, maxRetries });

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-openai-'));
    const file = path.join(dir, 'clients.json');
    for (const spec of [
      { id: 'app', rate: 1e6, burst: 1e9 },
      { id: 'narrow', models: ['image-mobilenet'] },
      { id: 'tight', models: ['text-glove'], rate: 40, burst: 40 },
      { id: 'second', rate: 1e6, burst: 1e9 },
    ]) {
      keys[spec.id] = (await addClient(file, spec)).key;
    }
    t = await startPolyray({
      accounting: { clientsFile: file },
      models: { aliases: ['text-embedding-3-small=text-glove'], serve: ['text-glove', 'image-mobilenet', 'head-nsfw', 'text-bert-synthetic'] },
    });
  });
  after(async () => {
    await t?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const graphqlVector = async (text: string, dimensions?: number): Promise<number[]> => {
    const r = await t.gql<{ embed: { vector: number[] }[] }>(
      `query($t: String!) { embed(model: "text-glove", inputs: [{ text: $t }]${dimensions ? `, dimensions: ${dimensions}` : ''}) { vector } }`,
      { t: text },
      { authorization: `Bearer ${keys['app']}` },
    );
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    return r.data!.embed[0]!.vector;
  };
  const close = (a: readonly number[], b: readonly number[]) => {
    assert.equal(a.length, b.length);
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) < 1e-6, `component ${i}: ${a[i]} vs ${b[i]}`);
  };

  test('a string and a list of strings; float and base64 (the SDK default) equal GraphQL; usage counts cached inputs too', async () => {
    const texts = ['the cat sat on the mat', words(5), 'the cat sat on the mat'];
    const openai = client('app');
    const b64 = await openai.embeddings.create({ model: 'text-glove', input: texts });
    const floats = await openai.embeddings.create({ model: 'text-glove', input: texts, encoding_format: 'float' });
    assert.equal(b64.object, 'list');
    assert.equal(b64.model, 'text-glove');
    assert.deepEqual(
      b64.data.map((d) => [d.object, d.index]),
      texts.map((_, i) => ['embedding', i]),
    );
    for (const [i, text] of texts.entries()) {
      const want = await graphqlVector(text);
      close(b64.data[i]!.embedding, want);
      close(floats.data[i]!.embedding, want);
    }
    // The second call was served from the cache: the same token count all the same.
    assert.ok(b64.usage.prompt_tokens > 0);
    assert.equal(floats.usage.prompt_tokens, b64.usage.prompt_tokens);
    assert.equal(b64.usage.total_tokens, b64.usage.prompt_tokens);
    const one = await openai.embeddings.create({ model: 'text-glove', input: 'hello world' });
    assert.equal(one.data.length, 1);
  });

  test('a model alias (POLYRAY_MODEL_ALIASES) serves the model it names, and answers under the alias', async () => {
    const r = await client('app').embeddings.create({ model: 'text-embedding-3-small', input: 'an aliased call', encoding_format: 'float' });
    assert.equal(r.model, 'text-embedding-3-small');
    close(r.data[0]!.embedding, await graphqlVector('an aliased call'));
    const ids = (await client('app').models.list()).data.map((m) => m.id);
    assert.ok(ids.includes('text-embedding-3-small'));
    assert.equal((await client('app').models.retrieve('text-embedding-3-small')).id, 'text-embedding-3-small');
  });

  test('GraphQL _entities and /v1/embeddings for the same new text at once: one computation, the books split exactly', async () => {
    const text = words(7);
    // Computations run: answers computed, less those that joined a computation already running.
    const computations = () => t.server.text.stats().bySource.COMPUTED - t.server.text.stats().joined;
    const computedBefore = computations();
    const usage = async (id: string) =>
      (
        await t.gql<{ usage: { totals: { items: number; tokens: number; cost: number } } }>(
          '{ usage { totals { items tokens cost } } }',
          {},
          { authorization: `Bearer ${keys[id]}` },
        )
      ).data!.usage.totals;
    const [appBefore, otherBefore] = [await usage('app'), await usage('second')];
    const [entities, rest] = await Promise.all([
      t.gql<{ _entities: { embedding: { source: string } }[] }>(
        'query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "text-glove") { source } } } }',
        { r: [{ __typename: 'Post', id: 'p1', text }] },
        { authorization: `Bearer ${keys['app']}` },
      ),
      client('second').embeddings.create({ model: 'text-glove', input: text }),
    ]);
    assert.equal(entities.errors, undefined);
    assert.equal(rest.data.length, 1);
    assert.equal(computations() - computedBefore, 1, 'computed once for both');
    const [appAfter, otherAfter] = [await usage('app'), await usage('second')];
    const delta = (a: { items: number; tokens: number; cost: number }, b: typeof a) => ({
      items: a.items - b.items,
      tokens: a.tokens - b.tokens,
      cost: a.cost - b.cost,
    });
    const d = [delta(appAfter, appBefore), delta(otherAfter, otherBefore)];
    // One of the two computed 7 tokens (costFactor 1); the other was served that computation as a memory hit.
    assert.deepEqual(
      d.map((x) => x.items),
      [1, 1],
    );
    assert.deepEqual([...d.map((x) => x.tokens)].sort(), [0, 7]);
    assert.ok(Math.abs(d[0]!.cost + d[1]!.cost - 7.01) < 1e-6, JSON.stringify(d));
  });

  test('token-id inputs: the ids /tokenize gives embed as their text does; one list or many; usage counts the ids', async () => {
    const texts = ['the quick brown fox', 'Ünïcödé and 漢字 too'];
    const res = await fetch(`${t.url}/tokenize?model=text-bert-synthetic`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${keys['app']}` },
      body: JSON.stringify({ inputs: texts }),
    });
    assert.equal(res.status, 200);
    const ids = ((await res.json()) as { id: number }[][]).map((tokens) => tokens.map((x) => x.id));
    const byText = await client('app').embeddings.create({ model: 'text-bert-synthetic', input: texts, encoding_format: 'float' });
    const byIds = await client('app').embeddings.create({ model: 'text-bert-synthetic', input: ids, encoding_format: 'float' });
    assert.equal(byIds.data.length, 2);
    for (let i = 0; i < 2; i++) close(byIds.data[i]!.embedding, byText.data[i]!.embedding);
    assert.equal(byIds.usage.prompt_tokens, ids[0]!.length + ids[1]!.length);
    assert.equal(byText.usage.prompt_tokens, byIds.usage.prompt_tokens, 'the same tokens, counted alike');
    // One flat list is one input; base64 (the SDK default) decodes to the same vector.
    const one = await client('app').embeddings.create({ model: 'text-bert-synthetic', input: ids[0]! });
    assert.equal(one.data.length, 1);
    close(one.data[0]!.embedding, byText.data[0]!.embedding);
    // Ids outside the vocabulary, or more than the model reads, name the input.
    const outside = await fetch(`${t.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${keys['app']}` },
      body: JSON.stringify({ model: 'text-bert-synthetic', input: [ids[0], [101, 9_999_999, 102]] }),
    });
    assert.equal(outside.status, 400);
    const err = ((await outside.json()) as { error: { param: string; message: string } }).error;
    assert.equal(err.param, 'input[1]');
    assert.match(err.message, /not a token id of model text-bert-synthetic/);
    const long = await fetch(`${t.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${keys['app']}` },
      body: JSON.stringify({ model: 'text-bert-synthetic', input: [Array.from({ length: 5000 }, () => 1000)] }),
    });
    assert.equal(long.status, 413);
    assert.equal(((await long.json()) as { error: { param: string } }).error.param, 'input[0]');
  });

  test('dimensions: the first components, re-normalised, as GraphQL cuts them', async () => {
    const r = await client('app').embeddings.create({ model: 'text-glove', input: 'a matryoshka cut', dimensions: 8, encoding_format: 'float' });
    close(r.data[0]!.embedding, await graphqlVector('a matryoshka cut', 8));
    assert.ok(Math.abs(Math.hypot(...r.data[0]!.embedding) - 1) < 1e-5);
  });

  test('GET /v1/models lists the text models this key may use; /v1/models/{id} one of them', async () => {
    const list = await client('app').models.list();
    const ids = list.data.map((m) => m.id);
    assert.ok(ids.includes('text-glove'));
    assert.ok(!ids.includes('image-mobilenet'), 'image models are not for /v1/embeddings');
    assert.equal((await client('app').models.retrieve('text-glove')).id, 'text-glove');
    await assert.rejects(client('app').models.retrieve('no-such-model'), OpenAI.NotFoundError);
  });

  test('errors: a wrong key, a model not allowed, an unknown model, bad fields, each in its class and shape', async () => {
    await assert.rejects(
      new OpenAI({ apiKey: 'prk_app_wrong', baseURL: `${t.url}/v1`, maxRetries: 0 }).embeddings.create({ model: 'text-glove', input: 'x' }),
      OpenAI.AuthenticationError,
    );
    await assert.rejects(client('narrow').embeddings.create({ model: 'text-glove', input: 'x' }), OpenAI.PermissionDeniedError);
    await assert.rejects(client('app').embeddings.create({ model: 'text-glov', input: 'x' }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.NotFoundError);
      assert.match(e.message, /did you mean "text-glove"/);
      return true;
    });
    const post = async (body: unknown, contentType = 'application/json') => {
      const res = await fetch(`${t.url}/v1/embeddings`, {
        method: 'POST',
        headers: { 'content-type': contentType, authorization: `Bearer ${keys['app']}` },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json()) as { error?: { message: string; type: string; param: string | null; code: string } } };
    };
    for (const [body, param] of [
      [{ model: 'text-glove', input: 42 }, 'input'],
      [{ model: 'text-glove', input: [] }, 'input'],
      [{ model: 'text-glove', input: ['ok', 7] }, 'input[1]'],
      [{ model: 'text-glove', input: [[1, -2]] }, 'input[0][1]'],
      [{ model: 'text-glove', input: [[1, 2], 'x'] }, 'input[1]'],
      [{ model: 'text-glove', input: [1.5] }, 'input[0]'],
      [{ model: 'text-glove', input: [[1, 2], [4_000_000]] }, 'input[1]'],
      [{ model: 'text-glove', input: [[]] }, 'input[0]'],
      [{ model: 7, input: 'x' }, 'model'],
      [{ model: 'text-glove', input: 'x', encoding_format: null }, 'encoding_format'],
      [{ model: 'text-glove', input: 'x', encoding_format: 'int4' }, 'encoding_format'],
      [{ model: 'text-glove', input: 'x', dimensions: 'eight' }, 'dimensions'],
      [{ model: 'text-glove', input: 'x', dimensions: -1 }, 'dimensions'],
      [{ model: 'text-glove', input: 'x', dimensions: 4096 }, 'dimensions'],
      [{ input: 'x' }, 'model'],
      [{ model: 'text-glove', input: 'x', user: 5 }, 'user'],
    ] as const) {
      const r = await post(body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(r.body.error?.type, 'invalid_request_error');
      assert.equal(r.body.error?.param, param, `${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
    }
    const many = await post({ model: 'text-glove', input: Array.from({ length: 10_000 }, () => 'x') });
    assert.equal(many.status, 413);
    assert.equal(many.body.error?.code, 'too_many_inputs');
    const huge = await post({ model: 'text-glove', input: ['fine', 'x'.repeat(5 << 20)] });
    assert.equal(huge.status, 413);
    assert.equal(huge.body.error?.param, 'input[1]');
    const broken = await post('{"model": ');
    assert.equal(broken.status, 400);
    assert.equal(broken.body.error?.param, 'body');
    const plain = await post({ model: 'text-glove', input: 'x' }, 'text/plain');
    assert.equal(plain.status, 400);
    assert.equal(plain.body.error?.param, 'body');
    // And it still serves.
    assert.equal((await post({ model: 'text-glove', input: 'still here' })).status, 200);
  });

  test('an exhausted quota raises RateLimitError with Retry-After; the client retries after it and succeeds', async () => {
    const tight = client('tight');
    // Burst 40, 40 per second: a 30-token text reserves its worst case (~61 units), more than the burst of
    // 40 — so use 15-token texts (≈ 31 units worst case, 15 charged): the second call in a row must wait.
    await tight.embeddings.create({ model: 'text-glove', input: words(15) });
    let refused: unknown;
    try {
      for (let i = 0; i < 5; i++) await tight.embeddings.create({ model: 'text-glove', input: words(15) });
    } catch (e) {
      refused = e;
    }
    assert.ok(refused instanceof OpenAI.RateLimitError, String(refused));
    const headers = (refused as InstanceType<typeof OpenAI.RateLimitError>).headers;
    assert.ok(Number(headers?.get('retry-after')) >= 1);
    assert.ok(Number(headers?.get('retry-after-ms')) > 0);
    const patient = client('tight', 3);
    const ok = await patient.embeddings.create({ model: 'text-glove', input: words(15) });
    assert.equal(ok.data.length, 1);
  });
});
