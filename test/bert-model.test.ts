/**
 * text-bert-synthetic, -fused and -int8 end to end through onnxruntime-node: the three graphs agree,
 * rows are unit vectors, padding does not leak into real tokens, builds are deterministic and
 * idempotent, manifests say synthetic. Models are built once into ./models (~1 s each).
 *
 * Timings (plain / fused / int8 at sequence 128, batch 8) are printed, never asserted: performance
 * belongs in the bench.
 */

import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as ort from 'onnxruntime-node';

import { BERT_MODELS, BERT_MODEL_NAMES, BUILDER_VERSION, buildBertSynthetic } from '../src/models/bert.ts';
import { generateBertWeights, quantizePerColumn, type BertConfig, type BertVariant } from '../src/models/bert-graph.ts';
import { buildModels } from '../src/models/build.ts';
import { parseManifest } from '../src/runtime/manifest.ts';
import { WordPieceTokenizer } from '../src/runtime/wordpiece.ts';

const MODELS_DIR = path.resolve('models');
const DIMS = 384;
const VARIANTS: BertVariant[] = ['plain', 'fused', 'int8'];
const SESSION_OPTIONS: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', executionMode: 'sequential', interOpNumThreads: 1 };

const SENTENCES = [
  'The cat sat on the mat.',
  'A kitten was sleeping on the rug, dreaming of enormous bowls of milk and slow, clumsy mice.',
  'Hi',
  'Stock markets fell sharply today after the central bank raised interest rates for the third time this year.',
  'Naïve café owners ☕ serve crème brûlée.',
  'embeddings',
];

const sessions = {} as Record<BertVariant, ort.InferenceSession>;
let tokenizer: WordPieceTokenizer;

