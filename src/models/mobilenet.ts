/**
 * `image-mobilenet` and `head-nsfw`: a real pretrained image encoder and its 5-class head, converted
 * by us from the TF.js graph model that the npm package `nsfwjs` ships (`mobilenet_v2_mid`); plus
 * `image-mobilenet-fp16`, the same encoder in float16 for GPU execution providers.
 *
 * Owns: locating the package, cutting its graph at the pooled feature, the three ONNX models, their
 * manifests and `build-info.json`.
 *
 * Source: nsfwjs (MIT, Infinite Red) — a MobileNetV2 with depth multiplier 1.4 (TF-Hub feature-vector
 * module, ImageNet-pretrained, fine-tuned on the NSFW data set) followed by a dense layer to 5 classes
 * (Drawing, Hentai, Neutral, Porn, Sexy). Weights are stored uint8-quantised per tensor; they are
 * dequantised exactly as tfjs does (`tfjs.ts`) and stored as float32.
 *
 * The TF graph, NHWC, input x ∈ [0,1]^(N×224×224×3):
 *
 *   x·2 − 1 → MobileNetV2-1.4 (Conv/BN folded into biases, ReLU6) → AvgPool 7×7 → Squeeze → f ∈ R^1792
 *   f → MatMul [1792×5] + bias → Softmax → p ∈ R^5
 *
 * We cut at f (`feature_vector/SpatialSqueeze`):
 *
 *   image-mobilenet  input  pixels    float32 [batch, 3, 224, 224]  (NCHW, RGB, value = byte / 255)
 *                    output embedding float32 [batch, 1792]          f / max(‖f‖₂, 1e-12)
 *                           feature   float32 [batch, 1792]          f (raw; what heads read)
 *   head-nsfw        input  feature   float32 [batch, 1792]
 *                    output probabilities float32 [batch, 5]         softmax(f·W + b)
 *
 * Convolutions run in NCHW with filters transposed at conversion (see `tfjs-onnx.ts`), which is what
 * ONNX Runtime's CPU kernels are fastest at. `test/image-model.test.ts` checks both models against
 * `@tensorflow/tfjs` running the original graph.
 *
 * `image-mobilenet-fp16` has image-mobilenet's interface (float32 pixels in, float32 embedding and
 * feature out, same preprocessing) and computes the network in float16: weights rounded to float16, a
 * Cast after `pixels`, a Cast back to float32 on the pooled feature, the L2 normalisation in float32.
 * Its vectors are close to image-mobilenet's but not identical, so it is its own model (own name and
 * version, own cache keys). `head-nsfw` and `postray` stay on the fp32 encoder: a head is served only
 * next to the encoder version it was built for, and postray's version names image-mobilenet's.
 * `test/image-fp16.test.ts` measures the agreement.
 */

import path from 'node:path';

import type { ModelManifest } from '../runtime/manifest.ts';
import { type BuilderOptions, type ModelBuildResult, buildModelFolder, contentVersion, jsonFile, locatePackage } from './builder.ts';
import { type BuildExpectation, MANIFEST_FILE } from './model-dir.ts';
import { OnnxModelBuilder, attr } from './onnx-writer.ts';
import { convertTfjsGraph, type ConvertPrecision } from './tfjs-onnx.ts';
import { loadTfjsGraph, type TfNode, type TfjsGraph } from './tfjs.ts';

/** Bump whenever the conversion, graph, weights or manifests written here change. */
export const BUILDER_VERSION = 'mobilenet-1';
/**
 * The fp16 encoder's builder version: BUILDER_VERSION plus its own counter, so a change to the shared
 * conversion rebuilds it too. Bump the counter when only the fp16 graph or manifest changes (bumping
 * BUILDER_VERSION instead would change image-mobilenet's version and so every cached image vector).
 */
export const FP16_BUILDER_VERSION = `${BUILDER_VERSION}/fp16-1`;
export const IMAGE_MODEL = 'image-mobilenet';
/** image-mobilenet computed in float16, for GPU providers; float32 in and out. */
export const IMAGE_FP16_MODEL = 'image-mobilenet-fp16';
/** Providers the fp16 encoder is meant for; written to its manifest as `intendedProviders`. */
export const IMAGE_FP16_PROVIDERS: readonly string[] = ['cuda', 'webgpu'];
export const HEAD_MODEL = 'head-nsfw';
export const SOURCE_PACKAGE = 'nsfwjs';
/** The graph model inside the package. */
export const SOURCE_MODEL = 'mobilenet_v2_mid';
export const INPUT_SIZE = 224;
export const FEATURE_DIMENSIONS = 1792;
/** nsfwjs's class order (src/nsfw_classes.ts). */
export const NSFW_LABELS = ['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy'] as const;
/** Cost units per 1000 input pixels computed (one 224×224 image = 50.176 kilopixels). */
export const IMAGE_COST_PER_KILOPIXEL = 1;

