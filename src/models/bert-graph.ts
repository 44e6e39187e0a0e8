/**
 * A BERT encoder as ONNX graphs: deterministic generated weights and three graph variants that
 * compute the same function (to float tolerance), for `text-bert-synthetic*` (see `bert.ts`).
 *
 * Owns: the weight generator (seeded PRNG), per-column int8 weight quantisation, and the graph of
 * each variant. It knows nothing about files, manifests or tokenizers.
 *
 * Architecture (all-MiniLM-L6-v2 / BERT post-LN), for ids, mask, types: int64 [B, S]:
 *
 *     x = LN(word[ids] + position[0..S-1] + type[types])                      [B,S,H]
 *     per layer:
 *       a  = MultiHeadSelfAttention(x; Wq,bq, Wk,bk, Wv,bv; mask)               softmax(QKᵀ/√d + (1-mask)·-10000)·V
 *       x1 = LN(x + a·Wo + bo)
 *       x  = LN(x1 + GELU(x1·W1 + b1)·W2 + b2)                                 GELU with erf (exact)
 *     e = Σ_s mask·x / max(Σ_s mask, 1e-9)                                      mean pooling   [B,H]
 *     embedding = e / max(‖e‖₂, 1e-12)                                          L2 normalise
 *
 * Variants:
 *  - plain: standard ONNX only (opset 18): Gather, Add, LayerNormalization, MatMul, Reshape,
 *    Transpose, Softmax, Erf-based GELU. Any ONNX runtime can load it (ORT fuses it itself at
 *    graph optimisation level "extended" and above, where its pattern matchers recognise it).
 *  - fused: ONNX Runtime contrib ops (domain com.microsoft, opset 1) — EmbedLayerNormalization,
 *    Attention (packed QKV weights, raw 2-D mask), SkipLayerNormalization (residual + bias + LN in
 *    one kernel), BiasGelu — the "Better Transformer" idea: one kernel per block instead of ~20.
 *  - int8: the fused graph with every weight matrix quantised to int8 (symmetric, per output
 *    column) and activations quantised dynamically at run time: DynamicQuantizeLinear + QAttention
 *    for the attention block, DynamicQuantizeMatMul (uint8 activations × int8 weights → float) for
 *    the output projection and the feed-forward layers. Embeddings, biases, LayerNorm stay fp32
 *    (what ORT's `quantize_dynamic` produces for BERT).
 *
 * Masked keys get -10000 added before the softmax in every variant (the contrib ops' default
 * `mask_filter_value`), so padded positions never influence real tokens; padded query rows are
 * computed and then dropped by the masked mean.
 *
 * Weights: normal(0, 0.02) for every matrix and embedding table (BERT's initializer range), small
 * normal(0, 0.02) biases (not BERT's zeros, so bias handling is exercised by the variant tests),
 * LayerNorm gamma 1, beta 0. Each tensor has its own stream — xoshiro128** seeded by splitmix32 from
 * (seed, FNV-1a of the tensor name) — and normals come from Box–Muller on V8's fdlibm-based
 * Math.log/sin/cos, rounded to float32, so the bytes are the same on every run and machine.
 *
 * Length: one dense concept; the three variants of one function sit side by side so they stay equal.
 */

import { OnnxModelBuilder, attr, float16Tensor, float32Tensor, rawTensor, type OnnxGraphBuilder, type TensorValue } from './onnx-writer.ts';

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

export interface BertConfig {
  vocabSize: number;
  hidden: number;
  layers: number;
  heads: number;
  intermediate: number;
  maxPositions: number;
  typeVocabSize: number;
  layerNormEps: number;
}

/** all-MiniLM-L6-v2's shape. */
export const MINILM_L6_CONFIG: Readonly<BertConfig> = {
  vocabSize: 30522,
  hidden: 384,
  layers: 6,
  heads: 12,
  intermediate: 1536,
  maxPositions: 512,
  typeVocabSize: 2,
  layerNormEps: 1e-12,
};

/** Added to masked attention scores (the contrib ops' default mask_filter_value). */
export const MASK_FILTER_VALUE = -10000;
const POOL_EPS = 1e-9;
const NORM_EPS = 1e-12;
export const INIT_STD = 0.02;

