/**
 * Tokenizers: text → token ids + attention mask, for the models' `input_ids` / `attention_mask`.
 *
 * Owns: the `Tokenizer` contract the runtime uses, and `WordTokenizer`, the word-level tokenizer
 * of word-vector models (`tokenizer.kind = "word"`, e.g. text-glove).
 *
 * Vocabulary file: UTF-8, one token per line, line index = token id. Line 0 is reserved for
 * unknown words (its text, e.g. `<unk>`, is never looked up); unknown words get id 0 and mask 0,
 * so they take no part in pooling.
 *
 * Tokenisation follows GloVe 6B's Stanford (PTB-style) tokenisation closely enough that the words
 * a vocabulary has are found:
 *   1. NFC-normalise, then lower-case (option), so "Café" (composed or not) and "CAFÉ" agree.
 *      Soft hyphens are removed; control/format characters and all Unicode spaces separate tokens.
 *   2. A word is a run of letters, marks and digits, with internal hyphens ("well-known"),
 *      apostrophes ("don't", also typographic ’), and, between digits, "." or "," ("3.5", "1,000").
 *      Every other character is a token by itself (punctuation, symbols, emoji), together with
 *      any combining marks that follow it.
 *   3. English clitics are split off as PTB does: "don't" → "do" "n't", "can't" → "ca" "n't",
 *      "it's" → "it" "'s"; also 'm 'd 'll 're 've. (wink's GloVe list has "ca" and "wo" but no
 *      clitic tokens: the clitics are then simply unknown.)
 *   4. Lookup with fallbacks, each tried only when the previous one misses: the word itself →
 *      without apostrophes ("o'brien" → "obrien") → with accents and compatibility forms folded
 *      ("café" → "cafe", fullwidth "ｃａｔ" → "cat") → its parts split at internal hyphens and
 *      apostrophes, each looked up (with folding) as a token of its own ("ultra-rare-compound" →
 *      "ultra" "rare" "compound"). Unknown parts stay unknown. Numbers ("3.5") are never split:
 *      their digit pieces carry no more meaning than the whole.
 *
 * `encode` never throws: any string (lone surrogates, control characters, megabytes) yields a
 * result, with at most one token per UTF-16 code unit of the normalised input.
 */

import { readFile } from 'node:fs/promises';

/** Token ids and attention mask (1 = real token, 0 = masked out), of equal length. */
export interface Encoding {
  ids: number[];
  mask: number[];
}

export interface Tokenizer {
  /** Number of ids (vocabulary lines including the reserved id 0). Every id is in [0, vocabSize). */
  readonly vocabSize: number;
  /**
   * True when the cache key may be taken from the normalised text (`normaliseText`: NFC, whitespace runs
   * collapsed, trimmed) because that normalisation provably leaves this tokenizer's ids unchanged, so
   * spacing variants share one cache entry. Otherwise the key is taken from the text as sent. The model
   * always tokenises the text as sent.
   */
  readonly normalisedKeys?: boolean;
  /**
   * How many special tokens the tokenizer puts before and after a single text's own tokens (BERT: [CLS]
   * and [SEP], 1 and 1; Gemma: <bos>, 1 and 0). Truncation keeps them and cuts the text's tokens.
   * Absent: none.
   */
  readonly specials?: { prefix: number; suffix: number };
  /**
   * Most UTF-16 code units one token can stand for (the longest vocabulary piece, or the longest word read
   * as one unknown token), so that `maxTokens` tokens never come from more than `maxTokens × maxPieceChars`
   * characters of text (whitespace and characters the normalizer drops aside). Absent when no such bound
   * exists (a word tokenizer, fused unknown runs): then the whole text is always tokenised.
   */
  readonly maxPieceChars?: number;
  /**
   * An id `encode` always gives mask 0 (a word tokenizer's unknown words take no part in pooling), so that
   * token-id inputs are masked as the text they came from was. Absent: every id has mask 1.
   */
  readonly maskedId?: number;
  encode(text: string): Encoding;
  /**
   * The vocabulary pieces of `ids` (as `encode` returned them: one each, in order) and how they write text, so
   * that src/runtime/token-view.ts can find each token's offsets in the input. Absent: tokens have no offsets.
   */
  pieces?(ids: readonly number[]): Pieces;
}

