/**
 * The model manifest: what a models-directory entry is, read from `<modelsDir>/<name>/manifest.json`.
 *
 * A manifest is written by our builders (`polyray models build`) or by a user who drops in a model
 * folder. It is validated on load; an invalid manifest marks that model failed, it does not stop the
 * service.
 */

import { POOLING_MODES, type PoolingMode, type PoolingSpec } from './pooling.ts';

export type Modality = 'text' | 'image' | 'multimodal';

export interface TensorSpec {
  name: string;
  /** ONNX element type: "int64", "float32", ... */
  type: string;
  /** Symbolic dims as strings ("batch", "sequence"), fixed dims as numbers. */
  shape: (string | number)[];
}

export interface TokenizerSpec {
  /**
   * "word": lower-cased words and punctuation looked up in a vocabulary file (one token per line,
   * line number = id); unknown words are masked out.
   * "hf": a Hugging Face `tokenizer.json` of any family (WordPiece, byte-level BPE, SentencePiece BPE,
   * Unigram), with `tokenizer_config.json` beside it when present (src/runtime/hf-tokenizer.ts).
   * "wordpiece": a Hugging Face `tokenizer.json` with a WordPiece model (BERT family; see
   * src/runtime/wordpiece.ts); casing comes from its normalizer, not from `lowercase`.
   */
  kind: 'word' | 'wordpiece' | 'hf';
  /** File name inside the model folder. */
  file: string;
  lowercase: boolean;
}

/**
 * How an image model wants its pixels (image models only). Images are decoded to RGB, resized so the
 * shorter side is `size` and centre-cropped to `size`×`size` (`resize: "cover"`), then each channel
 * value becomes (byte · scale − mean[c]) / std[c], laid out as `layout`.
 */
export interface PreprocessSpec {
  size: number;
  resize: 'cover';
  scale: number;
  mean: [number, number, number];
  std: [number, number, number];
  layout: 'nchw' | 'nhwc';
}

/** A task head: a small model that reads another model's output and returns one score per label. */
export interface HeadSpec {
  /** The model whose output the head reads, e.g. "image-mobilenet". */
  input: string;
  /** Which output of that model: "embedding" (unit vector) or a raw feature output such as "feature". */
  inputOutput: string;
  /** Version of the input model the head was built against; the head is served only with that version. */
  inputVersion: string;
  /** One label per output column. */
  labels: string[];
}

/** Settings a model's builder measured to suit it; every one is optional. */
export interface RuntimeHints {
  /**
   * Let intra-op threads spin between parallel sections. Worth it for models whose runs are long and
   * made of many operators (transformers); a waste for tiny graphs.
   */
  allowSpinning?: boolean;
}

/** sentence-transformers' similarity functions. */
export const SIMILARITIES = ['cosine', 'dot', 'euclidean', 'manhattan'] as const;
export type Similarity = (typeof SIMILARITIES)[number];