export type BertVariant = 'plain' | 'fused' | 'int8';

/**
 * Precision of the plain graph's weights and activations. 'fp16' (for GPU providers: CUDA, WebGPU)
 * stores every weight as float16 and computes the encoder in float16 (embeddings, LayerNormalization,
 * MatMul, Softmax, GELU, the additive attention mask); the masked mean pooling and the L2
 * normalisation stay float32 (the last hidden state is cast up), and the output stays float32 [B, H].
 * Same seeded weights, rounded to nearest float16.
 */
export type BertPrecision = 'fp32' | 'fp16';

// ---------------------------------------------------------------------------------------------
// Deterministic weights
// ---------------------------------------------------------------------------------------------

/** 32-bit FNV-1a of a string's UTF-16 code units. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** xoshiro128** (Blackman & Vigna), state seeded by splitmix32. Uniform uint32 values. */
export class Xoshiro128 {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(seed: number) {
    let s = seed >>> 0;
    const next = (): number => {
      // splitmix32
      s = (s + 0x9e3779b9) | 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#a = next();
    this.#b = next();
    this.#c = next();
    this.#d = next();
    if ((this.#a | this.#b | this.#c | this.#d) === 0) this.#a = 1;
  }

  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.#b, 5), 7), 9) >>> 0;
    const t = this.#b << 9;
    this.#c ^= this.#a;
    this.#d ^= this.#b;
    this.#b ^= this.#c;
    this.#a ^= this.#d;
    this.#c ^= t;
    this.#d = rotl(this.#d, 11);
    return result;
  }

  /** Uniform in (0, 1): never 0, so log() is finite. */
  nextOpenUnit(): number {
    return (this.nextUint32() + 0.5) / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** `count` float32 samples of normal(mean, std) from the named stream. */
export function normalTensor(seed: number, name: string, count: number, std: number, mean = 0): Float32Array {
  const rng = new Xoshiro128((seed ^ fnv1a(name)) >>> 0);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    // Box–Muller: two independent normals per pair of uniforms.
    const r = Math.sqrt(-2 * Math.log(rng.nextOpenUnit()));
    const theta = 2 * Math.PI * rng.nextOpenUnit();
    out[i] = mean + std * r * Math.cos(theta);
    if (i + 1 < count) out[i + 1] = mean + std * r * Math.sin(theta);
  }
  return out;
}

export interface BertLayerWeights {
  /** [H, H] each, stored [in, out] for MatMul. */
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  bq: Float32Array;
  bk: Float32Array;
  bv: Float32Array;
  wo: Float32Array;
  bo: Float32Array;
  ln1Gamma: Float32Array;
  ln1Beta: Float32Array;
  /** [H, I] */
  w1: Float32Array;
  b1: Float32Array;
  /** [I, H] */
  w2: Float32Array;
  b2: Float32Array;
  ln2Gamma: Float32Array;
  ln2Beta: Float32Array;
}

export interface BertWeights {
  config: BertConfig;
  /** [V, H] */
  wordEmbeddings: Float32Array;
  /** [P, H] */
  positionEmbeddings: Float32Array;
  /** [T, H] */
  typeEmbeddings: Float32Array;
  embGamma: Float32Array;
  embBeta: Float32Array;
  layers: BertLayerWeights[];
}

/** Generates every weight of the encoder from `seed` (see the file header). ~90 MB at MiniLM size. */
export function generateBertWeights(config: BertConfig, seed: number): BertWeights {
  const { hidden: H, intermediate: I } = config;
  const n = (name: string, count: number) => normalTensor(seed, name, count, INIT_STD);
  const ones = () => new Float32Array(H).fill(1);
  const zeros = () => new Float32Array(H);
  const layers: BertLayerWeights[] = [];
  for (let l = 0; l < config.layers; l++) {
    const p = `encoder.layer.${l}`;
    layers.push({
      wq: n(`${p}.attention.self.query.weight`, H * H),
      bq: n(`${p}.attention.self.query.bias`, H),
      wk: n(`${p}.attention.self.key.weight`, H * H),
      bk: n(`${p}.attention.self.key.bias`, H),
      wv: n(`${p}.attention.self.value.weight`, H * H),
      bv: n(`${p}.attention.self.value.bias`, H),
      wo: n(`${p}.attention.output.dense.weight`, H * H),
      bo: n(`${p}.attention.output.dense.bias`, H),
      ln1Gamma: ones(),
      ln1Beta: zeros(),
      w1: n(`${p}.intermediate.dense.weight`, H * I),
      b1: n(`${p}.intermediate.dense.bias`, I),
      w2: n(`${p}.output.dense.weight`, I * H),
      b2: n(`${p}.output.dense.bias`, H),
      ln2Gamma: ones(),
      ln2Beta: zeros(),
    });
  }
  return {
    config: { ...config },
    wordEmbeddings: n('embeddings.word_embeddings.weight', config.vocabSize * H),
    positionEmbeddings: n('embeddings.position_embeddings.weight', config.maxPositions * H),
    typeEmbeddings: n('embeddings.token_type_embeddings.weight', config.typeVocabSize * H),
    embGamma: ones(),
    embBeta: zeros(),
    layers,
  };
}

// ---------------------------------------------------------------------------------------------
// Quantisation
// ---------------------------------------------------------------------------------------------

export interface QuantizedMatrix {
  /** int8 values, row-major [rows, cols]. */
  values: Int8Array;
  /** Per-column scale: w[r, c] ≈ values[r, c] · scales[c]. */
  scales: Float32Array;
}

/** Symmetric per-column int8 quantisation of a row-major [rows, cols] matrix, range ±127. */
export function quantizePerColumn(w: Float32Array, rows: number, cols: number): QuantizedMatrix {
  if (w.length !== rows * cols) throw new Error(`matrix must have ${rows}×${cols} elements, has ${w.length}`);
  const scales = new Float32Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) scales[c] = Math.max(scales[c]!, Math.abs(w[r * cols + c]!));
  }
  for (let c = 0; c < cols; c++) scales[c] = scales[c]! > 0 ? scales[c]! / 127 : 1;
  const values = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const q = Math.round(w[r * cols + c]! / scales[c]!);
      values[r * cols + c] = Math.min(127, Math.max(-127, q));
    }
  }
  return { values, scales };
}