/** One token as its vocabulary writes it. */
export interface Piece {
  /** The vocabulary string: "##ing", "Ġfox", "▁fox", "<0xE4>", "[CLS]". */
  piece: string;
  /** A special token: the template's [CLS] / <s> / <bos>, or an added token marked special. */
  special: boolean;
  /** An added token: it may also stand for its own content, written literally in the input. */
  added?: boolean;
  /** The unknown token ([UNK], <unk>): it stands for text the vocabulary lacks, of unknown length. Never special. */
  unknown?: boolean;
}

/**
 * How a vocabulary's pieces write the text they stand for, and what the tokenizer did to the text first. With no
 * field set, a piece is the text itself, unchanged but for Unicode compatibility forms.
 */
export interface PieceNotation {
  /** GPT-2 byte-level: each character stands for one byte ("Ġ" for a space), so a piece may hold part of a character. */
  byteLevel?: boolean;
  /** SentencePiece byte fallback: pieces "<0x00>" to "<0xFF>" stand for one byte. */
  byteFallback?: boolean;
  /** The character written for a space (SentencePiece's "▁"). */
  space?: string;
  /** The prefix of a word's continuation pieces, not part of the text (WordPiece's "##"). */
  continuingPrefix?: string;
  /** The suffix of a word's last piece, not part of the text (CLIP's "</w>"). */
  endOfWordSuffix?: string;
  /** Words were split as BERT's pre-tokenizer does (spaces; each punctuation character alone), so an unknown token is one whole word. */
  bertWords?: boolean;
  /** The tokenizer lower-cases text (BERT uncased), so pieces are matched to the text without regard to case. */
  lowercase?: boolean;
  /** The tokenizer strips accents (BERT uncased), so a piece may lack the text's accents. */
  stripAccents?: boolean;
  /** The Unicode composition the tokenizer applies first (Qwen: NFC; XLM-R, T5: NFKC), so no piece ends inside it. */
  composition?: 'NFC' | 'NFKC';
}

export interface Pieces {
  notation: PieceNotation;
  pieces: Piece[];
}

/**
 * `enc` cut to `max` tokens: the special tokens around the text stay, the text's own tokens are cut on
 * `side` ("right" keeps the start of the text), as Hugging Face tokenizers truncate a single sequence.
 */
export function truncateEncoding(
  enc: Encoding,
  max: number,
  side: 'left' | 'right',
  specials: { prefix: number; suffix: number } = { prefix: 0, suffix: 0 },
): Encoding {
  if (enc.ids.length <= max) return enc;
  const { prefix, suffix } = specials;
  const keep = Math.max(0, max - prefix - suffix);
  const cut = <T>(a: readonly T[]): T[] => {
    const body = a.slice(prefix, a.length - suffix);
    return [...a.slice(0, prefix), ...(side === 'right' ? body.slice(0, keep) : body.slice(body.length - keep)), ...a.slice(a.length - suffix)];
  };
  return { ids: cut(enc.ids), mask: cut(enc.mask) };
}

export interface WordTokenizerOptions {
  lowercase: boolean;
}

/** The reserved id of unknown words. */
export const UNKNOWN_ID = 0;