export interface ModelManifest {
  /** Public name clients use: "text-glove". */
  name: string;
  /** Content version: a hash of the weights and the builder version. Part of every cache key. */
  version: string;
  modality: Modality;
  /** Length of the output vector. */
  dimensions: number;
  /** Longest accepted input, in tokens. Longer inputs are refused with INPUT_TOO_LARGE. */
  maxTokens: number;
  /** Cost units per token computed (text models) or per 1000 input pixels computed (image models). */
  costFactor: number;
  /** True when the weights are generated, not trained: vectors carry no meaning. */
  synthetic: boolean;
  /** File name of the ONNX graph inside the model folder. */
  file: string;
  inputs: TensorSpec[];
  /** The first output is the embedding, shape [batch, dimensions], L2-normalised (a head: its scores). */
  outputs: TensorSpec[];
  /** Text models: how to tokenise. Absent for image models and heads. */
  tokenizer?: TokenizerSpec;
  /** Image models: how to turn an image into the input tensor. */
  preprocess?: PreprocessSpec;
  /** Task heads: what the head reads and what its outputs mean. */
  head?: HeadSpec;
  /** ONNX Runtime settings suited to this model, used where the operator's configuration says "auto". */
  runtime?: RuntimeHints;
  /**
   * Text models exported without their pooling: the first output is [batch, sequence, hidden] and the
   * worker pools it (src/runtime/pooling.ts). Absent: the first output is already the embedding.
   */
  pooling?: PoolingSpec;
  /** Rows of the token embedding table, where the folder tells (read from the graph or config.json); tokenizers must fit in it. */
  embeddingRows?: number;
  /**
   * Text models: named prompts prepended to the input (sentence-transformers' `prompts`, e.g. e5's
   * `query: `), chosen per request with `promptName`; `defaultPromptName` applies when a request names none.
   */
  prompts?: Record<string, string>;
  defaultPromptName?: string;
  /** Which end of an over-long input a truncating request cuts. Default "right" (keeps the start). */
  truncationSide?: 'left' | 'right';
  /**
   * Sizes the model was trained to be cut to (Matryoshka), largest first, as its model card declares them
   * (`matryoshka_dims`); advertised by Query.models. Any `dimensions` up to the full size is still served.
   */
  matryoshkaDimensions?: number[];
  /** How its vectors are compared (sentence-transformers' `similarity_fn_name`). Default cosine. */
  similarity?: Similarity;
  /** Human readable description shown by Query.models. */
  description: string;
  /** Where the weights come from and under which licence. */
  source: string;
}

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Validates a parsed manifest.json; throws a TypeError naming the field and the value received. */
export function parseManifest(value: unknown, where: string): ModelManifest {
  const bad = (field: string, expected: string, got: unknown): never => {
    throw new TypeError(`${where}: manifest field "${field}" must be ${expected}, received ${JSON.stringify(got)?.slice(0, 80)}`);
  };
  if (typeof value !== 'object' || value === null) bad('(root)', 'an object', value);
  const m = value as Record<string, unknown>;
  const str = (f: string): string => (typeof m[f] === 'string' && (m[f] as string).length > 0 ? (m[f] as string) : bad(f, 'a non-empty string', m[f]));
  const posInt = (f: string): number => (Number.isSafeInteger(m[f]) && (m[f] as number) > 0 ? (m[f] as number) : bad(f, 'a positive integer', m[f]));
  const name = str('name');
  if (!NAME_RE.test(name)) bad('name', `lower-case letters, digits, ".", "_" or "-" (${NAME_RE.source})`, name);
  const modality = m['modality'];
  if (modality !== 'text' && modality !== 'image' && modality !== 'multimodal') bad('modality', '"text", "image" or "multimodal"', modality);
  const costFactor = m['costFactor'];
  if (typeof costFactor !== 'number' || !(costFactor >= 0)) bad('costFactor', 'a number >= 0', costFactor);
  const tensors = (f: string): TensorSpec[] => {
    const v = m[f];
    if (!Array.isArray(v) || v.length === 0) return bad(f, 'a non-empty array of tensor specs', v);
    return v.map((t: unknown) => {
      const o = t as Record<string, unknown>;
      if (typeof o?.['name'] !== 'string' || typeof o['type'] !== 'string' || !Array.isArray(o['shape'])) bad(f, 'tensor specs {name, type, shape}', t);
      return { name: o['name'] as string, type: o['type'] as string, shape: o['shape'] as (string | number)[] };
    });
  };
  const tok = m['tokenizer'] as Record<string, unknown> | undefined;
  const head = m['head'] === undefined ? undefined : parseHead(m['head'], bad);
  const preprocess = m['preprocess'] === undefined ? undefined : parsePreprocess(m['preprocess'], bad);
  // A text model needs a tokenizer; an image model needs preprocessing; a head reads another model's output.
  const needsTokenizer = !head && !preprocess;
  if (
    (needsTokenizer || tok !== undefined) &&
    (!tok || (tok['kind'] !== 'word' && tok['kind'] !== 'wordpiece' && tok['kind'] !== 'hf') || typeof tok['file'] !== 'string')
  ) {
    bad('tokenizer', '{kind: "word" | "wordpiece" | "hf", file, lowercase}', tok);
  }
  if (modality === 'image' && !head && !preprocess) bad('preprocess', 'present for an image model', undefined);
  return {
    name,
    version: str('version'),
    modality: modality as Modality,
    dimensions: posInt('dimensions'),
    maxTokens: needsTokenizer ? posInt('maxTokens') : Number.isSafeInteger(m['maxTokens']) && (m['maxTokens'] as number) >= 0 ? (m['maxTokens'] as number) : 0,
    costFactor: costFactor as number,
    synthetic: m['synthetic'] === true,
    file: str('file'),
    inputs: tensors('inputs'),
    outputs: tensors('outputs'),
    ...(tok ? { tokenizer: { kind: tok['kind'] as TokenizerSpec['kind'], file: tok['file'] as string, lowercase: tok['lowercase'] !== false } } : {}),
    ...(preprocess ? { preprocess } : {}),
    ...(head ? { head } : {}),
    ...(m['runtime'] === undefined ? {} : { runtime: parseRuntime(m['runtime'], bad) }),
    ...(m['pooling'] === undefined ? {} : { pooling: parsePooling(m['pooling'], bad) }),
    ...parsePrompts(m['prompts'], m['defaultPromptName'], bad),
    ...(m['matryoshkaDimensions'] === undefined
      ? {}
      : {
          matryoshkaDimensions:
            Array.isArray(m['matryoshkaDimensions']) && m['matryoshkaDimensions'].every((d) => Number.isSafeInteger(d) && (d as number) > 0)
              ? (m['matryoshkaDimensions'] as number[])
              : bad('matryoshkaDimensions', 'an array of positive integers', m['matryoshkaDimensions']),
        }),
    ...(m['similarity'] === undefined
      ? {}
      : {
          similarity: SIMILARITIES.includes(m['similarity'] as Similarity)
            ? (m['similarity'] as Similarity)
            : bad('similarity', SIMILARITIES.map((x) => `"${x}"`).join(' | '), m['similarity']),
        }),
    ...(m['truncationSide'] === undefined
      ? {}
      : {
          truncationSide:
            m['truncationSide'] === 'left' || m['truncationSide'] === 'right'
              ? m['truncationSide']
              : bad('truncationSide', '"left" or "right"', m['truncationSide']),
        }),
    description: typeof m['description'] === 'string' ? (m['description'] as string) : '',
    source: typeof m['source'] === 'string' ? (m['source'] as string) : '',
  };
}