/** Columns of several [rows, c_i] matrices side by side: [rows, Σ c_i]. */
function concatColumns(rows: number, parts: { data: Float32Array; cols: number }[]): Float32Array {
  const total = parts.reduce((s, p) => s + p.cols, 0);
  const out = new Float32Array(rows * total);
  for (let r = 0; r < rows; r++) {
    let off = r * total;
    for (const p of parts) {
      out.set(p.data.subarray(r * p.cols, (r + 1) * p.cols), off);
      off += p.cols;
    }
  }
  return out;
}

/** Vectors one after another (a single row of `concatColumns`). */
function concat(parts: Float32Array[]): Float32Array {
  return concatColumns(
    1,
    parts.map((data) => ({ data, cols: data.length })),
  );
}

// ---------------------------------------------------------------------------------------------
// Graphs
// ---------------------------------------------------------------------------------------------

const MS = 'com.microsoft';
const FLOAT = 1;
const FLOAT16 = 10;
const INT32 = 6;

export interface BertGraphOptions {
  graphName: string;
  producerVersion: string;
  docString?: string;
  metadata?: Readonly<Record<string, string>>;
  /** 'fp16' is supported for the plain variant only. Default 'fp32'. */
  precision?: BertPrecision;
  /**
   * 'embedding' (default): mean-pooled, L2-normalised [batch, hidden]. 'last_hidden_state': the encoder's
   * token states [batch, sequence, hidden] (float32), as Optimum exports a sentence-transformers model,
   * pooled by whoever runs it.
   */
  output?: 'embedding' | 'last_hidden_state';
}

