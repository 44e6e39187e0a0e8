/**
 * A sentence-transformers model folder with generated weights, as Optimum exports one: onnx/model.onnx
 * (token states tanh(word[id] + type[type]), output last_hidden_state), the tokenizer.json given,
 * tokenizer_config.json, config.json, modules.json, 1_Pooling/config.json, sentence_bert_config.json.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { OnnxModelBuilder, float32Tensor } from '../../src/models/onnx-writer.ts';

export const HIDDEN = 16;
const VOCAB = 30522;

function graph(): Uint8Array {
  const model = new OnnxModelBuilder({ graphName: 'tiny', docString: 'test fixture' });
  const g = model.graph;
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const types = g.input('token_type_ids', 'int64', ['batch', 'sequence']);
  let s = 7;
  const rand = (n: number) =>
    Float32Array.from({ length: n }, () => {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      return (s / 2 ** 32 - 0.5) * 2;
    });
  const table = g.initializer(float32Tensor('word_embeddings', rand(VOCAB * HIDDEN), [VOCAB, HIDDEN]));
  const typeTable = g.initializer(float32Tensor('token_type_embeddings', rand(2 * HIDDEN), [2, HIDDEN]));
  const words = g.op('Gather', [table, ids], {}, { name: 'words' });
  const kinds = g.op('Gather', [typeTable, types], {}, { name: 'types' });
  const sum = g.op('Add', [words, kinds], {}, { name: 'sum' });
  const states = g.op('Tanh', [sum], {}, { name: 'states' });
  g.output(states, 'float32', ['batch', 'sequence', HIDDEN], 'last_hidden_state');
  return model.serialize();
}

/** Writes the folder `<root>/<name>`; `tokenizerJson` is a BERT WordPiece tokenizer.json (30,522 ids). */
export async function writeSentenceTransformersFolder(
  root: string,
  name: string,
  tokenizerJson: string,
  pooling: 'mean' | 'cls',
  normalize: boolean,
  prompts?: { prompts: Record<string, string>; default_prompt_name?: string },
  maxSeqLength = 128,
): Promise<string> {
  const dir = path.join(root, name);
  await mkdir(path.join(dir, 'onnx'), { recursive: true });
  await mkdir(path.join(dir, '1_Pooling'), { recursive: true });
  await writeFile(path.join(dir, 'onnx', 'model.onnx'), graph());
  await copyFile(tokenizerJson, path.join(dir, 'tokenizer.json'));
  const write = (f: string, v: unknown) => writeFile(path.join(dir, f), JSON.stringify(v));
  await write('tokenizer_config.json', { tokenizer_class: 'BertTokenizer', do_lower_case: true, model_max_length: maxSeqLength });
  await write('config.json', {
    model_type: 'bert',
    architectures: ['BertModel'],
    hidden_size: HIDDEN,
    num_hidden_layers: 2,
    max_position_embeddings: 512,
    polyray_synthetic: true,
  });
  await write('modules.json', [
    { idx: 0, name: '0', path: '', type: 'sentence_transformers.models.Transformer' },
    { idx: 1, name: '1', path: '1_Pooling', type: 'sentence_transformers.models.Pooling' },
    ...(normalize ? [{ idx: 2, name: '2', path: '2_Normalize', type: 'sentence_transformers.models.Normalize' }] : []),
  ]);
  await write('1_Pooling/config.json', {
    word_embedding_dimension: HIDDEN,
    pooling_mode_cls_token: pooling === 'cls',
    pooling_mode_mean_tokens: pooling === 'mean',
  });
  await write('sentence_bert_config.json', { max_seq_length: maxSeqLength, do_lower_case: false });
  if (prompts) await write('config_sentence_transformers.json', { ...prompts, similarity_fn_name: 'cosine' });
  return dir;
}
