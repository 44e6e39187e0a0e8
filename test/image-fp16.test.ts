/**
 * image-mobilenet-fp16 (the image encoder in float16, for GPU providers) on the CPU EP: its manifest says
 * what it is for and keeps image-mobilenet's interface, its graph stores float16 weights between float32
 * input and outputs, its vectors agree with image-mobilenet's on several test images, and the service
 * serves it by name on a replica that serves it instead of the fp32 encoder (as a GPU replica would), where
 * head-nsfw, built for the fp32 encoder, is refused.
 *
 * Agreement, CPU EP, six images in one batch (measured when this was written): cosine 0.999983–0.999993,
 * pooled feature max |Δ| 0.030 on values up to 5.5. Asserted: cosine ≥ 0.9999 and feature max |Δ| ≤ 0.15,
 * about 5× the measured error; a broken graph (a wrong layout, a lost bias) gives cosines far below 0.99.
 * The CPU EP has no float16 kernels for most of these nodes: when it creates the session, ORT casts the
 * float16 weights back to float32 and computes in float32 (only the pooled feature is still rounded to
 * float16), so this measures the rounding of the weights. Float16 compute is measured on WebGPU in
 * test/providers.test.ts (cosine ≥ 0.99988 there).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as ort from 'onnxruntime-node';

import { preprocessImage } from '../src/images/preprocess.ts';
import { buildModels } from '../src/models/build.ts';
import { FEATURE_DIMENSIONS, HEAD_MODEL, IMAGE_FP16_MODEL, IMAGE_MODEL } from '../src/models/mobilenet.ts';
import { decodeModel } from '../src/models/onnx-writer.ts';
import { parseManifest, type ModelManifest, type PreprocessSpec } from '../src/runtime/manifest.ts';
import { patternImage, solidImage } from './helpers/images.ts';
import { MODELS_DIR, cosine, norm, startPolyray, type TestServer } from './helpers/polyray.ts';

const D = FEATURE_DIMENSIONS;
const MIN_COSINE = 0.9999;
const MAX_FEATURE_DIFF = 0.15;

let fp32: ort.InferenceSession;
let fp16: ort.InferenceSession;
let spec: PreprocessSpec;
let images: Buffer[];

async function manifestOf(name: string): Promise<{ raw: Record<string, unknown>; m: ModelManifest }> {
  const raw = JSON.parse(await readFile(path.join(MODELS_DIR, name, 'manifest.json'), 'utf8')) as Record<string, unknown>;
  return { raw, m: parseManifest(raw, `${name}/manifest.json`) };
}

/** One batch through a session: rows of the unit embedding and of the raw feature. */
async function run(session: ort.InferenceSession, pixels: Float32Array, n: number): Promise<{ embedding: Float32Array[]; feature: Float32Array[] }> {
  const s = spec.size;
  const out = await session.run({ pixels: new ort.Tensor('float32', pixels, [n, 3, s, s]) });
  const rows = (name: string): Float32Array[] => {
    const t = out[name]!;
    assert.equal(t.type, 'float32', name);
    assert.deepEqual(t.dims, [n, D], name);
    const data = t.data as Float32Array;
    return Array.from({ length: n }, (_, r) => data.slice(r * D, (r + 1) * D));
  };
  return { embedding: rows('embedding'), feature: rows('feature') };
}

async function pixelsOf(imgs: readonly Buffer[]): Promise<Float32Array> {
  const per = 3 * spec.size * spec.size;
  const batch = new Float32Array(imgs.length * per);
  for (const [i, img] of imgs.entries()) batch.set((await preprocessImage(img, spec, { maxPixels: 1e8 })).tensor, i * per);
  return batch;
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>): number => cosine(a as number[], b as number[]);