/** Builds the ONNX model of one variant over `weights`. */
export function buildBertGraph(weights: BertWeights, variant: BertVariant, options: BertGraphOptions): OnnxModelBuilder {
  const fp16 = options.precision === 'fp16';
  if (fp16 && variant !== 'plain') throw new Error(`precision fp16 is supported for the plain variant only, not ${variant}`);
  const model = new OnnxModelBuilder({
    graphName: options.graphName,
    producerName: 'polyray',
    producerVersion: options.producerVersion,
    domain: 'dev.polyray',
    opsets: variant === 'plain' ? { '': 18 } : { '': 18, [MS]: 1 },
    ...(options.docString === undefined ? {} : { docString: options.docString }),
    ...(options.metadata === undefined ? {} : { metadata: options.metadata }),
  });
  const g = model.graph;
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  const mask = g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const types = g.input('token_type_ids', 'int64', ['batch', 'sequence']);
  const hidden = variant === 'plain' ? plainEncoder(g, weights, ids, mask, types, fp16) : fusedEncoder(g, weights, ids, mask, types, variant === 'int8');
  const states = fp16 ? g.op('Cast', [hidden], { to: attr.int(FLOAT) }, { name: 'hidden_float32' }) : hidden;
  if (options.output === 'last_hidden_state') {
    g.output(states, 'float32', ['batch', 'sequence', weights.config.hidden], 'last_hidden_state');
    return model;
  }
  // Pooling and normalisation in float32 for accuracy (sums over up to 512 positions).
  const embedding = meanPoolNormalise(g, states, mask);
  g.output(embedding, 'float32', ['batch', weights.config.hidden], 'embedding');
  return model;
}

/** Masked mean over the sequence, then L2 normalisation. `hidden` [B,S,H], `mask` int64 [B,S]. */
function meanPoolNormalise(g: OnnxGraphBuilder, hidden: string, mask: string): string {
  const axis1 = g.int64('pool_axis_1', [1], [1]);
  const axis2 = g.int64('pool_axis_2', [2], [1]);
  const poolEps = g.float32('pool_eps', [POOL_EPS], []);
  const normEps = g.float32('norm_eps', [NORM_EPS], []);
  const maskF = g.op('Cast', [mask], { to: attr.int(FLOAT) }, { name: 'pool_mask_float' });
  const mask3 = g.op('Unsqueeze', [maskF, axis2], {}, { name: 'pool_mask_3d' }); // [B,S,1]
  const masked = g.op('Mul', [hidden, mask3], {}, { name: 'pool_masked' });
  const sum = g.op('ReduceSum', [masked, axis1], { keepdims: attr.int(0) }, { name: 'pool_sum' }); // [B,H]
  const count = g.op('ReduceSum', [maskF, axis1], { keepdims: attr.int(1) }, { name: 'pool_count' }); // [B,1]
  const mean = g.op('Div', [sum, g.op('Max', [count, poolEps], {}, { name: 'pool_count_guard' })], {}, { name: 'pool_mean' });
  const sq = g.op('ReduceSumSquare', [mean, axis1], { keepdims: attr.int(1) }, { name: 'norm_squared' });
  const norm = g.op('Max', [g.op('Sqrt', [sq], {}, { name: 'norm' }), normEps], {}, { name: 'norm_guard' });
  return g.op('Div', [mean, norm], {}, { name: 'l2_normalise' });
}