const MODEL_FILE = 'model.onnx';
const EPSILON = 1e-12;

export type MobilenetBuildOptions = BuilderOptions;

interface SourcePackage {
  version: string;
  modelModule: string;
}

/** Finds the package; its model files are CommonJS modules embedding base64. */
export async function locateSource(): Promise<SourcePackage> {
  const pkg = await locatePackage(SOURCE_PACKAGE);
  return { version: pkg.version, modelModule: path.join(pkg.root, 'dist', 'models', SOURCE_MODEL, 'model.min.js') };
}

/** Loads the TF.js graph of the source package (weights dequantised). */
export async function loadSourceGraph(): Promise<{ graph: TfjsGraph; version: string }> {
  const src = await locateSource();
  const graph = await loadTfjsGraph({ kind: 'js-modules', modelModule: src.modelModule, shardSuffix: '.min.js' });
  return { graph, version: src.version };
}

/** The TF node names we cut at: the input placeholder, the pooled feature and the class output. */
export function graphEndpoints(graph: TfjsGraph): { input: string; feature: string; output: string } {
  const nodes = [...graph.nodes.values()];
  const placeholders = nodes.filter((n) => n.op === 'Placeholder');
  if (placeholders.length !== 1) throw new Error(`${SOURCE_MODEL}: expected one input placeholder, found ${placeholders.length}`);
  const softmax = nodes.filter((n) => n.op === 'Softmax');
  if (softmax.length !== 1) throw new Error(`${SOURCE_MODEL}: expected one Softmax, found ${softmax.length}`);
  const dense = graph.nodes.get(softmax[0]!.input![0]!) as TfNode;
  if (!dense || (dense.op !== '_FusedMatMul' && dense.op !== 'MatMul')) throw new Error(`${SOURCE_MODEL}: the Softmax does not follow a dense layer`);
  const feature = dense.input![0]!;
  const kernel = graph.weights.get(dense.input![1]!);
  if (!kernel || kernel.shape[0] !== FEATURE_DIMENSIONS || kernel.shape[1] !== NSFW_LABELS.length) {
    throw new Error(`${SOURCE_MODEL}: the dense kernel is ${JSON.stringify(kernel?.shape)}, expected [${FEATURE_DIMENSIONS}, ${NSFW_LABELS.length}]`);
  }
  const identity = nodes.find((n) => n.op === 'Identity' && n.input?.[0] === softmax[0]!.name);
  return { input: placeholders[0]!.name, feature, output: identity?.name ?? softmax[0]!.name };
}

/**
 * The image encoder as an ONNX model (see the file header). 'fp16' computes the network in float16
 * between float32 `pixels` and a float32 feature; the L2 normalisation is float32 either way.
 */
export function buildImageGraph(graph: TfjsGraph, precision: ConvertPrecision = 'fp32'): { model: OnnxModelBuilder; ops: Record<string, number> } {
  const ends = graphEndpoints(graph);
  const fp16 = precision === 'fp16';
  // The fp32 model's options are exactly what they were before fp16 existed: its bytes are its version.
  const model = new OnnxModelBuilder({
    graphName: fp16 ? 'image_mobilenet_fp16' : 'image_mobilenet',
    producerName: 'polyray',
    producerVersion: fp16 ? FP16_BUILDER_VERSION : BUILDER_VERSION,
    domain: 'dev.polyray',
    docString: fp16
      ? `MobileNetV2-1.4 pooled feature converted from ${SOURCE_PACKAGE}/${SOURCE_MODEL} (TF.js), float16 weights and compute, float32 input and outputs. See src/models/mobilenet.ts.`
      : `MobileNetV2-1.4 pooled feature converted from ${SOURCE_PACKAGE}/${SOURCE_MODEL} (TF.js). See src/models/mobilenet.ts.`,
    ...(fp16 ? { metadata: { precision: 'fp16' } } : {}),
  });
  const g = model.graph;
  const { outputs, ops } = convertTfjsGraph(
    g,
    graph,
    [{ tfName: ends.input, onnxName: 'pixels', shape: ['batch', 3, INPUT_SIZE, INPUT_SIZE], layout: 'nchw' }],
    [ends.feature],
    { precision },
  );
  const feature = outputs[0]!;
  const axis1 = g.int64('l2_axis_1', [1], [1]);
  const eps = g.float32('l2_epsilon', [EPSILON], []);
  const sq = g.op('ReduceSumSquare', [feature, axis1], { keepdims: attr.int(1) }, { name: 'l2_norm_squared' });
  const norm = g.op('Sqrt', [sq], {}, { name: 'l2_norm' });
  const safe = g.op('Max', [norm, eps], {}, { name: 'l2_guard' });
  const unit = g.op('Div', [feature, safe], {}, { name: 'l2_normalise' });
  g.output(unit, 'float32', ['batch', FEATURE_DIMENSIONS], 'embedding');
  g.output(feature, 'float32', ['batch', FEATURE_DIMENSIONS], 'feature');
  return { model, ops };
}

