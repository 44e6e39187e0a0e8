/**
 * The model manifest: what a models-directory entry is, read from `<modelsDir>/<name>/manifest.json`.
 *
 * A manifest is written by our builders (`polyray models build`) or by a user who drops in a model
 * folder. It is validated on load; an invalid manifest marks that model failed, it does not stop the
 * service.
 */

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
   */
  kind: 'word' | 'wordpiece';
  /** File name inside the model folder. */
  file: string;
  lowercase: boolean;
}

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
  /** Cost units per token computed. */
  costFactor: number;
  /** True when the weights are generated, not trained: vectors carry no meaning. */
  synthetic: boolean;
  /** File name of the ONNX graph inside the model folder. */
  file: string;
  inputs: TensorSpec[];
  /** The first output is the embedding, shape [batch, dimensions], L2-normalised. */
  outputs: TensorSpec[];
  tokenizer: TokenizerSpec;
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
  if (!tok || (tok['kind'] !== 'word' && tok['kind'] !== 'wordpiece') || typeof tok['file'] !== 'string') {
    bad('tokenizer', '{kind: "word" | "wordpiece", file, lowercase}', tok);
  }
  return {
    name,
    version: str('version'),
    modality: modality as Modality,
    dimensions: posInt('dimensions'),
    maxTokens: posInt('maxTokens'),
    costFactor: costFactor as number,
    synthetic: m['synthetic'] === true,
    file: str('file'),
    inputs: tensors('inputs'),
    outputs: tensors('outputs'),
    tokenizer: { kind: tok!['kind'] as TokenizerSpec['kind'], file: tok!['file'] as string, lowercase: tok!['lowercase'] !== false },
    description: typeof m['description'] === 'string' ? (m['description'] as string) : '',
    source: typeof m['source'] === 'string' ? (m['source'] as string) : '',
  };
}
