/**
 * Hugging Face model folders with generated weights and real tokenizer files, as Optimum and
 * onnx-community export them: onnx/model.onnx (output last_hidden_state), tokenizer.json,
 * tokenizer_config.json, config.json, modules.json, 1_Pooling/config.json, sentence_bert_config.json,
 * config_sentence_transformers.json.
 *
 * Graphs, by family (small hidden size, a random token table sized to the tokenizer's vocabulary):
 *   bert    inputs input_ids, attention_mask, token_type_ids; states tanh(word[id] + type[type])
 *   qwen3   a decoder: inputs input_ids, attention_mask, position_ids; x = tanh(word[id] + pos[position]) × mask,
 *           states tanh(cumsum of x along the sequence), so every state reads the tokens before it
 *           (causal) and the last real token's state depends on the whole text
 *   gemma3  bidirectional: inputs input_ids, attention_mask; x = tanh(word[id]) × mask,
 *   xlmr    states tanh(x + sum of x over the sequence / 8)
 */
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { attr, OnnxModelBuilder, float32Tensor, int64Tensor } from '../../src/models/onnx-writer.ts';

export const HIDDEN = 16;
const BERT_VOCAB = 30522;
const POSITIONS = 2048;

export type Family = 'bert' | 'qwen3' | 'gemma3' | 'xlmr';

function random(seed: number): (n: number) => Float32Array {
  let s = seed;
  return (n) =>
    Float32Array.from({ length: n }, () => {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      return (s / 2 ** 32 - 0.5) * 2;
    });
}

/** The graph of `family` over a vocabulary of `vocab` ids. */
export function familyGraph(family: Family, vocab: number): Uint8Array {
  const model = new OnnxModelBuilder({ graphName: `tiny-${family}`, docString: 'test fixture' });
  const g = model.graph;
  const rand = random({ bert: 7, qwen3: 11, gemma3: 13, xlmr: 17 }[family]);
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  const mask = g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const table = g.initializer(float32Tensor('word_embeddings', rand(vocab * HIDDEN), [vocab, HIDDEN]));
  const words = g.op('Gather', [table, ids]);
  let states: string;
  if (family === 'bert') {
    const types = g.input('token_type_ids', 'int64', ['batch', 'sequence']);
    const typeTable = g.initializer(float32Tensor('token_type_embeddings', rand(2 * HIDDEN), [2, HIDDEN]));
    states = g.op('Tanh', [g.op('Add', [words, g.op('Gather', [typeTable, types])])]);
  } else {
    const maskF = g.op('Unsqueeze', [g.op('Cast', [mask], { to: attr.int(1) }), g.initializer(int64Tensor('last_axis', [-1], [1]))]);
    if (family === 'qwen3') {
      const axis = g.initializer(int64Tensor('seq_axis', [1], []));
      const positions = g.input('position_ids', 'int64', ['batch', 'sequence']);
      const posTable = g.initializer(float32Tensor('position_embeddings', rand(POSITIONS * HIDDEN), [POSITIONS, HIDDEN]));
      const x = g.op('Mul', [g.op('Tanh', [g.op('Add', [words, g.op('Gather', [posTable, positions])])]), maskF]);
      states = g.op('Tanh', [g.op('CumSum', [x, axis])]);
    } else {
      const x = g.op('Mul', [g.op('Tanh', [words]), maskF]);
      const total = g.op('ReduceSum', [x, g.initializer(int64Tensor('sum_axes', [1], [1]))], { keepdims: attr.int(1) });
      const scale = g.initializer(float32Tensor('context_scale', [0.125], []));
      states = g.op('Tanh', [g.op('Add', [x, g.op('Mul', [total, scale])])]);
    }
  }
  g.output(states, 'float32', ['batch', 'sequence', HIDDEN], 'last_hidden_state');
  return model.serialize();
}

/** Ids a tokenizer.json can produce: its model's vocabulary and its added tokens. */
export async function vocabularySize(tokenizerJson: string): Promise<number> {
  const t = JSON.parse(await readFile(tokenizerJson, 'utf8')) as {
    model: { vocab: Record<string, number> | [string, number][] };
    added_tokens?: { id: number }[];
  };
  let max = -1;
  const vocab = t.model.vocab;
  if (Array.isArray(vocab)) max = vocab.length - 1;
  else for (const id of Object.values(vocab)) max = Math.max(max, id);
  for (const a of t.added_tokens ?? []) max = Math.max(max, a.id);
  return max + 1;
}

