/**
 * A Hugging Face model folder read as it is, with no manifest.json: the sentence-transformers layout
 * (`modules.json`, `1_Pooling/config.json`, a `Normalize` module, `sentence_bert_config.json`) around an
 * ONNX export (Optimum / onnx-community: `onnx/model.onnx`, or `model.onnx` at the top).
 *
 * Owns: turning such a folder into a `ModelManifest`, or a TypeError naming the missing or unsupported
 * file. What it derives:
 *   - the graph: `onnx/model.onnx` (else `model.onnx`, else the int8 or fp16 variant); on a GPU provider
 *     the fp16 export first, on CPU the int8 one first when `cpuVariant` asks for it; its declared
 *     inputs must be ones Polyray can feed (`input_ids`, `attention_mask`, `token_type_ids`, `position_ids`)
 *   - the output: `sentence_embedding` when the graph has it (normalised here when a Normalize module
 *     follows), else `last_hidden_state` / `token_embeddings` pooled in the worker as the Pooling module
 *     says (default: mean, as sentence-transformers does for a plain transformers folder)
 *   - dimensions (`word_embedding_dimension`, else `hidden_size`), token limit (`max_seq_length`, else
 *     `model_max_length`, else `max_position_embeddings`), the tokenizer (`tokenizer.json`, any family)
 *   - prompts (`config_sentence_transformers.json`: `prompts`, `default_prompt_name`)
 *   - the version: a content hash of every file that changes the vectors
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { isFile } from '../files.ts';
import { decodeModel } from '../models/onnx-writer.ts';
import { type ModelManifest, SIMILARITIES, type Similarity, type TensorSpec } from './manifest.ts';
import type { PoolingMode, PoolingSpec } from './pooling.ts';

const FP32 = ['onnx/model.onnx', 'model.onnx'];
const INT8 = ['onnx/model_quantized.onnx', 'onnx/model_int8.onnx', 'model_quantized.onnx'];
const FP16 = ['onnx/model_fp16.onnx', 'model_fp16.onnx'];
const GRAPHS = [...FP32, ...INT8, ...FP16];

/** Which graph variant to prefer: what the first execution provider runs best. */
export interface VariantChoice {
  /** The first configured provider. Default cpu. */
  provider?: 'cpu' | 'cuda' | 'webgpu';
  /** On CPU: the int8 export when the folder has one. Default fp32. */
  cpuVariant?: 'fp32' | 'int8';
}

/** The variants to try, best first: fp16 on GPU providers, int8 on CPU when asked; fp32 otherwise; then any. */
function graphOrder(v: VariantChoice): string[] {
  const gpu = v.provider === 'cuda' || v.provider === 'webgpu';
  const first = gpu ? FP16 : v.cpuVariant === 'int8' ? INT8 : [];
  return [...new Set([...first, ...FP32, ...INT8, ...FP16])];
}
const FEEDABLE = new Set(['input_ids', 'attention_mask', 'token_type_ids', 'position_ids']);
const TOKEN_OUTPUTS = ['last_hidden_state', 'token_embeddings'];
/** Files that change the vectors besides the graph: all of them go into the version. */
const VERSIONED = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'modules.json',
  'sentence_bert_config.json',
  'config_sentence_transformers.json',
];
const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** True when `dir` looks like a Hugging Face folder (a tokenizer and an ONNX graph) rather than one with our manifest. */
export async function isHfFolder(dir: string): Promise<boolean> {
  if (!(await isFile(path.join(dir, 'tokenizer.json')))) return false;
  for (const g of GRAPHS) if (await isFile(path.join(dir, g))) return true;
  return false;
}

