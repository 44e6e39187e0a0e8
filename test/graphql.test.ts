import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { cosine, norm, startPolyray, type TestServer } from './helpers/polyray.ts';

const EMBED = `query($model: String!, $inputs: [EmbedInput!]!, $dimensions: Int, $enc: VectorEncoding) {
  embed(model: $model, inputs: $inputs, dimensions: $dimensions) { model dimensions vector source base64(encoding: $enc) }
}`;
type EmbedData = { embed: { model: string; dimensions: number; vector: number[]; source: string; base64: string }[] };

describe('GraphQL API', () => {
  let t: TestServer;
  before(async () => {
    t = await startPolyray({ limits: { maxInputsPerRequest: 8, maxInputBytes: 2000 } });
  });
  after(async () => {
    await t?.stop();
  });

  test('embed returns unit vectors of the model size, computed then served from memory', async () => {
    const inputs = [{ text: 'The cat sat on the mat.' }, { text: 'Stocks fell sharply on Monday.' }];
    const first = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs });
    assert.equal(first.errors, undefined);
    const e = first.data!.embed;
    assert.equal(e.length, 2);
    for (const x of e) {
      assert.match(x.model, /^text-glove@[0-9a-f]{16}$/);
      assert.equal(x.dimensions, 100);
      assert.equal(x.vector.length, 100);
      assert.ok(Math.abs(norm(x.vector) - 1) < 1e-4);
      assert.equal(x.source, 'COMPUTED');
    }
    const second = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs });
    assert.deepEqual(
      second.data!.embed.map((x) => x.source),
      ['MEMORY', 'MEMORY'],
    );
    assert.deepEqual(second.data!.embed[0]!.vector, e[0]!.vector);
  });

  test('whitespace-only differences share one cache entry', async () => {
    const a = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: 'a  brown   dog\nbarks' }] });
    const b = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: ' a brown dog barks ' }] });
    assert.equal(a.data!.embed[0]!.source, 'COMPUTED');
    assert.equal(b.data!.embed[0]!.source, 'MEMORY');
  });

  test('dimensions truncates and re-normalises', async () => {
    const full = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: 'truncation test sentence' }] });
    const cut = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: 'truncation test sentence' }], dimensions: 32 });
    const v = full.data!.embed[0]!.vector;
    const c = cut.data!.embed[0]!.vector;
    assert.equal(cut.data!.embed[0]!.dimensions, 32);
    assert.equal(c.length, 32);
    assert.ok(Math.abs(norm(c) - 1) < 1e-5);
    const n = norm(v.slice(0, 32));
    c.forEach((x, i) => {
      assert.ok(Math.abs(x - v[i]! / n) < 1e-5);
    });
  });

  test('base64 encodings decode back to the vector', async () => {
    const f32 = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: 'encode me' }], enc: 'FLOAT32' });
    const e = f32.data!.embed[0]!;
    const buf = Buffer.from(e.base64, 'base64');
    assert.equal(buf.length, 400);
    for (let i = 0; i < 100; i++) assert.equal(buf.readFloatLE(i * 4), Math.fround(e.vector[i]!));
    const i8 = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: 'encode me' }], enc: 'INT8' });
    const b8 = Buffer.from(i8.data!.embed[0]!.base64, 'base64');
    assert.equal(b8.length, 100);
    for (let i = 0; i < 100; i++) assert.ok(Math.abs(b8.readInt8(i) / 127 - e.vector[i]!) <= 0.5 / 127 + 1e-7);
    const f16 = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: 'encode me' }], enc: 'FLOAT16' });
    assert.equal(Buffer.from(f16.data!.embed[0]!.base64, 'base64').length, 200);
    const bin = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: 'encode me' }], enc: 'BINARY' });
    const bb = Buffer.from(bin.data!.embed[0]!.base64, 'base64');
    assert.equal(bb.length, 13);
    for (let i = 0; i < 100; i++) assert.equal(((bb[i >> 3]! >> (7 - (i & 7))) & 1) === 1, e.vector[i]! > 0);
  });

  test('related sentences are closer than unrelated ones through the API', async () => {
    const r = await t.gql<EmbedData>(EMBED, {
      model: 'text-glove',
      inputs: [{ text: 'The kitten is sleeping on the sofa.' }, { text: 'A cat naps on the couch.' }, { text: 'Interest rates rose at the central bank.' }],
    });
    const [a, b, c] = r.data!.embed.map((x) => x.vector) as [number[], number[], number[]];
    assert.ok(cosine(a, b) > cosine(a, c));
    assert.ok(cosine(a, b) > cosine(b, c));
  });

  test('unknown model is MODEL_NOT_FOUND', async () => {
    const r = await t.gql(EMBED, { model: 'nope', inputs: [{ text: 'x' }] });
    assert.equal(r.errors?.[0]?.extensions?.['code'], 'MODEL_NOT_FOUND');
    assert.match(r.errors![0]!.message, /text-glove/);
  });

  test('a misspelt model name is MODEL_NOT_FOUND with the closest served name; a far one gets no guess', async () => {
    const near = await t.gql(EMBED, { model: 'text-glov', inputs: [{ text: 'x' }] });
    assert.equal(near.errors?.[0]?.extensions?.['code'], 'MODEL_NOT_FOUND');
    assert.match(near.errors![0]!.message, /did you mean "text-glove"\?/);
    const far = await t.gql(EMBED, { model: 'qwen3-embedding', inputs: [{ text: 'x' }] });
    assert.doesNotMatch(far.errors![0]!.message, /did you mean/);
  });

  test('bad dimensions is BAD_USER_INPUT naming the range', async () => {
    for (const d of [0, -3, 101]) {
      const r = await t.gql(EMBED, { model: 'text-glove', inputs: [{ text: 'x' }], dimensions: d });
      assert.equal(r.errors?.[0]?.extensions?.['code'], 'BAD_USER_INPUT');
      assert.match(r.errors![0]!.message, /between 1 and 100/);
    }
  });

  test('too many inputs is TOO_MANY_INPUTS; an oversized input is INPUT_TOO_LARGE with its index', async () => {
    const many = await t.gql(EMBED, { model: 'text-glove', inputs: Array.from({ length: 9 }, (_, i) => ({ text: `t${i}` })) });
    assert.equal(many.errors?.[0]?.extensions?.['code'], 'TOO_MANY_INPUTS');
    const big = await t.gql(EMBED, { model: 'text-glove', inputs: [{ text: 'ok' }, { text: 'x'.repeat(2001) }] });
    assert.equal(big.errors?.[0]?.extensions?.['code'], 'INPUT_TOO_LARGE');
    assert.equal(big.errors?.[0]?.extensions?.['index'], 1);
    assert.equal(big.data, null);
  });

  test('too many tokens is INPUT_TOO_LARGE', async () => {
    const r = await t.gql(EMBED, { model: 'text-glove', inputs: [{ text: 'a '.repeat(600) }] });
    assert.equal(r.errors?.[0]?.extensions?.['code'], 'INPUT_TOO_LARGE');
    assert.equal(r.errors?.[0]?.extensions?.['limit'], 512);
  });

  test('an input must set exactly one field; wrong types are rejected by validation', async () => {
    const r = await t.gql(EMBED, { model: 'text-glove', inputs: [{}] });
    assert.equal(r.errors?.[0]?.extensions?.['code'], 'BAD_USER_INPUT');
    const wrong = await t.gql(EMBED, { model: 'text-glove', inputs: [{ text: 42 }] });
    assert.equal(wrong.errors?.[0]?.extensions?.['code'], 'BAD_USER_INPUT');
    const unknownField = await t.gql(EMBED, { model: 'text-glove', inputs: [{ txt: 'a' }] });
    assert.equal(unknownField.errors?.[0]?.extensions?.['code'], 'BAD_USER_INPUT');
  });

  test('an empty or unknown-word text embeds to a zero vector, not NaN', async () => {
    const r = await t.gql<EmbedData>(EMBED, { model: 'text-glove', inputs: [{ text: '' }, { text: 'qqqzzzxxy' }] });
    assert.equal(r.errors, undefined);
    for (const e of r.data!.embed) assert.ok(e.vector.every((x) => x === 0));
  });

  test('models lists text-glove as ready on the cpu provider', async () => {
    const r = await t.gql<{ models: Record<string, unknown>[] }>(
      '{ models { name version modality dimensions maxTokens synthetic state executionProvider costFactor description } }',
    );
    const g = r.data!.models.find((m) => m['name'] === 'text-glove')!;
    assert.equal(g['state'], 'READY');
    assert.equal(g['executionProvider'], 'cpu');
    assert.equal(g['dimensions'], 100);
    assert.equal(g['synthetic'], false);
    assert.equal(g['modality'], 'TEXT');
  });

  test('health and readiness routes', async () => {
    assert.equal((await fetch(`${t.url}/healthz`)).status, 200);
    const ready = await fetch(`${t.url}/readyz`);
    assert.equal(ready.status, 200);
    assert.equal(((await ready.json()) as { ok: boolean }).ok, true);
  });

  test('parse errors keep their code and carry no stack trace', async () => {
    const r = await t.gql('{ embed(');
    assert.equal(r.errors?.[0]?.extensions?.['code'], 'GRAPHQL_PARSE_FAILED');
    assert.equal(r.errors?.[0]?.extensions?.['stacktrace'], undefined);
  });
});
