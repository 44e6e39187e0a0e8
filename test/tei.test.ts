/**
 * TEI-compatible `POST /embed` and `POST /tokenize` with plain fetch on TEI's documented request and
 * response shapes: vectors equal GraphQL's, `normalize`, `truncate` with `truncation_direction`,
 * `dimensions`, TEI's headers, token lists with byte offsets whose ids embed as their text does, and
 * errors as `{error, error_type}`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

describe('TEI-compatible /embed', () => {
  let t: TestServer;
  before(async () => {
    t = await startPolyray({ models: { defaultPostModel: 'text-glove', serve: ['text-glove', 'image-mobilenet', 'head-nsfw', 'text-bert-synthetic'] } });
  });
  after(async () => {
    await t?.stop();
  });

  const embed = async (body: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${t.url}/embed`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
    return { status: res.status, headers: res.headers, body: (await res.json()) as unknown };
  };
  const graphql = async (text: string, args = ''): Promise<number[]> => {
    const r = await t.gql<{ embed: { vector: number[] }[] }>(`query($t: String!) { embed(model: "text-glove", inputs: [{ text: $t }]${args}) { vector } }`, {
      t: text,
    });
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    return r.data!.embed[0]!.vector;
  };
  const close = (a: readonly number[], b: readonly number[]) => {
    assert.equal(a.length, b.length);
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) < 1e-6);
  };

  test('inputs as a string or a list: one vector per input, equal to GraphQL; TEI headers', async () => {
    const one = await embed({ inputs: 'the cat sat' });
    assert.equal(one.status, 200);
    const vectors = one.body as number[][];
    assert.equal(vectors.length, 1);
    close(vectors[0]!, await graphql('the cat sat'));
    const two = await embed({ inputs: ['the cat sat', 'a dog ran'] }, { 'x-polyray-model': 'text-glove' });
    close((two.body as number[][])[1]!, await graphql('a dog ran'));
    for (const h of ['x-compute-tokens', 'x-compute-time', 'x-inference-time', 'x-queue-time', 'x-polyray-cost', 'x-polyray-cache-hits']) {
      assert.ok(two.headers.get(h) !== null, h);
    }
    assert.equal(two.headers.get('x-polyray-cache-hits'), '1', 'the first text was cached by the call before');
  });

  test('dimensions cut and re-normalise; truncate cuts on the direction asked', async () => {
    const r = await embed({ inputs: 'a matryoshka cut', dimensions: 8 });
    close((r.body as number[][])[0]!, await graphql('a matryoshka cut', ', dimensions: 8'));
    const long = `${Array.from({ length: 600 }, (_, i) => (i % 2 ? 'cat' : 'dog')).join(' ')} end`;
    const refused = await embed({ inputs: long });
    assert.equal(refused.status, 413);
    assert.equal((refused.body as { error_type: string }).error_type, 'Validation');
    const right = await embed({ inputs: long, truncate: true });
    const left = await embed({ inputs: long, truncate: true, truncation_direction: 'Left' });
    assert.equal(right.status, 200);
    assert.equal(left.status, 200);
    assert.notDeepEqual(right.body, left.body, 'cutting the other end is another vector');
  });

  test('errors as {error, error_type}; the server keeps serving', async () => {
    for (const body of [
      { inputs: 42 },
      { inputs: [] },
      { inputs: ['ok', 1] },
      { inputs: [[1, -1]] },
      { inputs: 'x', prompt_name: 3 },
      { inputs: 'x', truncate: 'yes' },
      {},
      { inputs: 'x', normalize: 'yes' },
      { inputs: 'x', truncation_direction: 'Up' },
      { inputs: 'x', dimensions: 'four' },
    ]) {
      const r = await embed(body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal((r.body as { error_type: string }).error_type, 'Validation');
      assert.equal(typeof (r.body as { error: string }).error, 'string');
    }
    const unknown = await embed({ inputs: 'x' }, { 'x-polyray-model': 'nope' });
    assert.equal(unknown.status, 404);
    const broken = await fetch(`${t.url}/embed`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"inputs": ' });
    assert.equal(broken.status, 400);
    assert.equal(((await broken.json()) as { error_type: string }).error_type, 'Validation');
    assert.equal((await embed({ inputs: 'still here' })).status, 200);
  });

  const tokenize = async (body: unknown, model = 'text-bert-synthetic') => {
    const res = await fetch(`${t.url}/tokenize`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-polyray-model': model },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as unknown };
  };
  interface SimpleToken {
    id: number;
    text: string;
    special: boolean;
    start: number | null;
    stop: number | null;
  }

  test('/tokenize: TEI token lists with byte offsets; add_special_tokens; the ids embed as their text does', async () => {
    const text = 'Café au lait, 漢字 and an emoji 🙂!';
    const r = await tokenize({ inputs: text });
    assert.equal(r.status, 200);
    const [tokens] = r.body as SimpleToken[][];
    assert.ok(tokens && tokens.length > 4);
    assert.deepEqual(
      [tokens[0]!.special, tokens.at(-1)!.special, tokens[0]!.start, tokens[0]!.text],
      [true, true, null, '[CLS]'],
      'BERT puts [CLS] … [SEP] around a text',
    );
    const bytes = Buffer.from(text);
    let last = 0;
    for (const tok of tokens.slice(1, -1)) {
      assert.equal(tok.special, false);
      assert.ok(tok.start !== null && tok.stop !== null && tok.start >= last && tok.stop > tok.start, JSON.stringify(tok));
      assert.equal(tok.text, bytes.subarray(tok.start, tok.stop).toString(), 'text is the input between the offsets');
      last = tok.stop;
    }
    const cafe = tokens.find((x) => x.text === 'Café');
    assert.ok(cafe, 'the uncased "cafe" piece points at "Café" in the input');
    const bare = await tokenize({ inputs: [text, 'second'], add_special_tokens: false });
    const lists = bare.body as SimpleToken[][];
    assert.equal(lists.length, 2);
    assert.deepEqual(
      lists[0]!.map((x) => x.id),
      tokens.slice(1, -1).map((x) => x.id),
    );
    // The ids with their special tokens are what the model reads: /embed with them equals /embed with the text.
    const hdr = { 'x-polyray-model': 'text-bert-synthetic' };
    const byText = (await embed({ inputs: text }, hdr)).body as number[][];
    const byIds = await embed({ inputs: tokens.map((x) => x.id) }, hdr);
    assert.equal(byIds.status, 200);
    close((byIds.body as number[][])[0]!, byText[0]!);
  });

  test('a word model (GloVe): ids of unknown words are masked as their text was, so ids and text embed alike', async () => {
    const text = 'the cat sat on the qzxqzvv mat';
    const tokens = (await tokenize({ inputs: text }, 'text-glove')).body as SimpleToken[][];
    const ids = tokens[0]!.map((x) => x.id);
    assert.ok(ids.includes(0), 'the made-up word is unknown (id 0)');
    const hdr = { 'x-polyray-model': 'text-glove' };
    const byText = (await embed({ inputs: text }, hdr)).body as number[][];
    const byIds = (await embed({ inputs: ids }, hdr)).body as number[][];
    close(byIds[0]!, byText[0]!);
  });

  test('/tokenize refuses what /embed refuses, in TEI shape; the server keeps serving', async () => {
    for (const [body, status] of [
      [{ inputs: 42 }, 400],
      [{ inputs: [] }, 400],
      [{ inputs: [[1, 2]] }, 400],
      [{ inputs: 'x', add_special_tokens: 'no' }, 400],
      [{ inputs: Array.from({ length: 10_000 }, () => 'x') }, 413],
      [{ inputs: 'x'.repeat(70_000) }, 413],
      [{ inputs: 'word '.repeat(600) }, 413],
    ] as const) {
      const r = await tokenize(body);
      assert.equal(r.status, status, JSON.stringify(body).slice(0, 80));
      assert.equal((r.body as { error_type: string }).error_type, 'Validation');
    }
    assert.equal((await tokenize({ inputs: 'x' }, 'no-such-model')).status, 404);
    assert.equal((await tokenize({ inputs: 'x' }, 'image-mobilenet')).status, 400);
    assert.equal((await tokenize({ inputs: 'still here' })).status, 200);
  });
});
