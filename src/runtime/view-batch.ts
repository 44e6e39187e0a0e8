/**
 * `POST /tokenize` answers, built where the tokenizer runs (a tokenizer thread, or the event loop when the
 * pool has none): each text's tokens (src/runtime/token-view.ts) as the JSON of TEI's list of
 * `{id, text, special, start, stop}`, so the event loop only joins strings however many tokens there are.
 */
import type { Tokenizer } from './tokenizer.ts';
import { viewTokens } from './token-view.ts';

/** How `/tokenize` reads a batch: the prompt before each text, and whether special tokens are kept. */
export interface ViewOptions {
  addSpecialTokens: boolean;
  /** Prepended to every text (a prompt_name's prompt); offsets count from the start of prompt + text. */
  prompt: string;
  /** An input with more tokens than this is not described (the route refuses it); its JSON is empty. */
  maxTokens: number;
}

/** Per text: the JSON of its token list (empty when over `maxTokens`) and its number of tokens. */
export interface ViewedBatch {
  json: string[];
  counts: number[];
}

export function viewBatch(tokenizer: Tokenizer, texts: readonly string[], o: ViewOptions): ViewedBatch {
  const json: string[] = [];
  const counts: number[] = [];
  for (const text of texts) {
    const tokens = viewTokens(tokenizer, o.prompt + text, { addSpecialTokens: o.addSpecialTokens });
    counts.push(tokens.length);
    json.push(tokens.length > o.maxTokens ? '' : JSON.stringify(tokens));
  }
  return { json, counts };
}