export async function readHfFolder(dir: string, name: string = path.basename(dir).toLowerCase(), variant: VariantChoice = {}): Promise<ModelManifest> {
  if (!NAME_RE.test(name)) throw new TypeError(`model name "${name.slice(0, 64)}" must match ${NAME_RE.source} (rename the folder or pass --name)`);
  if (!(await isFile(path.join(dir, 'tokenizer.json')))) throw new TypeError('no tokenizer.json in the folder');
  let file: string | undefined;
  for (const g of graphOrder(variant)) {
    if (await isFile(path.join(dir, g))) {
      file = g;
      break;
    }
  }
  if (!file) throw new TypeError(`no ONNX graph in the folder (looked for ${GRAPHS.join(', ')})`);
  const bytes = await readFile(path.join(dir, file));
  const graph = (decodeModel(bytes)['graph'] ?? {}) as {
    input?: ValueInfo[];
    output?: ValueInfo[];
    initializer?: { name?: string; dims?: (number | string)[] }[];
    node?: { op_type?: string; input?: string[] }[];
  };
  const initializers = new Set((graph.initializer ?? []).map((i) => i.name));
  // Older exporters list initializers among the inputs; they are not fed.
  const inputs = (graph.input ?? []).filter((i) => !initializers.has(i.name)).map(tensorSpec);
  const unfed = inputs.filter((i) => !FEEDABLE.has(i.name));
  if (unfed.length > 0)
    throw new TypeError(`${file} declares inputs Polyray cannot feed: ${unfed.map((i) => i.name).join(', ')} (it feeds ${[...FEEDABLE].join(', ')})`);
  if (!inputs.some((i) => i.name === 'input_ids')) throw new TypeError(`${file} has no input_ids input`);
  const outputs = (graph.output ?? []).map(tensorSpec);

  const config = await json(dir, 'config.json');
  const listed: unknown = await json(dir, 'modules.json', []);
  if (!Array.isArray(listed)) throw new TypeError('modules.json must be a JSON array of modules');
  const modules = listed as { type?: string; path?: string }[];
  const poolingModule = modules.find((m) => m.type?.endsWith('.Pooling'));
  const normalize = modules.some((m) => m.type?.endsWith('.Normalize'));
  const poolConfig = poolingModule ? await json(dir, path.join(poolingModule.path ?? '1_Pooling', 'config.json')) : {};
  const st = await json(dir, 'sentence_bert_config.json');
  const tokConfig = await json(dir, 'tokenizer_config.json');
  const stConfig = await json(dir, 'config_sentence_transformers.json');

  let output: TensorSpec;
  let pooling: PoolingSpec | undefined;
  const pooled = outputs.find((o) => o.name === 'sentence_embedding');
  const tokens = outputs.find((o) => TOKEN_OUTPUTS.includes(o.name));
  if (pooled) {
    output = pooled;
    if (normalize) pooling = { mode: 'none', normalize: true };
  } else if (tokens) {
    output = tokens;
    // include_prompt: false leaves the prompt's tokens out of the pooling (its mask is cleared over them).
    pooling = { mode: poolingMode(poolConfig), normalize, ...(poolConfig['include_prompt'] === false ? { includePrompt: false } : {}) };
  } else {
    throw new TypeError(
      `${file} has no usable output: expected sentence_embedding, ${TOKEN_OUTPUTS.join(' or ')}; found ${outputs.map((o) => o.name).join(', ') || 'none'}`,
    );
  }

  const dimensions = positive(poolConfig['word_embedding_dimension']) ?? positive(config['hidden_size']) ?? positive(config['d_model']);
  if (!dimensions) throw new TypeError('cannot tell the dimensions: neither 1_Pooling/config.json word_embedding_dimension nor config.json hidden_size');
  const maxTokens = positive(st['max_seq_length']) ?? belowHuge(tokConfig['model_max_length']) ?? positive(config['max_position_embeddings']) ?? 512;
  const layers = positive(config['num_hidden_layers']) ?? 6;

  const hash = createHash('sha256').update(bytes);
  // Weights stored beside the graph (external data: model.onnx_data, model.onnx.data, model.onnx_data_1 …).
  for (const f of await externalData(dir, file)) {
    hash.update(f);
    for await (const chunk of createReadStream(path.join(dir, f))) hash.update(chunk as Buffer);
  }
  for (const f of [...VERSIONED, ...(poolingModule ? [path.join(poolingModule.path ?? '1_Pooling', 'config.json')] : [])]) {
    const p = path.join(dir, f);
    if (await isFile(p)) hash.update(f).update(await readFile(p));
  }
  hash.update(JSON.stringify({ file, output: output.name, pooling }));
  const rows = embeddingRows(graph) ?? positive(config['vocab_size']);
  const matryoshka = await matryoshkaDims(dir, dimensions);
  const arch = Array.isArray(config['architectures']) ? String(config['architectures'][0]) : String(config['model_type'] ?? 'unknown');
  return {
    name,
    version: hash.digest('hex').slice(0, 16),
    modality: 'text',
    dimensions,
    maxTokens,
    // Cost per token grows with depth × width; a 6-layer, 384-wide encoder (MiniLM) is 20.
    costFactor: Math.max(1, Math.round((layers * dimensions) / 115)),
    synthetic: config['polyray_synthetic'] === true,
    file,
    inputs,
    outputs: [output],
    tokenizer: { kind: 'hf', file: 'tokenizer.json', lowercase: false },
    ...(rows ? { embeddingRows: rows } : {}),
    ...(pooling ? { pooling } : {}),
    ...promptsOf(stConfig),
    ...(matryoshka.length > 0 ? { matryoshkaDimensions: matryoshka } : {}),
    ...(SIMILARITIES.includes(stConfig['similarity_fn_name'] as Similarity) ? { similarity: stConfig['similarity_fn_name'] as Similarity } : {}),
    ...(tokConfig['truncation_side'] === 'left' ? { truncationSide: 'left' as const } : {}),
    description: `${arch} read from a Hugging Face folder (${file}; ${pooled ? 'sentence_embedding' : `${pooling!.mode} pooling`}${normalize ? ', normalised' : ''})`,
    source: `Hugging Face folder ${path.basename(dir)}`,
  };
}

/** Files holding `graph`'s external data (the names Optimum and onnx-community export), sorted. */
async function externalData(dir: string, graph: string): Promise<string[]> {
  const base = path.basename(graph);
  const sub = path.dirname(graph);
  let names: string[];
  try {
    names = await readdir(path.join(dir, sub));
  } catch {
    return [];
  }
  return names
    .filter((n) => n.startsWith(`${base}_data`) || n.startsWith(`${base}.data`))
    .sort()
    .map((n) => path.join(sub, n));
}