function plainEncoder(g: OnnxGraphBuilder, w: BertWeights, ids: string, mask: string, types: string, fp16 = false): string {
  const { hidden: H, heads, intermediate: I, layerNormEps: eps } = w.config;
  // Weights and constants in the activation type (float16 values rounded to nearest even).
  const tensor = (name: string, data: Float32Array | readonly number[], dims: readonly number[]): TensorValue =>
    fp16 ? float16Tensor(name, data, dims) : float32Tensor(name, data, dims);
  const wt = (name: string, data: Float32Array | readonly number[], dims: readonly number[]): string => g.initializer(tensor(name, data, dims));
  const ACT = fp16 ? FLOAT16 : FLOAT;
  const headSize = H / heads;
  const ln = (x: string, gamma: string, beta: string, name: string) =>
    g.op('LayerNormalization', [x, gamma, beta], { axis: attr.int(-1), epsilon: attr.float(eps) }, { name });

  // Embeddings.
  const word = g.initializer(tensor('embeddings.word_embeddings.weight', w.wordEmbeddings, [w.config.vocabSize, H]));
  const pos = g.initializer(tensor('embeddings.position_embeddings.weight', w.positionEmbeddings, [w.config.maxPositions, H]));
  const type = g.initializer(tensor('embeddings.token_type_embeddings.weight', w.typeEmbeddings, [w.config.typeVocabSize, H]));
  const seqLen = g.op('Shape', [ids], { start: attr.int(1), end: attr.int(2) }, { name: 'sequence_length_1d' }); // [1]
  const seqScalar = g.op('Squeeze', [seqLen, g.int64('axis_0', [0], [1])], {}, { name: 'sequence_length' });
  const positions = g.op('Range', [g.int64('zero', [0], []), seqScalar, g.int64('one', [1], [])], {}, { name: 'position_ids' });
  const e = g.op(
    'Add',
    [
      g.op(
        'Add',
        [
          g.op('Gather', [word, ids], { axis: attr.int(0) }, { name: 'word_lookup' }),
          g.op('Gather', [type, types], { axis: attr.int(0) }, { name: 'type_lookup' }),
        ],
        {},
        { name: 'emb_add_type' },
      ),
      g.op('Gather', [pos, positions], { axis: attr.int(0) }, { name: 'position_lookup' }),
    ],
    {},
    { name: 'emb_add_position' },
  );
  let x = ln(e, wt('embeddings.LayerNorm.weight', w.embGamma, [H]), wt('embeddings.LayerNorm.bias', w.embBeta, [H]), 'emb_layer_norm');

  // Additive attention mask [B,1,1,S]: 0 for tokens, -10000 for padding.
  const maskF = g.op('Cast', [mask], { to: attr.int(ACT) }, { name: 'mask_float' });
  const inverted = g.op('Sub', [wt('one_f', [1], []), maskF], {}, { name: 'mask_inverted' });
  const maskBias = g.op(
    'Unsqueeze',
    [g.op('Mul', [inverted, wt('mask_filter_value', [MASK_FILTER_VALUE], [])], {}, { name: 'mask_scaled' }), g.int64('axes_1_2', [1, 2], [2])],
    {},
    { name: 'mask_bias' },
  );
  const headsShape = g.int64('heads_shape', [0, 0, heads, headSize], [4]);
  const mergedShape = g.int64('merged_shape', [0, 0, H], [3]);
  const scale = wt('attention_scale', [1 / Math.sqrt(headSize)], []);
  const geluC: GeluConstants = { sqrt2: wt('gelu_sqrt2', [Math.SQRT2], []), half: wt('gelu_half', [0.5], []), one: wt('gelu_one', [1], []) };

  w.layers.forEach((L, l) => {
    const p = `encoder.layer.${l}`;
    const dense = (input: string, weight: Float32Array, bias: Float32Array, rows: number, cols: number, name: string) =>
      g.op(
        'Add',
        [g.op('MatMul', [input, wt(`${name}.weight`, weight, [rows, cols])], {}, { name: `${name}.matmul` }), wt(`${name}.bias`, bias, [cols])],
        {},
        { name: `${name}.add_bias` },
      );
    const split = (t: string, perm: number[], name: string) =>
      g.op('Transpose', [g.op('Reshape', [t, headsShape], {}, { name: `${name}.reshape` })], { perm: attr.ints(perm) }, { name: `${name}.transpose` });
    const q = split(dense(x, L.wq, L.bq, H, H, `${p}.attention.self.query`), [0, 2, 1, 3], `${p}.q`); // [B,N,S,d]
    const k = split(dense(x, L.wk, L.bk, H, H, `${p}.attention.self.key`), [0, 2, 3, 1], `${p}.k`); // [B,N,d,S]
    const v = split(dense(x, L.wv, L.bv, H, H, `${p}.attention.self.value`), [0, 2, 1, 3], `${p}.v`); // [B,N,S,d]
    const scores = g.op('Mul', [g.op('MatMul', [q, k], {}, { name: `${p}.scores` }), scale], {}, { name: `${p}.scores_scaled` });
    const probs = g.op('Softmax', [g.op('Add', [scores, maskBias], {}, { name: `${p}.scores_masked` })], { axis: attr.int(-1) }, { name: `${p}.softmax` });
    const context = g.op('MatMul', [probs, v], {}, { name: `${p}.context` }); // [B,N,S,d]
    const merged = g.op(
      'Reshape',
      [g.op('Transpose', [context], { perm: attr.ints([0, 2, 1, 3]) }, { name: `${p}.context_transpose` }), mergedShape],
      {},
      { name: `${p}.context_merge` },
    );
    const attnOut = dense(merged, L.wo, L.bo, H, H, `${p}.attention.output.dense`);
    const x1 = ln(
      g.op('Add', [attnOut, x], {}, { name: `${p}.attention.residual` }),
      wt(`${p}.attention.output.LayerNorm.weight`, L.ln1Gamma, [H]),
      wt(`${p}.attention.output.LayerNorm.bias`, L.ln1Beta, [H]),
      `${p}.attention.layer_norm`,
    );
    const h = dense(x1, L.w1, L.b1, H, I, `${p}.intermediate.dense`);
    const act = gelu(g, geluC, h, `${p}.gelu`);
    const f = dense(act, L.w2, L.b2, I, H, `${p}.output.dense`);
    x = ln(
      g.op('Add', [f, x1], {}, { name: `${p}.output.residual` }),
      wt(`${p}.output.LayerNorm.weight`, L.ln2Gamma, [H]),
      wt(`${p}.output.LayerNorm.bias`, L.ln2Beta, [H]),
      `${p}.output.layer_norm`,
    );
  });
  return x;
}