/** The 5-class head as an ONNX model reading the raw pooled feature. */
export function buildHeadGraph(graph: TfjsGraph): { model: OnnxModelBuilder; ops: Record<string, number> } {
  const ends = graphEndpoints(graph);
  const model = new OnnxModelBuilder({
    graphName: 'head_nsfw',
    producerName: 'polyray',
    producerVersion: BUILDER_VERSION,
    domain: 'dev.polyray',
    docString: `NSFW 5-class head (${NSFW_LABELS.join(', ')}) converted from ${SOURCE_PACKAGE}/${SOURCE_MODEL}. Reads image-mobilenet's raw feature.`,
  });
  const g = model.graph;
  const { outputs, ops } = convertTfjsGraph(
    g,
    graph,
    [{ tfName: ends.feature, onnxName: 'feature', shape: ['batch', FEATURE_DIMENSIONS], layout: 'plain' }],
    [ends.output],
  );
  g.output(outputs[0]!, 'float32', ['batch', NSFW_LABELS.length], 'probabilities');
  return { model, ops };
}

const SOURCE_NOTE = (v: string): string =>
  `npm package ${SOURCE_PACKAGE}@${v} (MIT licence, Copyright Infinite Red, Inc.; https://github.com/infinitered/nsfwjs), ` +
  `TF.js graph model ${SOURCE_MODEL}: MobileNetV2 depth multiplier 1.4 (TF-Hub feature-vector module, ImageNet-pretrained, ` +
  'fine-tuned for NSFW classification) with a 5-class dense head. uint8-quantised weights dequantised to float32 and ' +
  'converted to ONNX by Polyray (src/models/mobilenet.ts).';

function imageManifest(version: string, sourceVersion: string): ModelManifest {
  return {
    name: IMAGE_MODEL,
    version,
    modality: 'image',
    dimensions: FEATURE_DIMENSIONS,
    maxTokens: 0,
    costFactor: IMAGE_COST_PER_KILOPIXEL,
    synthetic: false,
    file: MODEL_FILE,
    inputs: [{ name: 'pixels', type: 'float32', shape: ['batch', 3, INPUT_SIZE, INPUT_SIZE] }],
    outputs: [
      { name: 'embedding', type: 'float32', shape: ['batch', FEATURE_DIMENSIONS] },
      { name: 'feature', type: 'float32', shape: ['batch', FEATURE_DIMENSIONS] },
    ],
    preprocess: { size: INPUT_SIZE, resize: 'cover', scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1], layout: 'nchw' },
    description:
      `Image embedding: the ${FEATURE_DIMENSIONS}-d global-average-pooled feature of a MobileNetV2-1.4 (ImageNet-pretrained ` +
      'lower blocks, fine-tuned on an NSFW data set), L2-normalised. Images are resized (shorter side 224), centre-cropped ' +
      'to 224×224 and scaled to [0, 1]. Good for near-duplicate and visual-style similarity; cost is charged per 1000 input pixels.',
    source: SOURCE_NOTE(sourceVersion),
  };
}

/**
 * image-mobilenet's manifest with the fp16 name and version, a description that says what it is for,
 * and two keys the manifest parser ignores (`precision`, `intendedProviders`), as text-bert-synthetic-fp16 has.
 */