/** Rows of the token embedding table: the initializer a Gather reads with `input_ids`, as exporters write it. */
function embeddingRows(graph: {
  initializer?: { name?: string; dims?: (number | string)[] }[];
  node?: { op_type?: string; input?: string[] }[];
}): number | undefined {
  const gather = (graph.node ?? []).find((n) => n.op_type === 'Gather' && n.input?.[1] === 'input_ids');
  const table = gather && (graph.initializer ?? []).find((i) => i.name === gather.input![0]);
  const rows = table?.dims?.[0];
  return rows === undefined ? undefined : positive(Number(rows));
}

/**
 * Refuses a tokenizer that can emit ids beyond the model's embedding table (a tokenizer from another
 * model): every such id would fail the batch it is in, or read another table's rows.
 */
export function checkVocabulary(manifest: Pick<ModelManifest, 'embeddingRows'>, tokenizerIds: number): void {
  const rows = manifest.embeddingRows;
  if (rows !== undefined && tokenizerIds > rows) {
    throw new TypeError(
      `the tokenizer has ${tokenizerIds} ids but the model's token embedding table has ${rows} rows: tokenizer.json belongs to another model`,
    );
  }
}

interface ValueInfo {
  name?: string;
  type?: { tensor_type?: { elem_type?: number; shape?: { dim?: { dim_value?: number; dim_param?: string }[] } } };
}

const ELEMENT: Record<number, string> = { 1: 'float32', 6: 'int32', 7: 'int64', 10: 'float16', 11: 'float64' };

function tensorSpec(v: ValueInfo): TensorSpec {
  const t = v.type?.tensor_type;
  return {
    name: v.name ?? '',
    type: ELEMENT[t?.elem_type ?? 0] ?? `onnx:${t?.elem_type ?? '?'}`,
    shape: (t?.shape?.dim ?? []).map((d) => d.dim_value ?? d.dim_param ?? '?'),
  };
}

/**
 * The Matryoshka sizes the model card declares: sentence-transformers writes the training loss's parameters
 * into README.md, `"matryoshka_dims": [768, 512, 256, 128, 64]` for a MatryoshkaLoss. Sizes above the
 * model's own are dropped; largest first.
 */
async function matryoshkaDims(dir: string, dimensions: number): Promise<number[]> {
  let card: string;
  try {
    card = await readFile(path.join(dir, 'README.md'), 'utf8');
  } catch {
    return [];
  }
  const m = /"matryoshka_dims"\s*:\s*\[([\d,\s]*)\]/.exec(card.slice(0, 1_000_000));
  if (!m) return [];
  const dims = m[1]!
    .split(',')
    .map((x) => Number(x.trim()))
    .filter((d) => Number.isSafeInteger(d) && d > 0 && d <= dimensions);
  return [...new Set(dims)].sort((a, b) => b - a);
}

/** `prompts` and `default_prompt_name` of config_sentence_transformers.json (empty prompts are dropped). */
function promptsOf(c: Record<string, unknown>): { prompts?: Record<string, string>; defaultPromptName?: string } {
  const p = c['prompts'];
  if (typeof p !== 'object' || p === null || Array.isArray(p)) return {};
  const prompts = Object.fromEntries(Object.entries(p).filter((e): e is [string, string] => typeof e[1] === 'string'));
  if (Object.keys(prompts).length === 0) return {};
  const d = c['default_prompt_name'];
  return { prompts, ...(typeof d === 'string' && Object.hasOwn(prompts, d) ? { defaultPromptName: d } : {}) };
}

function poolingMode(c: Record<string, unknown>): PoolingMode {
  if (c['pooling_mode_cls_token'] === true) return 'cls';
  if (c['pooling_mode_lasttoken'] === true) return 'last';
  if (c['pooling_mode_max_tokens'] === true) return 'max';
  if (c['pooling_mode_mean_sqrt_len_tokens'] === true || c['pooling_mode_weightedmean_tokens'] === true) {
    throw new TypeError('1_Pooling/config.json asks for a pooling mode Polyray does not implement (mean_sqrt_len or weightedmean)');
  }
  return 'mean';
}

async function json(dir: string, file: string, fallback: unknown = {}): Promise<Record<string, unknown>> {
  const p = path.join(dir, file);
  if (!(await isFile(p))) return fallback as Record<string, unknown>;
  try {
    return JSON.parse(await readFile(p, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new TypeError(`${file} is not valid JSON: ${(e as Error).message.slice(0, 120)}`);
  }
}

const positive = (v: unknown): number | undefined => (Number.isSafeInteger(v) && (v as number) > 0 ? (v as number) : undefined);
/** tokenizer_config's model_max_length is a huge sentinel (1e30) when unset. */
const belowHuge = (v: unknown): number | undefined => (typeof v === 'number' && v > 0 && v < 1_000_000 ? Math.floor(v) : undefined);