interface GeluConstants {
  sqrt2: string;
  half: string;
  one: string;
}

/** Exact GELU: 0.5·x·(1 + erf(x/√2)) — the pattern ORT's GeluFusion recognises. */
function gelu(g: OnnxGraphBuilder, c: GeluConstants, x: string, name: string): string {
  const erf = g.op('Erf', [g.op('Div', [x, c.sqrt2], {}, { name: `${name}.div` })], {}, { name: `${name}.erf` });
  const onePlus = g.op('Add', [erf, c.one], {}, { name: `${name}.add` });
  return g.op('Mul', [g.op('Mul', [x, onePlus], {}, { name: `${name}.mul` }), c.half], {}, { name: `${name}.half` });
}

function fusedEncoder(g: OnnxGraphBuilder, w: BertWeights, ids: string, mask: string, types: string, int8: boolean): string {
  const { hidden: H, heads, intermediate: I, layerNormEps: eps } = w.config;
  const epsilon = attr.float(eps);
  const ids32 = g.op('Cast', [ids], { to: attr.int(INT32) }, { name: 'input_ids_int32' });
  const types32 = g.op('Cast', [types], { to: attr.int(INT32) }, { name: 'token_type_ids_int32' });
  const mask32 = g.op('Cast', [mask], { to: attr.int(INT32) }, { name: 'attention_mask_int32' });
  const word = g.initializer(float32Tensor('embeddings.word_embeddings.weight', w.wordEmbeddings, [w.config.vocabSize, H]));
  const pos = g.initializer(float32Tensor('embeddings.position_embeddings.weight', w.positionEmbeddings, [w.config.maxPositions, H]));
  const type = g.initializer(float32Tensor('embeddings.token_type_embeddings.weight', w.typeEmbeddings, [w.config.typeVocabSize, H]));
  const [embedded] = g.node(
    'EmbedLayerNormalization',
    [ids32, types32, word, pos, type, g.float32('embeddings.LayerNorm.weight', w.embGamma, [H]), g.float32('embeddings.LayerNorm.bias', w.embBeta, [H])],
    // Output 1 (mask_index, lengths under a right-padding assumption) is required by the schema but
    // unused: Attention gets the raw 2-D mask, which holds for any padding.
    { domain: MS, attributes: { epsilon }, name: 'embed_layer_norm', outputs: ['embeddings_normalised', 'embeddings_mask_index_unused'] },
  );
  let x = embedded!;

  /** x·W (+ bias when given): MatMul, or DynamicQuantizeMatMul over per-column int8 weights. */
  const linear = (input: string, weight: Float32Array, rows: number, cols: number, name: string, bias?: Float32Array): string => {
    if (!int8) {
      const y = g.op('MatMul', [input, g.float32(`${name}.weight`, weight, [rows, cols])], {}, { name: `${name}.matmul` });
      return bias ? g.op('Add', [y, g.float32(`${name}.bias`, bias, [cols])], {}, { name: `${name}.add_bias` }) : y;
    }
    const q = quantizePerColumn(weight, rows, cols);
    const inputs = [
      input,
      g.initializer(rawTensor(`${name}.weight_quantized`, 'int8', [rows, cols], new Uint8Array(q.values.buffer))),
      g.float32(`${name}.weight_scale`, q.scales, [cols]),
      '',
    ];
    if (bias) inputs.push(g.float32(`${name}.bias`, bias, [cols]));
    return g.op('DynamicQuantizeMatMul', inputs, {}, { domain: MS, name: `${name}.dynamic_quantize_matmul` });
  };

  w.layers.forEach((L, l) => {
    const p = `encoder.layer.${l}`;
    const qkvW = concatColumns(H, [
      { data: L.wq, cols: H },
      { data: L.wk, cols: H },
      { data: L.wv, cols: H },
    ]);
    const qkvB = g.float32(`${p}.attention.qkv.bias`, concat([L.bq, L.bk, L.bv]), [3 * H]);
    let attention: string;
    if (!int8) {
      attention = g.op(
        'Attention',
        [x, g.float32(`${p}.attention.qkv.weight`, qkvW, [H, 3 * H]), qkvB, mask32],
        { num_heads: attr.int(heads) },
        { domain: MS, name: `${p}.attention` },
      );
    } else {
      const q = quantizePerColumn(qkvW, H, 3 * H);
      const [xq, xScale, xZero] = g.node('DynamicQuantizeLinear', [x], { name: `${p}.attention.quantize_input`, outputs: 3 });
      attention = g.op(
        'QAttention',
        [
          xq!,
          g.initializer(rawTensor(`${p}.attention.qkv.weight_quantized`, 'int8', [H, 3 * H], new Uint8Array(q.values.buffer))),
          qkvB,
          xScale!,
          g.float32(`${p}.attention.qkv.weight_scale`, q.scales, [3 * H]),
          mask32,
          xZero!,
        ],
        { num_heads: attr.int(heads) },
        { domain: MS, name: `${p}.attention` },
      );
    }
    const attnOut = linear(attention, L.wo, H, H, `${p}.attention.output.dense`);
    const [x1] = g.node(
      'SkipLayerNormalization',
      [
        attnOut,
        x,
        g.float32(`${p}.attention.output.LayerNorm.weight`, L.ln1Gamma, [H]),
        g.float32(`${p}.attention.output.LayerNorm.bias`, L.ln1Beta, [H]),
        g.float32(`${p}.attention.output.dense.bias`, L.bo, [H]),
      ],
      { domain: MS, attributes: { epsilon }, name: `${p}.attention.skip_layer_norm`, outputs: 1 },
    );
    const h = linear(x1!, L.w1, H, I, `${p}.intermediate.dense`);
    const act = g.op('BiasGelu', [h, g.float32(`${p}.intermediate.dense.bias`, L.b1, [I])], {}, { domain: MS, name: `${p}.bias_gelu` });
    const f = linear(act, L.w2, I, H, `${p}.output.dense`);
    const [x2] = g.node(
      'SkipLayerNormalization',
      [
        f,
        x1!,
        g.float32(`${p}.output.LayerNorm.weight`, L.ln2Gamma, [H]),
        g.float32(`${p}.output.LayerNorm.bias`, L.ln2Beta, [H]),
        g.float32(`${p}.output.dense.bias`, L.b2, [H]),
      ],
      { domain: MS, attributes: { epsilon }, name: `${p}.output.skip_layer_norm`, outputs: 1 },
    );
    x = x2!;
  });
  return x;
}