function imageFp16Manifest(version: string, sourceVersion: string): ModelManifest & { precision: 'fp16'; intendedProviders: readonly string[] } {
  return {
    ...imageManifest(version, sourceVersion),
    name: IMAGE_FP16_MODEL,
    description:
      `${IMAGE_MODEL} computed in float16, for GPU execution providers (${IMAGE_FP16_PROVIDERS.join(', ')}): the same ` +
      `${FEATURE_DIMENSIONS}-d pooled MobileNetV2-1.4 feature, L2-normalised, with weights and convolutions in float16; float32 ` +
      `pixels in, float32 embedding and feature out, the same preprocessing. Vectors agree with ${IMAGE_MODEL}'s to a cosine of ` +
      `about 0.9999 but are not identical, so they are cached apart; ${HEAD_MODEL} and postray use ${IMAGE_MODEL}. The CPU ` +
      `provider runs it, slower than ${IMAGE_MODEL}.`,
    precision: 'fp16',
    intendedProviders: IMAGE_FP16_PROVIDERS,
  };
}

function headManifest(version: string, sourceVersion: string, imageVersion: string): ModelManifest {
  return {
    name: HEAD_MODEL,
    version,
    modality: 'image',
    dimensions: NSFW_LABELS.length,
    maxTokens: 0,
    costFactor: 0,
    synthetic: false,
    file: MODEL_FILE,
    inputs: [{ name: 'feature', type: 'float32', shape: ['batch', FEATURE_DIMENSIONS] }],
    outputs: [{ name: 'probabilities', type: 'float32', shape: ['batch', NSFW_LABELS.length] }],
    head: { input: IMAGE_MODEL, inputOutput: 'feature', inputVersion: imageVersion, labels: [...NSFW_LABELS] },
    description:
      `Task head: probabilities of ${NSFW_LABELS.join(', ')} for an image, from ${IMAGE_MODEL}'s raw pooled feature ` +
      '(the dense layer + softmax of nsfwjs). Runs on cached image features without re-running the encoder.',
    source: SOURCE_NOTE(sourceVersion),
  };
}

/** The models this builder writes. */
export type MobilenetModel = typeof IMAGE_MODEL | typeof IMAGE_FP16_MODEL | typeof HEAD_MODEL;

/**
 * Builds `<outDir>/<only>/` unless it is up to date: `image-mobilenet`, `head-nsfw` (whose manifest
 * names the fp32 encoder's version, so both are converted for it) or `image-mobilenet-fp16`.
 */
export async function buildMobilenet(options: MobilenetBuildOptions & { only: MobilenetModel }): Promise<ModelBuildResult> {
  const { only } = options;
  const report = options.onProgress ?? (() => {});
  const source = await locateSource();
  const fp16 = only === IMAGE_FP16_MODEL;
  // The fp32 models keep their build-info identity, so existing builds stay up to date.
  const expect: BuildExpectation = fp16
    ? { builder: 'mobilenet-fp16', builderVersion: FP16_BUILDER_VERSION, source: { package: SOURCE_PACKAGE, version: source.version } }
    : { builder: 'mobilenet', builderVersion: BUILDER_VERSION, source: { package: SOURCE_PACKAGE, version: source.version } };
  const job = { outDir: options.outDir, name: only, expect, force: options.force ?? false, report };
  return buildModelFolder(job, async () => {
    report({ step: 'reading TF.js graph', done: 0, total: 1 });
    const { graph } = await loadSourceGraph();
    report({ step: 'reading TF.js graph', done: 1, total: 1 });
    report({ step: 'converting', done: 0, total: 1 });
    let bytes: Uint8Array;
    let manifest: ModelManifest;
    if (fp16) {
      bytes = buildImageGraph(graph, 'fp16').model.serialize();
      manifest = imageFp16Manifest(contentVersion(FP16_BUILDER_VERSION, bytes), source.version);
    } else {
      // The head's manifest names the encoder version it reads, so both are converted for it.
      const imageBytes = buildImageGraph(graph).model.serialize();
      const imageVersion = contentVersion(BUILDER_VERSION, imageBytes);
      bytes = imageBytes;
      manifest = imageManifest(imageVersion, source.version);
      if (only === HEAD_MODEL) {
        bytes = buildHeadGraph(graph).model.serialize();
        manifest = headManifest(contentVersion(BUILDER_VERSION, bytes), source.version, imageVersion);
      }
    }
    report({ step: 'converting', done: 1, total: 1 });
    return { version: manifest.version, files: { [MODEL_FILE]: bytes, [MANIFEST_FILE]: jsonFile(manifest) } };
  });
}
