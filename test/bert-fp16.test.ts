/**
 * text-bert-synthetic-fp16 (the plain graph in float16, for GPU providers) on the CPU EP: it builds,
 * its manifest says synthetic and what it is for, it agrees with the fp32 plain graph on a padded batch
 * (cosine per row; measured ≥ 0.99999 here, asserted ≥ 0.999), rows are unit vectors, padding does not
 * leak. Plus the float16 encoder of the ONNX writer. Models are built once into ./models (~1 s each).
 */

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as ort from 'onnxruntime-node';

import { BERT_FP16_MODEL, BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { float32ToFloat16Bits as float16Bits } from '../src/cache/codec.ts';
import { decodeModel } from '../src/models/onnx-writer.ts';
import { parseManifest } from '../src/runtime/manifest.ts';
import { WordPieceTokenizer } from '../src/runtime/wordpiece.ts';

const MODELS_DIR = path.resolve('models');
const DIMS = 384;
const SESSION_OPTIONS: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', executionMode: 'sequential', interOpNumThreads: 1 };

const SENTENCES = [
  'The cat sat on the mat.',
  'A kitten was sleeping on the rug, dreaming of enormous bowls of milk and slow, clumsy mice.',
  'Hi',
  'Stock markets fell sharply today after the central bank raised interest rates for the third time this year.',
  'Naïve café owners ☕ serve crème brûlée.',
  'embeddings',
];

let fp32: ort.InferenceSession;
let fp16: ort.InferenceSession;
let tokenizer: WordPieceTokenizer;

/** Runs one session on a right-padded batch (pad id 0, mask 0, token types 0); one row per text. */
async function embed(session: ort.InferenceSession, texts: readonly string[]): Promise<Float32Array[]> {
  const encs = texts.map((t) => tokenizer.encode(t));
  const t = Math.max(...encs.map((e) => e.ids.length));
  const ids = new BigInt64Array(texts.length * t);
  const mask = new BigInt64Array(texts.length * t);
  encs.forEach((e, r) => {
    e.ids.forEach((id, j) => {
      ids[r * t + j] = BigInt(id);
      mask[r * t + j] = 1n;
    });
  });
  const out = await session.run({
    input_ids: new ort.Tensor('int64', ids, [texts.length, t]),
    attention_mask: new ort.Tensor('int64', mask, [texts.length, t]),
    token_type_ids: new ort.Tensor('int64', new BigInt64Array(texts.length * t), [texts.length, t]),
  });
  const emb = out['embedding']!;
  assert.equal(emb.type, 'float32');
  assert.deepEqual(emb.dims, [texts.length, DIMS]);
  const data = emb.data as Float32Array;
  return texts.map((_, r) => data.slice(r * DIMS, (r + 1) * DIMS));
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

describe('text-bert-synthetic-fp16', () => {
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [BERT_MODELS.plain, BERT_FP16_MODEL] });
    tokenizer = await WordPieceTokenizer.load(path.join(MODELS_DIR, BERT_FP16_MODEL, 'tokenizer.json'));
    fp32 = await ort.InferenceSession.create(path.join(MODELS_DIR, BERT_MODELS.plain, 'model.onnx'), SESSION_OPTIONS);
    fp16 = await ort.InferenceSession.create(path.join(MODELS_DIR, BERT_FP16_MODEL, 'model.onnx'), SESSION_OPTIONS);
  });
  after(async () => {
    await fp32?.release();
    await fp16?.release();
  });

  test('manifest: synthetic, same interface as the fp32 model, says it is meant for GPU providers', async () => {
    const dir = path.join(MODELS_DIR, BERT_FP16_MODEL);
    const raw = JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    const m = parseManifest(raw, `${BERT_FP16_MODEL}/manifest.json`);
    assert.equal(m.name, BERT_FP16_MODEL);
    assert.equal(m.synthetic, true);
    assert.equal(m.dimensions, DIMS);
    assert.match(m.description, /no meaning/);
    assert.match(m.description, /GPU/);
    assert.equal(raw['precision'], 'fp16');
    assert.deepEqual(raw['intendedProviders'], ['cuda', 'webgpu']);
    assert.deepEqual(m.outputs, [{ name: 'embedding', type: 'float32', shape: ['batch', DIMS] }]);
    const plain = parseManifest(JSON.parse(await readFile(path.join(MODELS_DIR, BERT_MODELS.plain, 'manifest.json'), 'utf8')), 'plain');
    assert.deepEqual(m.inputs, plain.inputs);
    assert.notEqual(m.version, plain.version);
    assert.deepEqual(fp16.inputNames, ['input_ids', 'attention_mask', 'token_type_ids']);
    assert.deepEqual(fp16.outputNames, ['embedding']);
  });

  test('the graph stores its weights as float16 and pools in float32', async () => {
    const bytes = await readFile(path.join(MODELS_DIR, BERT_FP16_MODEL, 'model.onnx'));
    const plainBytes = await readFile(path.join(MODELS_DIR, BERT_MODELS.plain, 'model.onnx'));
    // Half the weight bytes (tokenizer-free model file: weights dominate).
    assert.ok(bytes.byteLength < plainBytes.byteLength * 0.55, `${bytes.byteLength} vs ${plainBytes.byteLength}`);
    const model = decodeModel(bytes) as { graph?: { initializer?: { name?: string; data_type?: number }[]; node?: { name?: string; op_type?: string }[] } };
    const inits = model.graph?.initializer ?? [];
    const word = inits.find((t) => t.name === 'embeddings.word_embeddings.weight');
    assert.equal(word?.data_type, 10, 'word embeddings are float16');
    assert.ok((model.graph?.node ?? []).some((n) => n.name === 'hidden_float32' && n.op_type === 'Cast'));
  });

  test('fp16 agrees with fp32 on a padded batch: cosine >= 0.999; rows are unit vectors', async () => {
    const [a, b] = [await embed(fp32, SENTENCES), await embed(fp16, SENTENCES)];
    const cosines = SENTENCES.map((_, r) => dot(a[r]!, b[r]!));
    const maxAbs = Math.max(...SENTENCES.map((_, r) => Math.max(...a[r]!.map((x, i) => Math.abs(x - b[r]![i]!)))));
    console.log(`fp16 vs fp32 (CPU EP): min cosine ${Math.min(...cosines).toFixed(7)}, max |diff| ${maxAbs.toExponential(2)}`);
    cosines.forEach((c, r) => {
      assert.ok(c >= 0.999, `${SENTENCES[r]}: cosine ${c}`);
    });
    for (const row of b) {
      assert.ok(row.every(Number.isFinite));
      assert.ok(Math.abs(Math.hypot(...row) - 1) < 1e-5, `norm ${Math.hypot(...row)}`);
    }
    assert.ok(dot(b[0]!, b[3]!) < 0.999, 'distinct inputs must not collapse');
  });

  test('padding invariance: a sentence alone matches its row in the padded batch', async () => {
    const batch = await embed(fp16, SENTENCES);
    for (const [r, s] of SENTENCES.entries()) {
      const [alone] = await embed(fp16, [s]);
      assert.ok(dot(batch[r]!, alone!) >= 0.9999, `"${s}": cosine ${dot(batch[r]!, alone!)}`);
    }
  });

  test('float16Bits: exact values, rounding to nearest even, subnormals, overflow, NaN', () => {
    const cases: [number, number][] = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [0.5, 0x3800],
      [65504, 0x7bff], // largest finite
      [65520, 0x7c00], // rounds up to Inf
      [1e6, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // a tie: to even (zero)
      [1.5 * 2 ** -25, 0x0001],
      [1 + 2 ** -11, 0x3c00], // a tie: to even (1.0)
      [1 + 3 * 2 ** -11, 0x3c02], // a tie: to even (up)
      [-10000, 0xf0e2],
      [0.1, 0x2e66],
    ];
    for (const [x, bits] of cases) assert.equal(float16Bits(x), bits, `float16Bits(${x}) = 0x${float16Bits(x).toString(16)}`);
    assert.equal(float16Bits(NaN) & 0x7c00, 0x7c00);
    assert.notEqual(float16Bits(NaN) & 0x3ff, 0);
  });
});
