/**
 * Loads a model's tokenizer from its folder, by the manifest's `tokenizer` spec. One function for the
 * registry (the event loop's copy: limits, special tokens, cache-key rules) and the tokenizer threads
 * (src/runtime/tokenizer-worker.ts, which tokenise), so both read the same files the same way.
 */
import path from 'node:path';
import { ErrorCode, PolyrayError } from '../errors.ts';
import { loadHfTokenizer } from './hf-tokenizer.ts';
import type { TokenizerSpec } from './manifest.ts';
import { type Tokenizer, WordTokenizer } from './tokenizer.ts';
import { WordPieceTokenizer } from './wordpiece.ts';

/** The tokenizer of model `name` in `dir`; a model without one (images, heads) gets one that refuses text. */
export async function loadTokenizer(dir: string, name: string, spec: TokenizerSpec | undefined): Promise<Tokenizer> {
  if (!spec) return noTextTokenizer(name);
  const file = path.join(dir, spec.file);
  switch (spec.kind) {
    case 'word':
      return WordTokenizer.load(file, { lowercase: spec.lowercase });
    case 'hf':
      // Any tokenizer.json family; tokenizer_config.json beside it is read too.
      return loadHfTokenizer(dir, spec.file);
    case 'wordpiece':
      // A Hugging Face tokenizer.json; its normalizer (not spec.lowercase) decides casing.
      return WordPieceTokenizer.load(file);
    default: {
      const never: never = spec.kind;
      throw new TypeError(`unknown tokenizer kind ${String(never)}`);
    }
  }
}

/** Image models and heads read no text: their tokenizer refuses every input with a client-facing error. */
function noTextTokenizer(model: string): Tokenizer {
  return {
    vocabSize: 0,
    encode: () => {
      throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${model} does not read text; give it image inputs (imageUrl or imageBase64)`, { model });
    },
  };
}
