/** The generated BERT-small folder the bench serves (Optimum / sentence-transformers layout). */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { MINILM_L6_CONFIG, buildBertGraph, generateBertWeights } from '../src/models/bert-graph.ts';
import { WEIGHT_SEED } from '../src/models/bert.ts';

export const NAME = 'bert-small-hf';
export const MAX_SEQ = 256;

/** The Optimum / sentence-transformers layout of a generated MiniLM-L6-shaped BERT (token states out). */
export function writeBertSmallFolder(root: string, tokenizerJson: string): string {
  const dir = path.join(root, NAME);
  mkdirSync(path.join(dir, 'onnx'), { recursive: true });
  mkdirSync(path.join(dir, '1_Pooling'), { recursive: true });
  const c = MINILM_L6_CONFIG;
  const graph = buildBertGraph(generateBertWeights(c, WEIGHT_SEED), 'plain', {
    graphName: NAME,
    producerVersion: 'bench',
    output: 'last_hidden_state',
  });
  writeFileSync(path.join(dir, 'onnx', 'model.onnx'), graph.serialize());
  copyFileSync(tokenizerJson, path.join(dir, 'tokenizer.json'));
  const write = (f: string, v: unknown): void => writeFileSync(path.join(dir, f), JSON.stringify(v));
  write('tokenizer_config.json', {
    tokenizer_class: 'BertTokenizer',
    do_lower_case: true,
    model_max_length: MAX_SEQ,
    cls_token: '[CLS]',
    sep_token: '[SEP]',
    pad_token: '[PAD]',
    unk_token: '[UNK]',
    mask_token: '[MASK]',
  });
  write('config.json', {
    model_type: 'bert',
    architectures: ['BertModel'],
    hidden_size: c.hidden,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    intermediate_size: c.intermediate,
    max_position_embeddings: c.maxPositions,
    vocab_size: c.vocabSize,
    type_vocab_size: c.typeVocabSize,
    polyray_synthetic: true,
  });
  write('modules.json', [
    { idx: 0, name: '0', path: '', type: 'sentence_transformers.models.Transformer' },
    { idx: 1, name: '1', path: '1_Pooling', type: 'sentence_transformers.models.Pooling' },
    { idx: 2, name: '2', path: '2_Normalize', type: 'sentence_transformers.models.Normalize' },
  ]);
  write('1_Pooling/config.json', { word_embedding_dimension: c.hidden, pooling_mode_mean_tokens: true });
  write('sentence_bert_config.json', { max_seq_length: MAX_SEQ, do_lower_case: false });
  return dir;
}