type Bad = (field: string, expected: string, got: unknown) => never;

function parsePrompts(prompts: unknown, defaultName: unknown, bad: Bad): Pick<ModelManifest, 'prompts' | 'defaultPromptName'> {
  if (prompts === undefined && defaultName === undefined) return {};
  const p = (prompts ?? {}) as Record<string, unknown>;
  if (typeof p !== 'object' || Array.isArray(p) || Object.values(p).some((v) => typeof v !== 'string'))
    return bad('prompts', 'an object of name → prompt text', prompts);
  if (defaultName !== undefined && defaultName !== null && (typeof defaultName !== 'string' || !Object.hasOwn(p, defaultName)))
    return bad('defaultPromptName', "one of the prompts' names", defaultName);
  return { prompts: p as Record<string, string>, ...(typeof defaultName === 'string' ? { defaultPromptName: defaultName } : {}) };
}

function parsePooling(v: unknown, bad: Bad): PoolingSpec {
  const p = v as Record<string, unknown>;
  if (
    typeof p !== 'object' ||
    p === null ||
    !POOLING_MODES.includes(p['mode'] as PoolingMode) ||
    typeof p['normalize'] !== 'boolean' ||
    (p['includePrompt'] !== undefined && typeof p['includePrompt'] !== 'boolean')
  ) {
    return bad('pooling', `{mode: ${POOLING_MODES.map((x) => `"${x}"`).join(' | ')}, normalize: boolean, includePrompt?: boolean}`, v);
  }
  return { mode: p['mode'] as PoolingMode, normalize: p['normalize'] as boolean, ...(p['includePrompt'] === false ? { includePrompt: false } : {}) };
}

function parseRuntime(v: unknown, bad: Bad): RuntimeHints {
  const r = v as Record<string, unknown>;
  if (typeof r !== 'object' || r === null || Array.isArray(r) || (r['allowSpinning'] !== undefined && typeof r['allowSpinning'] !== 'boolean')) {
    return bad('runtime', '{allowSpinning?: boolean}', v);
  }
  return r['allowSpinning'] === undefined ? {} : { allowSpinning: r['allowSpinning'] as boolean };
}

function parsePreprocess(v: unknown, bad: Bad): PreprocessSpec {
  const p = v as Record<string, unknown>;
  const triple = (x: unknown): x is [number, number, number] =>
    Array.isArray(x) && x.length === 3 && x.every((n) => typeof n === 'number' && Number.isFinite(n));
  if (
    typeof p !== 'object' ||
    p === null ||
    !Number.isSafeInteger(p['size']) ||
    (p['size'] as number) < 1 ||
    p['resize'] !== 'cover' ||
    typeof p['scale'] !== 'number' ||
    !triple(p['mean']) ||
    !triple(p['std']) ||
    (p['std'] as number[]).some((s) => s === 0) ||
    (p['layout'] !== 'nchw' && p['layout'] !== 'nhwc')
  ) {
    return bad('preprocess', '{size, resize: "cover", scale, mean: [r,g,b], std: [r,g,b] (non-zero), layout: "nchw" | "nhwc"}', v);
  }
  return {
    size: p['size'] as number,
    resize: 'cover',
    scale: p['scale'] as number,
    mean: p['mean'] as [number, number, number],
    std: p['std'] as [number, number, number],
    layout: p['layout'] as 'nchw' | 'nhwc',
  };
}

function parseHead(v: unknown, bad: Bad): HeadSpec {
  const h = v as Record<string, unknown>;
  if (
    typeof h !== 'object' ||
    h === null ||
    typeof h['input'] !== 'string' ||
    typeof h['inputOutput'] !== 'string' ||
    typeof h['inputVersion'] !== 'string' ||
    !Array.isArray(h['labels']) ||
    h['labels'].length === 0 ||
    !h['labels'].every((l) => typeof l === 'string')
  ) {
    return bad('head', '{input, inputOutput, inputVersion, labels: [string, ...]}', v);
  }
  return {
    input: h['input'] as string,
    inputOutput: h['inputOutput'] as string,
    inputVersion: h['inputVersion'] as string,
    labels: [...(h['labels'] as string[])],
  };
}
