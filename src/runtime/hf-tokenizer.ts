/**
 * Hugging Face `tokenizer.json` of any family — WordPiece, byte-level BPE (GPT-2, RoBERTa, Qwen),
 * SentencePiece BPE and Unigram (Gemma, T5, XLM-R) — with its normalizer, pre-tokenizer and
 * post-processor (special tokens), for model folders whose manifest says `tokenizer.kind: "hf"`.
 *
 * Owns: choosing the implementation and holding it to the `Tokenizer` contract (never throws, every id
 * in [0, vocabSize)), and reading from the file how its pieces write text (`pieces`, for the offsets of
 * src/runtime/token-view.ts: `@huggingface/tokenizers` reports none).
 * - A BERT-style WordPiece file is read by our own WordPiece (src/runtime/wordpiece.ts): measured
 *   ×1.3 (short texts) to ×2.7 (500 words) faster than `@huggingface/tokenizers` 0.2.0, with the same ids on
 *   50,000 fuzzed texts (test/hf-tokenizer.test.ts). Where the two differ, ours follows the Rust
 *   `tokenizers` normalizer that sentence-transformers runs: unassigned code points are removed as control
 *   characters, and CJK ideographs beyond the BMP (U+20000–U+2FA1F) are split like the others.
 * - Every other file goes to `@huggingface/tokenizers`, the pure-JS implementation the transformers.js
 *   authors maintain, with `tokenizer_config.json` from the same folder when present.
 *
 * The text is tokenised as sent: no normalisation happens here beyond the tokenizer's own.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { type AddedToken, Tokenizer as HuggingFaceTokenizer } from '@huggingface/tokenizers';
import type { Encoding, Piece, PieceNotation, Pieces, Tokenizer } from './tokenizer.ts';
import { WordPieceTokenizer } from './wordpiece.ts';

const LONE_SURROGATE = /\p{Cs}/gu;

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly specials: { prefix: number; suffix: number };
  readonly maxPieceChars?: number;
  readonly #tok: HuggingFaceTokenizer;
  readonly #notation: PieceNotation;
  /** Added tokens by id, for `pieces`. */
  #added: Map<number, AddedToken> | undefined;

  constructor(tokenizerJson: unknown, tokenizerConfig: Record<string, unknown> = {}) {
    this.#tok = new HuggingFaceTokenizer(tokenizerJson as object, tokenizerConfig);
    let max = -1;
    let longest = 1;
    for (const [piece, id] of this.#tok.get_vocab(true)) {
      if (id > max) max = id;
      if (piece.length > longest) longest = piece.length;
    }
    this.vocabSize = max + 1;
    // Byte-level pieces are at least as long as the text they stand for; a WordPiece word over
    // max_input_chars_per_word is one unknown token; fused unknown runs have no bound at all.
    const model = ((tokenizerJson as { model?: Record<string, unknown> }).model ?? {}) as Record<string, unknown>;
    const perWord = typeof model['max_input_chars_per_word'] === 'number' ? 2 * (model['max_input_chars_per_word'] as number) : 0;
    if (model['fuse_unk'] !== true) this.maxPieceChars = Math.max(longest, perWord);
    this.specials = specialsOf(this.#tok);
    this.#notation = notationOf(tokenizerJson, tokenizerConfig);
  }

  /** Each id's vocabulary string; added tokens are special as the file marks them, the model's unknown token never. */
  pieces(ids: readonly number[]): Pieces {
    // Read on the first call only: just /tokenize needs them.
    const added = this.#added ?? this.#tok.get_added_tokens_decoder();
    this.#added = added;
    const unk = this.#tok.model?.unk_token_id;
    return {
      notation: this.#notation,
      pieces: ids.map((id): Piece => {
        const piece = this.#tok.id_to_token(id) ?? '';
        const a = added.get(id);
        if (id === unk) return { piece, special: false, added: a !== undefined, unknown: true };
        return a ? { piece, special: a.special, added: true } : { piece, special: false };
      }),
    };
  }

  encode(text: string): Encoding {
    let enc: { ids: number[]; attention_mask: number[] };
    try {
      enc = this.#tok.encode(text);
    } catch {
      // Lone surrogates are the one input found to upset a pipeline; they become U+FFFD, as a UTF-8 round trip would.
      enc = this.#tok.encode(text.replace(LONE_SURROGATE, '\uFFFD'));
    }
    return { ids: enc.ids, mask: enc.attention_mask };
  }
}

/** Where a single text's own tokens sit among the special tokens the post-processor adds (a fixed template). */
function specialsOf(tok: HuggingFaceTokenizer): { prefix: number; suffix: number } {
  const probe = 'a b';
  const full = tok.encode(probe).ids;
  const own = tok.encode(probe, { add_special_tokens: false }).ids;
  for (let k = 0; k + own.length <= full.length; k++) {
    if (own.every((id: number, j: number) => full[k + j] === id)) return { prefix: k, suffix: full.length - k - own.length };
  }
  return { prefix: 0, suffix: 0 };
}

