/** Messages between the tokenizer pool (main thread) and its threads; results travel in transferred buffers. */
import type { TokenizerSpec } from './manifest.ts';
import type { TokenizeOptions } from './tokenizer.ts';
import type { ViewOptions } from './view-batch.ts';

/** Where a thread finds a model's tokenizer; `key` (name@version) names the loaded copy. */
export interface TokenizerSource {
  key: string;
  name: string;
  dir: string;
  spec: TokenizerSpec | undefined;
}

export type ToTokenizer =
  | { type: 'nice'; niceness: number }
  | { type: 'tokenize'; id: number; source: TokenizerSource; texts: readonly string[]; options: TokenizeOptions }
  /** `POST /tokenize`: each text's tokens with offsets, as JSON (src/runtime/view-batch.ts). */
  | { type: 'view'; id: number; source: TokenizerSource; texts: readonly string[]; options: ViewOptions }
  /** Drops loaded tokenizers (a model reloaded or removed). */
  | { type: 'forget'; keys: string[] }
  | { type: 'close' };

export type FromTokenizer =
  /** Item i's ids are `ids[start_i, start_i + lengths[i])`, its length before truncation `totals[i]`. */
  | {
      type: 'tokenized';
      id: number;
      ids: BigInt64Array;
      mask: BigInt64Array;
      lengths: Int32Array;
      totals: Int32Array;
      /** 1 where only part of the text was read (its total is a lower bound). */
      partials: Uint8Array;
      promptTokens: number;
    }
  | { type: 'viewed'; id: number; json: string[]; counts: number[] }
  /** `code`: a client-facing error code the tokenizer raised (e.g. UNSUPPORTED_INPUT). */
  | { type: 'error'; id: number; message: string; code?: string | undefined };