export interface FolderSpec {
  family: Family;
  /** tokenizer.json to copy in. */
  tokenizer: string;
  /** tokenizer_config.json to copy in (its keys under `tokenizerConfig` override). */
  tokenizerConfigFile?: string;
  tokenizerConfig?: Record<string, unknown>;
  /** Replaces tokenizer.json's post_processor (e.g. Qwen3-Embedding's, which appends <|endoftext|>). */
  postProcessor?: unknown;
  pooling: 'mean' | 'cls' | 'last' | 'max';
  normalize: boolean;
  includePrompt?: boolean;
  prompts?: { prompts: Record<string, string>; default_prompt_name?: string };
  maxSeqLength?: number;
}

const ARCH: Record<Family, { model_type: string; architectures: string[] }> = {
  bert: { model_type: 'bert', architectures: ['BertModel'] },
  qwen3: { model_type: 'qwen3', architectures: ['Qwen3ForCausalLM'] },
  gemma3: { model_type: 'gemma3_text', architectures: ['Gemma3TextModel'] },
  xlmr: { model_type: 'xlm-roberta', architectures: ['XLMRobertaModel'] },
};

/** Writes the folder `<root>/<name>` and returns its path. */
export async function writeHfFolder(root: string, name: string, spec: FolderSpec): Promise<string> {
  const dir = path.join(root, name);
  const max = spec.maxSeqLength ?? 128;
  await mkdir(path.join(dir, 'onnx'), { recursive: true });
  await mkdir(path.join(dir, '1_Pooling'), { recursive: true });
  const vocab = spec.family === 'bert' ? BERT_VOCAB : await vocabularySize(spec.tokenizer);
  await writeFile(path.join(dir, 'onnx', 'model.onnx'), familyGraph(spec.family, vocab));
  if (spec.postProcessor === undefined) await copyFile(spec.tokenizer, path.join(dir, 'tokenizer.json'));
  else {
    const t = JSON.parse(await readFile(spec.tokenizer, 'utf8')) as Record<string, unknown>;
    await writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify({ ...t, post_processor: spec.postProcessor }));
  }
  const write = (f: string, v: unknown) => writeFile(path.join(dir, f), JSON.stringify(v));
  const baseConfig = spec.tokenizerConfigFile ? (JSON.parse(await readFile(spec.tokenizerConfigFile, 'utf8')) as Record<string, unknown>) : {};
  await write('tokenizer_config.json', { ...baseConfig, model_max_length: max, ...spec.tokenizerConfig });
  await write('config.json', {
    ...ARCH[spec.family],
    hidden_size: HIDDEN,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    head_dim: 8,
    vocab_size: vocab,
    max_position_embeddings: POSITIONS,
    polyray_synthetic: true,
  });
  await write('modules.json', [
    { idx: 0, name: '0', path: '', type: 'sentence_transformers.models.Transformer' },
    { idx: 1, name: '1', path: '1_Pooling', type: 'sentence_transformers.models.Pooling' },
    ...(spec.normalize ? [{ idx: 2, name: '2', path: '2_Normalize', type: 'sentence_transformers.models.Normalize' }] : []),
  ]);
  await write('1_Pooling/config.json', {
    word_embedding_dimension: HIDDEN,
    pooling_mode_cls_token: spec.pooling === 'cls',
    pooling_mode_mean_tokens: spec.pooling === 'mean',
    pooling_mode_max_tokens: spec.pooling === 'max',
    pooling_mode_lasttoken: spec.pooling === 'last',
    include_prompt: spec.includePrompt !== false,
  });
  await write('sentence_bert_config.json', { max_seq_length: max, do_lower_case: false });
  if (spec.prompts) await write('config_sentence_transformers.json', { ...spec.prompts, similarity_fn_name: 'cosine' });
  return dir;
}

/** A BERT sentence-transformers folder (`tokenizerJson`: a BERT WordPiece tokenizer.json, 30,522 ids). */
export function writeSentenceTransformersFolder(
  root: string,
  name: string,
  tokenizerJson: string,
  pooling: 'mean' | 'cls',
  normalize: boolean,
  prompts?: { prompts: Record<string, string>; default_prompt_name?: string },
  maxSeqLength = 128,
): Promise<string> {
  return writeHfFolder(root, name, {
    family: 'bert',
    tokenizer: tokenizerJson,
    tokenizerConfig: { tokenizer_class: 'BertTokenizer', do_lower_case: true },
    pooling,
    normalize,
    ...(prompts ? { prompts } : {}),
    maxSeqLength,
  });
}