// A word: letters/marks/digits, joined by internal - ' ’ (followed by a letter/digit), or by . ,
// between two digits. Group 1 = word, group 2 = any other single character (+ trailing marks).
// Separators: \s covers Unicode spaces and line terminators; \p{Cc}/\p{Cf} are controls and
// invisible format characters (ZWJ, BOM, bidi marks...), which must not become tokens.
const TOKEN_RE = /([\p{L}\p{M}\p{N}]+(?:(?:[-'\u2019]|(?<=\p{N})[.,](?=\p{N}))[\p{L}\p{M}\p{N}]+)*)|([^\s\p{Cc}\p{Cf}\p{L}\p{M}\p{N}]\p{M}*)/gu;

const SOFT_HYPHEN_RE = /\u00AD/g;
const CLITIC_RE = /^(.+?)('(?:s|m|d|ll|re|ve))$/iu;
const NT_RE = /^(.+)(n't)$/iu;
const PART_SEPARATOR_RE = /[-']/u;
const COMBINING_RE = /\p{M}/gu;
const NON_ASCII_RE = /[^\p{ASCII}]/u;

/** Word-level tokenizer over a vocabulary file. Immutable; safe to share. */
export class WordTokenizer implements Tokenizer {
  readonly vocabSize: number;
  /** It NFC-normalises itself and every Unicode space, control and format character separates words. */
  readonly normalisedKeys = true;
  readonly maskedId = UNKNOWN_ID;
  readonly lowercase: boolean;
  readonly #ids: Map<string, number>;
  /** Words by id, for `pieces`; built on its first call, since only /tokenize needs them. */
  #words: string[] | undefined;

  // biome-ignore lint/style/useConsistentMemberAccessibility: JavaScript has no #constructor; instances come only from the static loaders.
  private constructor(ids: Map<string, number>, vocabSize: number, options: WordTokenizerOptions) {
    this.#ids = ids;
    this.vocabSize = vocabSize;
    this.lowercase = options.lowercase;
  }

  /** Loads a vocabulary file (see the file header for its format). Throws if it cannot be read. */
  static async load(path: string, options: WordTokenizerOptions): Promise<WordTokenizer> {
    const text = await readFile(path, 'utf8');
    const lines = text.split('\n');
    if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop(); // final newline
    return WordTokenizer.fromVocabulary(
      lines.map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l)),
      options,
    );
  }

  /**
   * A tokenizer over `lines` (index = id; index 0 is the reserved unknown id). A repeated token
   * keeps its first (lowest) id.
   */
  static fromVocabulary(lines: readonly string[], options: WordTokenizerOptions): WordTokenizer {
    const ids = new Map<string, number>();
    for (let i = 1; i < lines.length; i++) {
      const token = lines[i]!;
      if (token !== '' && !ids.has(token)) ids.set(token, i);
    }
    return new WordTokenizer(ids, Math.max(1, lines.length), options);
  }

  /** The id of one exact token, or UNKNOWN_ID. */
  idOf(token: string): number {
    return this.#ids.get(token) ?? UNKNOWN_ID;
  }

  /** The token strings `encode` looks up (after splitting and fallbacks), for diagnostics and tests. */
  tokenize(text: string): string[] {
    const out: string[] = [];
    this.#scan(text, (token) => {
      out.push(token);
    });
    return out;
  }

  encode(text: string): Encoding {
    const ids: number[] = [];
    const mask: number[] = [];
    this.#scan(text, (_token, id) => {
      ids.push(id);
      mask.push(id === UNKNOWN_ID ? 0 : 1);
    });
    return { ids, mask };
  }

  /**
   * Each id's vocabulary word, written as looked up (lower-cased; accents stripped where the lookup fell back to
   * that); the reserved id 0 is the unknown token.
   */
  pieces(ids: readonly number[]): Pieces {
    if (!this.#words) {
      const words = new Array<string>(this.vocabSize).fill('');
      for (const [word, id] of this.#ids) words[id] = word;
      this.#words = words;
    }
    const words = this.#words;
    return {
      notation: { lowercase: this.lowercase, stripAccents: true, composition: 'NFC' },
      pieces: ids.map((id): Piece => (id === UNKNOWN_ID ? { piece: '<unk>', special: false, unknown: true } : { piece: words[id] ?? '', special: false })),
    };
  }

  /** Splits `text` and calls `emit` once per token, with the token's id (0 when unknown). */
  #scan(text: string, emit: (token: string, id: number) => void): void {
    // String(): JavaScript callers outside the type system must not make encode() throw.
    let s = (typeof text === 'string' ? text : String(text)).normalize('NFC'); // lone surrogates pass through
    if (this.lowercase) s = s.toLowerCase();
    if (s.includes('\u00AD')) s = s.replace(SOFT_HYPHEN_RE, '');
    for (const m of s.matchAll(TOKEN_RE)) {
      const word = m[1];
      if (word === undefined) {
        const other = m[2]!;
        emit(other, this.idOf(other));
        continue;
      }
      this.#word(word.includes('\u2019') ? word.replaceAll('\u2019', "'") : word, emit);
    }
  }

  /** Clitic splitting, then lookup with fallbacks (see the file header, steps 3 and 4). */
  #word(word: string, emit: (token: string, id: number) => void): void {
    if (word.includes("'")) {
      const nt = NT_RE.exec(word);
      const clitic = nt ?? CLITIC_RE.exec(word);
      if (clitic) {
        this.#lookup(clitic[1]!, emit);
        emit(clitic[2]!, this.idOf(clitic[2]!));
        return;
      }
    }
    this.#lookup(word, emit);
  }

  #lookup(word: string, emit: (token: string, id: number) => void): void {
    const direct = this.#ids.get(word);
    if (direct !== undefined) {
      emit(word, direct);
      return;
    }
    if (word.includes("'")) {
      const joined = word.replaceAll("'", '');
      const id = this.#ids.get(joined);
      if (id !== undefined) {
        emit(joined, id);
        return;
      }
    }
    const folded = foldAccents(word);
    if (folded !== word) {
      const id = this.#ids.get(folded);
      if (id !== undefined) {
        emit(folded, id);
        return;
      }
    }
    if (PART_SEPARATOR_RE.test(word)) {
      for (const part of word.split(PART_SEPARATOR_RE)) {
        if (part === '') continue;
        let id = this.#ids.get(part);
        let token = part;
        if (id === undefined) {
          const f = foldAccents(part);
          id = this.#ids.get(f);
          if (id !== undefined) token = f;
        }
        emit(token, id ?? UNKNOWN_ID);
      }
      return;
    }
    emit(word, UNKNOWN_ID);
  }
}