/**
 * How the file's pieces write text (see `PieceNotation`), from its decoder, pre-tokenizer, normalizer and model,
 * and from tokenizer_config.json's `do_lowercase_and_remove_accent` (which @huggingface/tokenizers applies).
 */
function notationOf(tokenizerJson: unknown, tokenizerConfig: Record<string, unknown>): PieceNotation {
  const root = asRecord(tokenizerJson);
  const model = asRecord(root['model']);
  const steps = [...stepsOf(root['decoder'], 'decoders'), ...stepsOf(root['pre_tokenizer'], 'pretokenizers'), ...stepsOf(root['normalizer'], 'normalizers')];
  const n: PieceNotation = {};
  if (tokenizerConfig['do_lowercase_and_remove_accent'] === true) {
    n.lowercase = true;
    n.stripAccents = true;
  }
  for (const step of steps) {
    switch (step['type']) {
      case 'ByteLevel':
        n.byteLevel = true;
        break;
      case 'ByteFallback':
        n.byteFallback = true;
        break;
      case 'Metaspace':
        n.space = typeof step['replacement'] === 'string' ? step['replacement'] : '\u2581';
        break;
      case 'Replace': {
        // Gemma and Llama write spaces as "▁" with a Replace normalizer (" " → "▁") and decoder ("▁" → " ").
        const from = asRecord(step['pattern'])['String'];
        const to = step['content'];
        if (from === ' ' && typeof to === 'string' && [...to].length === 1 && to !== ' ') n.space = to;
        if (to === ' ' && typeof from === 'string' && [...from].length === 1 && from !== ' ') n.space = from;
        break;
      }
      case 'WordPiece':
        n.continuingPrefix = typeof step['prefix'] === 'string' ? step['prefix'] : '##';
        break;
      case 'BertPreTokenizer':
        n.bertWords = true;
        break;
      case 'Lowercase':
        n.lowercase = true;
        break;
      case 'BertNormalizer':
        if (step['lowercase'] !== false) n.lowercase = true;
        // strip_accents null or absent follows lowercase, as in `tokenizers`.
        if (step['strip_accents'] === true || (typeof step['strip_accents'] !== 'boolean' && step['lowercase'] !== false)) n.stripAccents = true;
        break;
      case 'StripAccents':
        n.stripAccents = true;
        break;
      case 'NFC':
      case 'NFKC':
        n.composition = step['type'];
        break;
      case 'Precompiled':
        // SentencePiece's compiled normalizer (T5, XLM-R files): NFKC, by default.
        n.composition = 'NFKC';
        break;
    }
  }
  if (model['byte_fallback'] === true) n.byteFallback = true;
  if (model['type'] === 'WordPiece') n.continuingPrefix ??= '##';
  if (typeof model['continuing_subword_prefix'] === 'string' && model['continuing_subword_prefix'] !== '')
    n.continuingPrefix = model['continuing_subword_prefix'];
  if (typeof model['end_of_word_suffix'] === 'string' && model['end_of_word_suffix'] !== '') n.endOfWordSuffix = model['end_of_word_suffix'];
  return n;
}

/** A decoder / pre-tokenizer / normalizer and, for a Sequence, its members. */
function stepsOf(step: unknown, members: string): Record<string, unknown>[] {
  const s = asRecord(step);
  const list = s[members];
  return Array.isArray(list) ? [s, ...list.flatMap((m) => stepsOf(m, members))] : [s];
}

function asRecord(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

/**
 * The tokenizer of `<dir>/<file>` (a `tokenizer.json`): our WordPiece when the file is one it reads
 * exactly, else `@huggingface/tokenizers`. Throws a TypeError naming the file when it is missing,
 * not JSON, outside the folder, or not a tokenizer either implementation accepts.
 */
export async function loadHfTokenizer(dir: string, file: string): Promise<Tokenizer> {
  const full = path.resolve(dir, file);
  const inside = path.relative(path.resolve(dir), full);
  if (inside.startsWith('..') || path.isAbsolute(inside)) {
    throw new TypeError(`tokenizer file "${file}" is outside the model folder`);
  }
  let json: unknown;
  try {
    json = JSON.parse(await readFile(full, 'utf8'));
  } catch (e) {
    throw new TypeError(`tokenizer file "${file}" cannot be read as JSON: ${(e as Error).message.slice(0, 200)}`);
  }
  try {
    return WordPieceTokenizer.fromJSON(json, file);
  } catch {
    // Not a BERT-style WordPiece file: the general implementation reads it.
  }
  const config = await readConfig(path.join(path.dirname(full), 'tokenizer_config.json'));
  try {
    return new HfTokenizer(json, config);
  } catch (e) {
    throw new TypeError(`tokenizer file "${file}" is not a tokenizer @huggingface/tokenizers can read: ${(e as Error).message.slice(0, 200)}`);
  }
}

async function readConfig(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return {};
  }
  const v = JSON.parse(text) as unknown;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TypeError(`${path.basename(file)} must be a JSON object`);
  return v as Record<string, unknown>;
}
