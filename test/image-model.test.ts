/**
 * The converted image encoder and NSFW head against `@tensorflow/tfjs` running the original TF.js graph
 * (pure-JS CPU backend), plus the TF.js reader's dequantisation and the converter's other op mappings on
 * a small hand-made graph.
 *
 * Tolerances (float32 on both sides, different summation orders and ORT's fused kernels):
 *   - weights: bit-identical to tfjs's own dequantisation;
 *   - pooled feature: max |Δ| ≤ 2e-4 absolute on values up to ~10 (measured ~1.5e-5);
 *   - embedding: cosine(onnx, tfjs) ≥ 0.999999;
 *   - head probabilities: max |Δ| ≤ 1e-5 (measured ~1e-6).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { before, describe, test } from 'node:test';

import * as tf from '@tensorflow/tfjs';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';

import { preprocessImage } from '../src/images/preprocess.ts';
import { buildModels } from '../src/models/build.ts';
import { FEATURE_DIMENSIONS, NSFW_LABELS, buildHeadGraph, buildImageGraph, graphEndpoints, loadSourceGraph } from '../src/models/mobilenet.ts';
import { OnnxModelBuilder } from '../src/models/onnx-writer.ts';
import { convertTfjsGraph } from '../src/models/tfjs-onnx.ts';
import { float16BitsToFloat32 as float16ToFloat32 } from '../src/cache/codec.ts';
import { decodeWeights, type TfjsGraph, type TfNode, type TfWeightSpec } from '../src/models/tfjs.ts';
import { parseManifest, type PreprocessSpec } from '../src/runtime/manifest.ts';
import { MODELS_DIR } from './helpers/polyray.ts';

let graph: TfjsGraph;
let reference: tf.GraphModel;

async function tfjsModel(g: TfjsGraph): Promise<tf.GraphModel> {
  await tf.setBackend('cpu');
  const w = g.weightData;
  return tf.loadGraphModel(
    tf.io.fromMemory({
      modelTopology: g.json.modelTopology as unknown as tf.io.ModelJSON['modelTopology'],
      weightSpecs: g.json.weightsManifest.flatMap((x) => x.weights) as tf.io.WeightsManifestEntry[],
      weightData: w.buffer.slice(w.byteOffset, w.byteOffset + w.byteLength) as ArrayBuffer,
    }),
  );
}

/** NCHW [n,3,s,s] → NHWC [n,s,s,3]. */
function toNhwc(x: Float32Array, n: number, s: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let b = 0; b < n; b++) for (let c = 0; c < 3; c++) for (let p = 0; p < s * s; p++) out[(b * s * s + p) * 3 + c] = x[(b * 3 + c) * s * s + p]!;
  return out;
}

/**
 * Two different test images, generated: a gradient (JPEG, 4:3, so it is resized and cropped) and drawn
 * shapes (SVG rendered to PNG). Two, because tfjs's pure-JS backend takes a few seconds per image.
 */