/**
 * "café" → "cafe", "ｆｕｌｌ" → "full", "ﬁne" → "fine": compatibility decomposition without
 * combining marks. Only a lookup fallback, never applied to text up front, because NFKC would also
 * rewrite tokens the vocabulary has as they are ("…" → "...").
 */
function foldAccents(word: string): string {
  if (!NON_ASCII_RE.test(word)) return word;
  const stripped = word.normalize('NFKD').replace(COMBINING_RE, '').normalize('NFC');
  return stripped === '' ? word : stripped;
}

/** Extra tokens a probe must find beyond the limit before the rest of a text is left unread (a word cut at the probe's end). */
const PROBE_MARGIN_TOKENS = 16;

/** How a batch of texts is tokenised for a model: its limit, the side `truncate` cuts, and the prompt before each text. */
export interface TokenizeOptions {
  maxTokens: number;
  side: 'left' | 'right';
  /** Cut texts over `maxTokens` on `side` (keeping special tokens); otherwise they keep their full length. */
  truncate: boolean;
  /** Prepended to every text before tokenising (sentence-transformers' prompts). Default none. */
  prompt?: string;
}

/** One tokenised text: ids and mask as the batcher copies them into a batch, and its length before any cut. */
export interface Tokenized {
  ids: BigInt64Array;
  mask: BigInt64Array;
  /**
   * Tokens of the whole text (prompt and special tokens included) before truncation; when `partial`, of the
   * part read (a lower bound).
   */
  total: number;
  /** True when only part of an over-long text was read (it has at least `total` tokens). */
  partial?: boolean;
}

export interface TokenizedBatch {
  items: Tokenized[];
  /**
   * Leading tokens that belong to the prompt, as sentence-transformers counts them (the prompt's own
   * encoding, special tokens included, less one): what a Pooling module with `include_prompt: false`
   * leaves out. 0 without a prompt.
   */
  promptTokens: number;
}

/**
 * Tokenises `texts` (each after `prompt`) the way the batcher needs them. Pure and synchronous: the
 * tokenizer threads (src/runtime/tokenizer-pool.ts) run it, and so does the event loop when they are off.
 */
export function tokenizeBatch(tokenizer: Tokenizer, texts: readonly string[], o: TokenizeOptions): TokenizedBatch {
  const prompt = o.prompt ?? '';
  // Refuse before work: of a text longer than `maxTokens` tokens could come from, only the end that is kept
  // (the start, or with left truncation the end) is read first. Enough tokens there — more than the limit
  // plus a margin for the word the cut splits — settle it: refused, or cut from those tokens, which are the
  // whole text's (tokenizers split at whitespace and punctuation before anything else). Too few (runs of
  // whitespace or characters the normalizer drops): the whole text is read after all.
  const probe = tokenizer.maxPieceChars === undefined ? Number.POSITIVE_INFINITY : (o.maxTokens + PROBE_MARGIN_TOKENS) * tokenizer.maxPieceChars;
  const items = texts.map((text): Tokenized => {
    const whole = prompt + text;
    let full: Encoding | undefined;
    let partial = false;
    if (whole.length > probe) {
      const part = tokenizer.encode(o.truncate && o.side === 'left' ? whole.slice(whole.length - probe) : whole.slice(0, probe));
      if (part.ids.length > o.maxTokens + PROBE_MARGIN_TOKENS) {
        full = part;
        partial = true;
      }
    }
    full ??= tokenizer.encode(whole);
    const enc = o.truncate ? truncateEncoding(full, o.maxTokens, o.side, tokenizer.specials) : full;
    return {
      ids: BigInt64Array.from(enc.ids, BigInt),
      mask: BigInt64Array.from(enc.mask, BigInt),
      total: full.ids.length,
      ...(partial ? { partial: true } : {}),
    };
  });
  return { items, promptTokens: prompt === '' ? 0 : Math.max(0, tokenizer.encode(prompt).ids.length - 1) };
}