describe('image-mobilenet-fp16', () => {
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [IMAGE_MODEL, IMAGE_FP16_MODEL] });
    spec = (await manifestOf(IMAGE_FP16_MODEL)).m.preprocess!;
    const options: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', intraOpNumThreads: 2 };
    fp32 = await ort.InferenceSession.create(path.join(MODELS_DIR, IMAGE_MODEL, 'model.onnx'), options);
    fp16 = await ort.InferenceSession.create(path.join(MODELS_DIR, IMAGE_FP16_MODEL, 'model.onnx'), options);
    // Different formats and shapes (resized, cropped, exact 224), patterns and flat colours.
    images = await Promise.all([
      patternImage(200, 160, 1, 'png'),
      patternImage(320, 240, 7, 'jpeg'),
      patternImage(224, 224, 42, 'webp'),
      patternImage(256, 300, 13, 'gif'),
      solidImage(100, 100, [200, 30, 40]),
      solidImage(64, 48, [20, 120, 220], 'jpeg'),
    ]);
  });
  after(async () => {
    await fp32?.release();
    await fp16?.release();
  });

  test("manifest: precision fp16, meant for GPU providers, image-mobilenet's interface under its own version", async () => {
    const { raw, m } = await manifestOf(IMAGE_FP16_MODEL);
    const { m: base } = await manifestOf(IMAGE_MODEL);
    assert.equal(m.name, IMAGE_FP16_MODEL);
    assert.equal(raw['precision'], 'fp16');
    assert.deepEqual(raw['intendedProviders'], ['cuda', 'webgpu']);
    assert.match(m.version, /^[0-9a-f]{16}$/);
    assert.notEqual(m.version, base.version, 'its vectors differ from the fp32 model: its own cache keys');
    for (const k of ['modality', 'dimensions', 'maxTokens', 'costFactor', 'synthetic', 'inputs', 'outputs', 'preprocess', 'source'] as const) {
      assert.deepEqual(m[k], base[k], k);
    }
    assert.equal(m.head, undefined);
    assert.match(m.description, /float16/);
    assert.match(m.description, /GPU/);
    assert.deepEqual(fp16.inputNames, ['pixels']);
    assert.deepEqual(fp16.outputNames, ['embedding', 'feature']);
  });

  test('the graph stores float16 weights and converts at both ends; half the file size', async () => {
    const bytes = await readFile(path.join(MODELS_DIR, IMAGE_FP16_MODEL, 'model.onnx'));
    const base = await readFile(path.join(MODELS_DIR, IMAGE_MODEL, 'model.onnx'));
    assert.ok(bytes.byteLength < base.byteLength * 0.55, `${bytes.byteLength} vs ${base.byteLength}`);
    type Graph = {
      initializer?: { name?: string; data_type?: number; dims?: number[] }[];
      node?: { op_type?: string; input?: string[]; output?: string[] }[];
      input?: unknown[];
    };
    const g = (decodeModel(bytes) as { graph?: Graph }).graph!;
    const inits = g.initializer ?? [];
    const floats = inits.filter((t) => t.data_type === 1 || t.data_type === 10);
    // Every float constant is float16 except the L2 guard, which belongs to the float32 normalisation.
    assert.deepEqual(
      floats.filter((t) => t.data_type === 1).map((t) => t.name),
      ['l2_epsilon'],
    );
    assert.ok(floats.filter((t) => t.data_type === 10).length >= 108, `${floats.length} float initializers`);
    const casts = (g.node ?? []).filter((n) => n.op_type === 'Cast');
    assert.equal(casts.length, 2, 'one Cast after pixels, one before the normalisation');
    assert.deepEqual(casts[0]!.input, ['pixels']);
  });

  test(`vectors agree with image-mobilenet: cosine >= ${MIN_COSINE}, feature max |Δ| <= ${MAX_FEATURE_DIFF}`, async () => {
    const pixels = await pixelsOf(images);
    const [a, b] = [await run(fp32, pixels, images.length), await run(fp16, pixels, images.length)];
    const cosines = images.map((_, r) => dot(a.embedding[r]!, b.embedding[r]!));
    let maxDiff = 0;
    let maxValue = 0;
    for (let r = 0; r < images.length; r++) {
      for (let k = 0; k < D; k++) {
        maxDiff = Math.max(maxDiff, Math.abs(a.feature[r]![k]! - b.feature[r]![k]!));
        maxValue = Math.max(maxValue, Math.abs(a.feature[r]![k]!));
      }
    }
    console.log(
      `fp16 vs fp32 (CPU EP, ${images.length} images): cosines ${cosines.map((c) => c.toFixed(7)).join(' ')}; feature max |Δ| ${maxDiff.toExponential(2)} on values up to ${maxValue.toFixed(2)}`,
    );
    cosines.forEach((c, r) => {
      assert.ok(c >= MIN_COSINE, `image ${r}: cosine ${c}`);
    });
    assert.ok(maxValue > 1, 'features are not degenerate');
    assert.ok(maxDiff <= MAX_FEATURE_DIFF, `feature max |Δ| ${maxDiff}`);
    for (const row of b.embedding) {
      assert.ok(row.every(Number.isFinite));
      assert.ok(Math.abs(Math.hypot(...row) - 1) < 1e-5, `norm ${Math.hypot(...row)}`);
    }
    assert.ok(dot(b.embedding[0]!, b.embedding[1]!) < 0.99, 'distinct images must not collapse');
  });

  describe('served in place of image-mobilenet (a GPU replica, here on the CPU provider)', () => {
    let t: TestServer;
    before(async () => {
      t = await startPolyray({ inference: { workers: 1 }, models: { serve: [IMAGE_FP16_MODEL, HEAD_MODEL] } }, { lowerTiers: [] });
    });
    after(async () => {
      await t?.stop();
    });

    test('Query.models: the fp16 encoder is ready; head-nsfw, built for the fp32 encoder, is not; no postray', async () => {
      const r = await t.gql<{ models: { name: string; version: string; state: string; executionProvider: string | null; error: string | null }[] }>(
        '{ models { name version state executionProvider error } }',
      );
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
      const byName = new Map(r.data!.models.map((m) => [m.name, m]));
      assert.deepEqual([...byName.keys()].sort(), [HEAD_MODEL, IMAGE_FP16_MODEL]);
      const enc = byName.get(IMAGE_FP16_MODEL)!;
      assert.equal(enc.state, 'READY');
      assert.equal(enc.executionProvider, 'cpu');
      assert.equal(enc.version, (await manifestOf(IMAGE_FP16_MODEL)).m.version);
      const head = byName.get(HEAD_MODEL)!;
      assert.equal(head.state, 'FAILED');
      assert.match(head.error ?? '', new RegExp(`${IMAGE_MODEL}@${(await manifestOf(IMAGE_MODEL)).m.version}`));
    });

    test('embed(model: "image-mobilenet-fp16", inputs: [{imageBase64}]) agrees with image-mobilenet run directly', async () => {
      const query = 'query($i: [EmbedInput!]!) { embed(model: "image-mobilenet-fp16", inputs: $i) { model dimensions vector source } }';
      const some = images.slice(0, 3);
      const r = await t.gql<{ embed: { model: string; dimensions: number; vector: number[]; source: string }[] }>(query, {
        i: some.map((b) => ({ imageBase64: b.toString('base64') })),
      });
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
      const reference = (await run(fp32, await pixelsOf(some), some.length)).embedding;
      const version = (await manifestOf(IMAGE_FP16_MODEL)).m.version;
      r.data!.embed.forEach((e, i) => {
        assert.equal(e.model, `${IMAGE_FP16_MODEL}@${version}`);
        assert.equal(e.dimensions, D);
        assert.equal(e.source, 'COMPUTED');
        assert.ok(Math.abs(norm(e.vector) - 1) < 1e-4);
        const c = cosine(e.vector, Array.from(reference[i]!));
        assert.ok(c >= MIN_COSINE, `image ${i}: cosine ${c} to image-mobilenet`);
      });
    });
  });
});