async function testImages(): Promise<Buffer[]> {
  const w = 320;
  const h = 240;
  const grad = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) grad.set([Math.round((x / w) * 255), Math.round((y / h) * 255), 128], (y * w + x) * 3);
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="256" height="300"><rect width="256" height="300" fill="#2a6"/>
    <circle cx="128" cy="120" r="70" fill="#fc3"/><rect x="30" y="200" width="190" height="60" fill="#a22"/></svg>`;
  return Promise.all([
    sharp(grad, { raw: { width: w, height: h, channels: 3 } })
      .jpeg({ quality: 90 })
      .toBuffer(),
    sharp(Buffer.from(svg)).png().toBuffer(),
  ]);
}

describe('image-mobilenet and head-nsfw conversion', () => {
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: ['image-mobilenet', 'head-nsfw'] });
    graph = (await loadSourceGraph()).graph;
    reference = await tfjsModel(graph);
  });

  test('dequantised weights are identical to what tfjs decodes', () => {
    const ref = reference.weights;
    let checked = 0;
    for (const [name, w] of graph.weights) {
      const t = ref[name]?.[0];
      assert.ok(t, `tfjs has weight ${name}`);
      const r = t.dataSync();
      assert.equal(r.length, w.values.length);
      for (let i = 0; i < r.length; i++) if (r[i] !== w.values[i]) assert.fail(`${name}[${i}]: ${w.values[i]} vs tfjs ${r[i]}`);
      checked++;
    }
    assert.equal(checked, 108);
  });

  test('ONNX feature, embedding and head match tfjs on the original graph', async () => {
    const manifest = parseManifest(JSON.parse(await readFile(path.join(MODELS_DIR, 'image-mobilenet', 'manifest.json'), 'utf8')), 'image-mobilenet');
    const spec = manifest.preprocess as PreprocessSpec;
    const images = await testImages();
    const n = images.length;
    const s = spec.size;
    const batch = new Float32Array(n * 3 * s * s);
    for (const [i, img] of images.entries()) batch.set((await preprocessImage(img, spec, { maxPixels: 1e8 })).tensor, i * 3 * s * s);

    const session = await ort.InferenceSession.create(path.join(MODELS_DIR, 'image-mobilenet', 'model.onnx'), { intraOpNumThreads: 2 });
    const head = await ort.InferenceSession.create(path.join(MODELS_DIR, 'head-nsfw', 'model.onnx'));
    const out = await session.run({ pixels: new ort.Tensor('float32', batch, [n, 3, s, s]) });
    const feature = out['feature']!.data as Float32Array;
    const embedding = out['embedding']!.data as Float32Array;
    const probs = (await head.run({ feature: new ort.Tensor('float32', feature, [n, FEATURE_DIMENSIONS]) }))['probabilities']!.data as Float32Array;

    const ends = graphEndpoints(graph);
    const [rf, rp] = reference.execute(tf.tensor(toNhwc(batch, n, s), [n, s, s, 3]), [ends.feature, ends.output]) as tf.Tensor[];
    const refFeature = rf!.dataSync();
    const refProbs = rp!.dataSync();

    let maxAbs = 0;
    let maxVal = 0;
    for (let i = 0; i < refFeature.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(refFeature[i]! - feature[i]!));
      maxVal = Math.max(maxVal, Math.abs(refFeature[i]!));
    }
    assert.ok(maxVal > 1, 'features are not degenerate');
    assert.ok(maxAbs <= 2e-4, `feature max |Δ| ${maxAbs}`);
    for (let b = 0; b < n; b++) {
      const f = refFeature.slice(b * FEATURE_DIMENSIONS, (b + 1) * FEATURE_DIMENSIONS);
      const e = embedding.slice(b * FEATURE_DIMENSIONS, (b + 1) * FEATURE_DIMENSIONS);
      let dot = 0;
      let nf = 0;
      let ne = 0;
      for (let i = 0; i < FEATURE_DIMENSIONS; i++) {
        dot += f[i]! * e[i]!;
        nf += f[i]! * f[i]!;
        ne += e[i]! * e[i]!;
      }
      assert.ok(Math.abs(Math.sqrt(ne) - 1) < 1e-5, 'embedding is unit length');
      assert.ok(dot / Math.sqrt(nf * ne) >= 0.999999, `image ${b}: cosine ${dot / Math.sqrt(nf * ne)}`);
    }
    let pAbs = 0;
    for (let i = 0; i < refProbs.length; i++) pAbs = Math.max(pAbs, Math.abs(refProbs[i]! - probs[i]!));
    assert.ok(pAbs <= 1e-5, `probability max |Δ| ${pAbs}`);
    // Different images give different features.
    let d01 = 0;
    for (let i = 0; i < FEATURE_DIMENSIONS; i++) d01 += embedding[i]! * embedding[FEATURE_DIMENSIONS + i]!;
    assert.ok(d01 < 0.99);
    await session.release();
    await head.release();
  });

  test('manifests describe real, converted models', async () => {
    const read = async (m: string) => parseManifest(JSON.parse(await readFile(path.join(MODELS_DIR, m, 'manifest.json'), 'utf8')), m);
    const img = await read('image-mobilenet');
    assert.equal(img.modality, 'image');
    assert.equal(img.dimensions, 1792);
    assert.equal(img.synthetic, false);
    assert.match(img.version, /^[0-9a-f]{16}$/);
    assert.deepEqual(img.preprocess, { size: 224, resize: 'cover', scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1], layout: 'nchw' });
    assert.equal(img.tokenizer, undefined);
    assert.deepEqual(
      img.outputs.map((o) => o.name),
      ['embedding', 'feature'],
    );
    assert.match(img.source, /nsfwjs@[\d.]+ \(MIT/);
    const head = await read('head-nsfw');
    assert.deepEqual(head.head, { input: 'image-mobilenet', inputOutput: 'feature', inputVersion: img.version, labels: [...NSFW_LABELS] });
    assert.equal(head.dimensions, 5);
    // Conversion is deterministic: converting again gives the same bytes, hence the same version.
    const again = buildImageGraph(graph).model.serialize();
    assert.equal((await readFile(path.join(MODELS_DIR, 'image-mobilenet', 'model.onnx'))).equals(Buffer.from(again)), true);
    assert.ok(buildHeadGraph(graph).ops['_FusedMatMul'] === 1);
  });
});

// ---------------------------------------------------------------------------------------------
// The reader and converter on a small hand-made TF.js graph with ops MobileNet does not use.
// ---------------------------------------------------------------------------------------------

const b64 = (s: string): string => Buffer.from(s).toString('base64');
const ints = (...v: number[]) => ({ list: { i: v.map(String) } });
const T = { T: { type: 'DT_FLOAT' } };

function rand(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (x * 1664525 + 1013904223) >>> 0;
    out[i] = (x / 2 ** 32) * 2 - 1;
  }
  return out;
}

/** Builds weights: float32, int32 and uint8/uint16/float16-quantised, as TF.js stores them. */
function encodeWeights(
  ws: { name: string; shape: number[]; values: Float32Array | Int32Array; store: 'float32' | 'int32' | 'uint8' | 'uint16' | 'float16' }[],
) {
  const specs: TfWeightSpec[] = [];
  const parts: Buffer[] = [];
  for (const w of ws) {
    if (w.store === 'float32') {
      specs.push({ name: w.name, shape: w.shape, dtype: 'float32' });
      parts.push(Buffer.from(new Float32Array(w.values).buffer));
    } else if (w.store === 'int32') {
      specs.push({ name: w.name, shape: w.shape, dtype: 'int32' });
      parts.push(Buffer.from(new Int32Array(w.values).buffer));
    } else if (w.store === 'float16') {
      specs.push({ name: w.name, shape: w.shape, dtype: 'float32', quantization: { dtype: 'float16' } });
      const half = new Uint16Array(w.values.length);
      w.values.forEach((v, i) => {
        half[i] = toHalf(v);
      });
      parts.push(Buffer.from(half.buffer));
    } else {
      const levels = w.store === 'uint8' ? 255 : 65535;
      const min = Math.min(...w.values);
      const scale = (Math.max(...w.values) - min) / levels;
      specs.push({ name: w.name, shape: w.shape, dtype: 'float32', quantization: { dtype: w.store, min, scale } });
      const q = w.store === 'uint8' ? new Uint8Array(w.values.length) : new Uint16Array(w.values.length);
      w.values.forEach((v, i) => {
        q[i] = Math.round((v - min) / scale);
      });
      parts.push(Buffer.from(q.buffer));
    }
  }
  return { specs, data: Buffer.concat(parts) };
}

function toHalf(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer)[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  const mant = (u >>> 13) & 0x3ff;
  if (exp <= 0) return sign;
  return sign | (exp << 10) | mant;
}

describe('TF.js reader and converter on a synthetic graph', () => {
  test('float16 decoding follows IEEE 754', () => {
    assert.equal(float16ToFloat32(0x3c00), 1);
    assert.equal(float16ToFloat32(0xc000), -2);
    assert.equal(float16ToFloat32(0x0001), 2 ** -24);
    assert.equal(float16ToFloat32(0x7c00), Infinity);
    assert.ok(Number.isNaN(float16ToFloat32(0x7e00)));
  });

  test('a manifest whose bytes do not add up is refused', () => {
    assert.throws(() => decodeWeights([{ paths: ['x'], weights: [{ name: 'a', shape: [4], dtype: 'float32' }] }], [new Uint8Array(12)]), /needs bytes/);
    assert.throws(() => decodeWeights([{ paths: ['x'], weights: [{ name: 'a', shape: [2], dtype: 'float32' }] }], [new Uint8Array(12)]), /describes 8 bytes/);
  });

  test('Pad, Conv2D VALID/stride 2, BiasAdd, Relu, depthwise ×2 SAME, channel Mul, Max/AvgPool, ConcatV2, Mean, MatMul^T, Softmax match tfjs', async () => {
    const { specs, data } = encodeWeights([
      { name: 'paddings', shape: [4, 2], values: Int32Array.from([0, 0, 1, 0, 0, 1, 0, 0]), store: 'int32' },
      { name: 'w1', shape: [3, 3, 2, 4], values: rand(72, 1), store: 'uint16' },
      { name: 'b1', shape: [4], values: rand(4, 2), store: 'float32' },
      { name: 'wd', shape: [3, 3, 4, 2], values: rand(72, 3), store: 'float16' },
      { name: 'scale', shape: [8], values: rand(8, 4), store: 'uint8' },
      { name: 'concat_axis', shape: [], values: Int32Array.from([3]), store: 'int32' },
      { name: 'mean_axes', shape: [2], values: Int32Array.from([1, 2]), store: 'int32' },
      { name: 'w2', shape: [3, 16], values: rand(48, 5), store: 'float32' },
    ]);
    const c = (name: string, dtype = 'DT_FLOAT'): TfNode => ({
      name,
      op: 'Const',
      attr: { dtype: { type: dtype }, value: { tensor: { dtype } } } as TfNode['attr'],
    });
    const nodes: TfNode[] = [
      {
        name: 'x',
        op: 'Placeholder',
        attr: { dtype: { type: 'DT_FLOAT' }, shape: { shape: { dim: [{ size: '-1' }, { size: '9' }, { size: '9' }, { size: '2' }] } } },
      },
      c('paddings', 'DT_INT32'),
      c('w1'),
      c('b1'),
      c('wd'),
      c('scale'),
      c('concat_axis', 'DT_INT32'),
      c('mean_axes', 'DT_INT32'),
      c('w2'),
      { name: 'pad', op: 'Pad', input: ['x', 'paddings'], attr: { ...T, Tpaddings: { type: 'DT_INT32' } } },
      {
        name: 'conv',
        op: 'Conv2D',
        input: ['pad', 'w1'],
        attr: { ...T, strides: ints(1, 2, 2, 1), padding: { s: b64('VALID') }, data_format: { s: b64('NHWC') }, dilations: ints(1, 1, 1, 1) },
      },
      { name: 'bias', op: 'BiasAdd', input: ['conv', 'b1'], attr: { ...T, data_format: { s: b64('NHWC') } } },
      { name: 'relu', op: 'Relu', input: ['bias'], attr: T },
      {
        name: 'dw',
        op: 'DepthwiseConv2dNative',
        input: ['relu', 'wd'],
        attr: { ...T, strides: ints(1, 1, 1, 1), padding: { s: b64('SAME') }, data_format: { s: b64('NHWC') }, dilations: ints(1, 1, 1, 1) },
      },
      { name: 'scaled', op: 'Mul', input: ['dw', 'scale'], attr: T },
      {
        name: 'maxp',
        op: 'MaxPool',
        input: ['scaled'],
        attr: { ...T, ksize: ints(1, 2, 2, 1), strides: ints(1, 2, 2, 1), padding: { s: b64('SAME') }, data_format: { s: b64('NHWC') } },
      },
      {
        name: 'avgp',
        op: 'AvgPool',
        input: ['scaled'],
        attr: { ...T, ksize: ints(1, 3, 3, 1), strides: ints(1, 2, 2, 1), padding: { s: b64('SAME') }, data_format: { s: b64('NHWC') } },
      },
      { name: 'cat', op: 'ConcatV2', input: ['maxp', 'avgp', 'concat_axis'], attr: { ...T, N: { i: '2' }, Tidx: { type: 'DT_INT32' } } },
      { name: 'mean', op: 'Mean', input: ['cat', 'mean_axes'], attr: { ...T, keep_dims: { b: false }, Tidx: { type: 'DT_INT32' } } },
      { name: 'logits', op: 'MatMul', input: ['mean', 'w2'], attr: { ...T, transpose_a: { b: false }, transpose_b: { b: true } } },
      { name: 'probs', op: 'Softmax', input: ['logits'], attr: T },
    ];
    const json = { modelTopology: { node: nodes, versions: { producer: 1 } }, weightsManifest: [{ paths: ['w'], weights: specs }] };
    const weights = decodeWeights(json.weightsManifest, [new Uint8Array(data)]);
    const g: TfjsGraph = { json, nodes: new Map(nodes.map((n) => [n.name, n])), weights, weightData: new Uint8Array(data) };

    const model = new OnnxModelBuilder({ graphName: 'synthetic' });
    const conv = convertTfjsGraph(model.graph, g, [{ tfName: 'x', onnxName: 'x', shape: ['batch', 2, 9, 9], layout: 'nchw' }], ['probs', 'dw']);
    model.graph.output(conv.outputs[0]!, 'float32', ['batch', 3], 'probs_out');
    model.graph.output(conv.outputs[1]!, 'float32', ['batch', 4, 4, 8], 'dw_out'); // back in NHWC for comparison
    const session = await ort.InferenceSession.create(model.serialize());

    const n = 2;
    const x = rand(n * 9 * 9 * 2, 9); // NHWC
    const xNchw = new Float32Array(x.length);
    for (let b = 0; b < n; b++) for (let p = 0; p < 81; p++) for (let ch = 0; ch < 2; ch++) xNchw[(b * 2 + ch) * 81 + p] = x[(b * 81 + p) * 2 + ch]!;
    const out = await session.run({ x: new ort.Tensor('float32', xNchw, [n, 2, 9, 9]) });

    const ref = await tfjsModel(g);
    const [rp, rdw] = ref.execute(tf.tensor(x, [n, 9, 9, 2]), ['probs', 'dw']) as tf.Tensor[];
    const close = (a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string) => {
      assert.equal(a.length, b.length, what);
      for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) <= tol, `${what}[${i}]: ${a[i]} vs ${b[i]}`);
    };
    assert.deepEqual(rdw!.shape, [n, 4, 4, 8]);
    close(out['dw_out']!.data as Float32Array, rdw!.dataSync(), 1e-5, 'depthwise');
    close(out['probs_out']!.data as Float32Array, rp!.dataSync(), 1e-6, 'probabilities');
    await session.release();
  });
});