/** Runs one session on a right-padded batch (pad id 0, mask 0, token types 0); one row per text. */
async function embed(session: ort.InferenceSession, texts: readonly string[], width?: number): Promise<Float32Array[]> {
  const encs = texts.map((t) => tokenizer.encode(t));
  const t = width ?? Math.max(...encs.map((e) => e.ids.length));
  const ids = new BigInt64Array(texts.length * t);
  const mask = new BigInt64Array(texts.length * t);
  encs.forEach((e, r) => {
    e.ids.slice(0, t).forEach((id, j) => {
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
  assert.deepEqual(emb.dims, [texts.length, DIMS]);
  const data = emb.data as Float32Array;
  return texts.map((_, r) => data.slice(r * DIMS, (r + 1) * DIMS));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

describe('text-bert-synthetic models', () => {
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: BERT_MODEL_NAMES });
    tokenizer = await WordPieceTokenizer.load(path.join(MODELS_DIR, BERT_MODELS.plain, 'tokenizer.json'));
    for (const v of VARIANTS) sessions[v] = await ort.InferenceSession.create(path.join(MODELS_DIR, BERT_MODELS[v], 'model.onnx'), SESSION_OPTIONS);
  });
  after(async () => {
    for (const s of Object.values(sessions)) await s?.release();
  });

  test('manifests: synthetic, 384-d, 512 tokens, wordpiece tokenizer, three distinct versions', async () => {
    const versions = new Set<string>();
    for (const v of VARIANTS) {
      const dir = path.join(MODELS_DIR, BERT_MODELS[v]);
      const m = parseManifest(JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')), `${BERT_MODELS[v]}/manifest.json`);
      assert.equal(m.name, BERT_MODELS[v]);
      assert.equal(m.synthetic, true);
      assert.equal(m.modality, 'text');
      assert.equal(m.dimensions, DIMS);
      assert.equal(m.maxTokens, 512);
      assert.ok(m.costFactor > 1);
      assert.deepEqual(m.tokenizer, { kind: 'wordpiece', file: 'tokenizer.json', lowercase: true });
      assert.deepEqual(m.runtime, { allowSpinning: true }, 'transformer manifests ask for spinning intra-op threads');
      assert.match(m.description, /no meaning/);
      assert.match(m.version, /^[0-9a-f]{16}$/);
      assert.deepEqual(
        m.inputs.map((i) => i.name),
        ['input_ids', 'attention_mask', 'token_type_ids'],
      );
      assert.deepEqual(sessions[v].inputNames, ['input_ids', 'attention_mask', 'token_type_ids']);
      assert.deepEqual(sessions[v].outputNames, ['embedding']);
      const info = JSON.parse(await readFile(path.join(dir, 'build-info.json'), 'utf8')) as Record<string, unknown>;
      assert.equal(info['version'], m.version);
      assert.equal(info['builderVersion'], BUILDER_VERSION);
      const config = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      assert.equal(config['hidden_size'], DIMS);
      versions.add(m.version);
    }
    assert.equal(versions.size, 3);
  });

  test('plain and fused graphs agree within 1e-4 on a padded batch', async () => {
    const [plain, fused] = [await embed(sessions.plain, SENTENCES), await embed(sessions.fused, SENTENCES)];
    SENTENCES.forEach((s, r) => {
      const d = maxAbsDiff(plain[r]!, fused[r]!);
      assert.ok(d <= 1e-4, `${s}: max |plain - fused| = ${d}`);
    });
  });

  test('int8 stays close to fp32: cosine >= 0.99', async () => {
    const [plain, int8] = [await embed(sessions.plain, SENTENCES), await embed(sessions.int8, SENTENCES)];
    const cosines = SENTENCES.map((_, r) => dot(plain[r]!, int8[r]!));
    console.log(`int8 vs fp32 cosine: min ${Math.min(...cosines).toFixed(6)}`);
    cosines.forEach((c, r) => {
      assert.ok(c >= 0.99, `${SENTENCES[r]}: cosine ${c}`);
    });
  });

  test('padding invariance: a sentence alone equals its row in a padded batch', async () => {
    for (const v of ['plain', 'fused'] as const) {
      const batch = await embed(sessions[v], SENTENCES);
      for (const [r, s] of SENTENCES.entries()) {
        const [alone] = await embed(sessions[v], [s]);
        const d = maxAbsDiff(batch[r]!, alone!);
        assert.ok(d <= 1e-4, `${v} "${s}": max |batch - alone| = ${d}`);
      }
    }
    // int8 quantises activations per tensor, i.e. over the whole batch: batch-mates shift the scale, so
    // a row moves a little (not a bug of padding; the same happens with any dynamic quantisation).
    const batch = await embed(sessions.int8, SENTENCES);
    for (const [r, s] of SENTENCES.entries()) {
      const [alone] = await embed(sessions.int8, [s]);
      assert.ok(dot(batch[r]!, alone!) >= 0.999, `int8 "${s}"`);
    }
  });

  test('rows are unit length and finite; different sentences differ', async () => {
    for (const v of VARIANTS) {
      const rows = await embed(sessions[v], SENTENCES);
      for (const row of rows) {
        assert.ok(row.every(Number.isFinite));
        assert.ok(Math.abs(Math.hypot(...row) - 1) < 1e-5, `${v}: norm ${Math.hypot(...row)}`);
      }
      assert.ok(dot(rows[0]!, rows[3]!) < 0.999, `${v}: distinct inputs must not collapse`);
    }
  });

  test('weights are deterministic and quantisation is per-column symmetric int8', () => {
    const small: BertConfig = { vocabSize: 50, hidden: 16, layers: 1, heads: 2, intermediate: 32, maxPositions: 8, typeVocabSize: 2, layerNormEps: 1e-12 };
    const a = generateBertWeights(small, 7);
    const b = generateBertWeights(small, 7);
    assert.deepEqual(a.wordEmbeddings, b.wordEmbeddings);
    assert.deepEqual(a.layers[0]!.w2, b.layers[0]!.w2);
    assert.notDeepEqual(generateBertWeights(small, 8).wordEmbeddings, a.wordEmbeddings);
    const std = Math.sqrt(a.wordEmbeddings.reduce((s, x) => s + x * x, 0) / a.wordEmbeddings.length);
    assert.ok(Math.abs(std - 0.02) < 0.003, `std ${std}`);
    assert.ok(a.layers[0]!.ln1Gamma.every((x) => x === 1) && a.layers[0]!.ln1Beta.every((x) => x === 0));

    const w = a.layers[0]!.w1; // [16, 32]
    const q = quantizePerColumn(w, 16, 32);
    for (let c = 0; c < 32; c++) {
      let maxQ = 0;
      for (let r = 0; r < 16; r++) {
        const v = q.values[r * 32 + c]!;
        maxQ = Math.max(maxQ, Math.abs(v));
        assert.ok(Math.abs(v * q.scales[c]! - w[r * 32 + c]!) <= q.scales[c]! / 2 + 1e-9);
      }
      assert.equal(maxQ, 127);
    }
  });

  test('a rebuild elsewhere gives the same bytes and version; a second build is up to date', async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-bert-'));
    try {
      const again = await buildBertSynthetic({ variant: 'int8', outDir: tmp });
      assert.equal(again.status, 'built');
      const here = JSON.parse(await readFile(path.join(MODELS_DIR, BERT_MODELS.int8, 'manifest.json'), 'utf8')) as { version: string };
      assert.equal(again.version, here.version);
      const [x, y] = await Promise.all([
        readFile(path.join(tmp, BERT_MODELS.int8, 'model.onnx')),
        readFile(path.join(MODELS_DIR, BERT_MODELS.int8, 'model.onnx')),
      ]);
      assert.ok(x.equals(y), 'model.onnx bytes differ between builds');
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    const summary = await buildModels({ modelsDir: MODELS_DIR, only: BERT_MODEL_NAMES });
    assert.deepEqual(
      summary.map((s) => [s.name, s.status]),
      BERT_MODEL_NAMES.map((n) => [n, 'up-to-date']),
    );
  });

  test('timings at sequence 128, batch 8 (printed, not asserted)', async () => {
    const words = 'the quick brown fox jumps over the lazy dog while embeddings are computed in batches'.split(' ');
    const long = Array.from({ length: 200 }, (_, i) => words[i % words.length]).join(' ');
    const texts = Array.from({ length: 8 }, (_, i) => `${i} ${long}`);
    // Rounds interleave the variants and the median is reported, so load from other processes on a
    // shared machine skews all three alike.
    const samples: Record<BertVariant, number[]> = { plain: [], fused: [], int8: [] };
    for (const v of VARIANTS) await embed(sessions[v], texts, 128); // warm-up
    for (let round = 0; round < 4; round++) {
      for (const v of VARIANTS) {
        const t0 = performance.now();
        await embed(sessions[v], texts, 128);
        samples[v].push(performance.now() - t0);
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
    const rate = Object.fromEntries(VARIANTS.map((v) => [v, (8 * 1000) / median(samples[v])])) as Record<BertVariant, number>;
    const lines = VARIANTS.map((v) => `${BERT_MODELS[v]}: ${median(samples[v]).toFixed(0)} ms/batch, ${rate[v].toFixed(1)} items/s`);
    console.log(`seq 128 × batch 8 on ${os.availableParallelism()} cores (ORT optimisation "all"):\n  ${lines.join('\n  ')}`);
    console.log(`relative to plain: fused ×${(rate.fused / rate.plain).toFixed(2)}, int8 ×${(rate.int8 / rate.plain).toFixed(2)}`);
  });
});
