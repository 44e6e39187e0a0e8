/**
 * WordPiece tokenization (BERT) from a Hugging Face `tokenizer.json`, for models whose manifest says
 * `tokenizer: { kind: "wordpiece", file: "tokenizer.json" }`.
 *
 * Owns: reading the subset of the `tokenizers` JSON format that BERT-family models use, the BERT
 * normalizer / pre-tokenizer / WordPiece algorithm, and `wordPieceTokenizerJson`, which writes that
 * format (used by the `text-bert-synthetic*` builders, readable by `tokenizers`, transformers and
 * transformers.js).
 *
 * Pipeline (as the Rust `tokenizers` crate does it, so ids match Python for the same file):
 *   0. Added tokens ("[CLS]", "[MASK]", ... from `added_tokens`) found verbatim in the input are
 *      split out first and keep their ids (case-sensitive, as in `tokenizers`).
 *   1. BertNormalizer: clean_text (drop NUL, U+FFFD and "other" characters Cc/Cf/Cn/Co/Cs except
 *      \t \n \r; every White_Space character becomes " "); handle_chinese_chars (CJK ideographs
 *      become words of their own); strip_accents (NFD, drop Mn marks; default: = lowercase);
 *      lowercase. `Sequence`s of Lowercase / StripAccents / NFD / NFC / NFKD / NFKC are accepted too.
 *   2. BertPreTokenizer: split at whitespace; every punctuation character (ASCII punctuation or a
 *      Unicode P* category) is a word of its own.
 *   3. WordPiece: a word longer than `max_input_chars_per_word` code points is `[UNK]`; otherwise
 *      greedy longest-match-first pieces, continuations prefixed "##"; a word with any unmatchable
 *      rest is one `[UNK]`.
 *   4. Post-processor (TemplateProcessing, BertProcessing or RobertaProcessing): `[CLS] … [SEP]`
 *      (or the file's own tokens) around one sequence.
 *
 * `encode` never throws: any string (lone surrogates, control characters, megabytes) yields ids in
 * [0, vocabSize) with mask 1 everywhere. Lookups are Map hits; a piece is never tried longer than
 * the longest vocabulary entry, so work per word is bounded by its length × that length.
 *
 * Length: one dense concept (the tokenizer.json WordPiece pipeline) kept in one file; it is to be
 * replaced by a maintained tokenizer library (issue "Serve the embedding models people actually use").
 */

import { readFile } from 'node:fs/promises';

import type { Encoding, Piece, Pieces, Tokenizer } from './tokenizer.ts';

export interface WordPieceOptions {
  /** token → id. */
  vocab: ReadonlyMap<string, number>;
  unkToken: string;
  /** "##" for BERT. */
  continuingSubwordPrefix: string;
  maxInputCharsPerWord: number;
  normalizer: NormalizerOptions;
  /** Ids put before / after the tokens of one sequence ([CLS] / [SEP]). */
  prefixIds: readonly number[];
  suffixIds: readonly number[];
  /** Tokens matched verbatim in the raw input before normalisation, with their ids. */
  addedTokens?: ReadonlyMap<string, number>;
}

export interface NormalizerOptions {
  cleanText: boolean;
  handleChineseChars: boolean;
  stripAccents: boolean;
  lowercase: boolean;
  /** Unicode normalisation applied after the BERT steps (from a `Sequence` normalizer). */
  unicode?: 'NFC' | 'NFD' | 'NFKC' | 'NFKD';
}

export const BERT_UNCASED_NORMALIZER: Readonly<NormalizerOptions> = { cleanText: true, handleChineseChars: true, stripAccents: true, lowercase: true };

// Characters clean_text removes: NUL, U+FFFD, and Unicode "other" (Cc, Cf, Cn, Co, Cs) except \t \n \r.
const CLEAN_REMOVE_RE = /(?![\t\n\r])[\0\uFFFD\p{Cc}\p{Cf}\p{Cn}\p{Co}\p{Cs}]/gu;
const WHITESPACE_RE = /[\t\n\r\p{White_Space}]/gu;
// CJK Unified Ideographs and extensions, compatibility ideographs (the ranges BERT treats as "Chinese").
const CJK_RE =
  /[\u{4E00}-\u{9FFF}\u{3400}-\u{4DBF}\u{20000}-\u{2A6DF}\u{2A700}-\u{2B73F}\u{2B740}-\u{2B81F}\u{2B820}-\u{2CEAF}\u{F900}-\u{FAFF}\u{2F800}-\u{2FA1F}]/gu;
const NONSPACING_MARK_RE = /\p{Mn}/gu;
// BertPreTokenizer: runs of non-space non-punctuation, or one punctuation character.
const PUNCT = String.raw`\p{P}!-\/:-@\[-\x60{-~`;
const PRE_TOKEN_RE = new RegExp(String.raw`[^\p{White_Space}${PUNCT}]+|[${PUNCT}]`, 'gu');
const SURROGATE_RE = /[\uD800-\uDFFF]/;
const PRINTABLE_ASCII_RE = /^[\x20-\x7e]*$/;

/** WordPiece tokenizer; immutable, safe to share between requests. */
export class WordPieceTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly maxPieceChars: number;
  readonly unkId: number;
  readonly #unkToken: string;
  readonly #vocab: ReadonlyMap<string, number>;
  readonly #prefix: string;
  readonly #maxChars: number;
  /** Longest vocabulary entry in code points (continuations without their prefix). */
  readonly #maxPiece: number;
  readonly #norm: NormalizerOptions;
  readonly #prefixIds: readonly number[];
  readonly #suffixIds: readonly number[];
  readonly #added: ReadonlyMap<string, number>;
  readonly #addedRe: RegExp | undefined;
  /** Tokens by id and the special ids, for `pieces`; built on its first call, since only /tokenize needs them. */
  #byId: { tokens: string[]; special: Set<number> } | undefined;

  constructor(options: WordPieceOptions) {
    const unk = options.vocab.get(options.unkToken);
    if (unk === undefined) throw new TypeError(`WordPiece: the unknown token ${JSON.stringify(options.unkToken)} is not in the vocabulary`);
    if (!(options.maxInputCharsPerWord > 0)) throw new TypeError('WordPiece: max_input_chars_per_word must be positive');
    this.#vocab = options.vocab;
    this.unkId = unk;
    this.#unkToken = options.unkToken;
    this.#prefix = options.continuingSubwordPrefix;
    this.#maxChars = options.maxInputCharsPerWord;
    this.#norm = { ...options.normalizer };
    this.#prefixIds = [...options.prefixIds];
    this.#suffixIds = [...options.suffixIds];
    this.#added = new Map(options.addedTokens ?? []);
    let maxId = -1;
    let maxPiece = 1;
    for (const [token, id] of options.vocab) {
      if (!Number.isSafeInteger(id) || id < 0) throw new TypeError(`WordPiece: token ${JSON.stringify(token)} has invalid id ${id}`);
      if (id > maxId) maxId = id;
      const body = token.startsWith(this.#prefix) && token.length > this.#prefix.length ? token.slice(this.#prefix.length) : token;
      maxPiece = Math.max(maxPiece, codePointLength(body));
    }
    for (const id of [...this.#prefixIds, ...this.#suffixIds, ...this.#added.values()]) {
      if (!Number.isSafeInteger(id) || id < 0) throw new TypeError(`WordPiece: special token id ${id} is invalid`);
      if (id > maxId) maxId = id;
    }
    this.#maxPiece = maxPiece;
    this.vocabSize = maxId + 1;
    // Code points to UTF-16 units (×2); a word over maxInputCharsPerWord is one [UNK]; added tokens are whole.
    const longestAdded = Math.max(0, ...[...this.#added.keys()].map((t) => t.length));
    this.maxPieceChars = Math.max(2 * maxPiece, 2 * this.#maxChars, longestAdded);
    const added = [...this.#added.keys()].filter((t) => t.length > 0).sort((a, b) => b.length - a.length);
    this.#addedRe = added.length > 0 ? new RegExp(added.map(escapeRegExp).join('|'), 'g') : undefined;
  }

  /** Special tokens around a single text: the post-processor's [CLS] … [SEP]. */
  get specials(): { prefix: number; suffix: number } {
    return { prefix: this.#prefixIds.length, suffix: this.#suffixIds.length };
  }

  /** Loads a Hugging Face `tokenizer.json`. Throws a TypeError naming what is unsupported. */
  static async load(file: string): Promise<WordPieceTokenizer> {
    return WordPieceTokenizer.fromJSON(JSON.parse(await readFile(file, 'utf8')), file);
  }

  /** A tokenizer from a parsed `tokenizer.json` (see the file header for what is supported). */
  static fromJSON(json: unknown, where = 'tokenizer.json'): WordPieceTokenizer {
    return new WordPieceTokenizer(parseTokenizerJson(json, where));
  }

  /** The id of one exact vocabulary token, or undefined. */
  idOf(token: string): number | undefined {
    return this.#vocab.get(token);
  }

  /** The normalised text (step 1), for diagnostics and tests. */
  normalize(text: string): string {
    return normalizeText(toText(text), this.#norm);
  }

  /** The pieces of `text` without the post-processor's special tokens, as strings. */
  tokenize(text: string): string[] {
    const out: string[] = [];
    const byId = new Map<number, string>();
    for (const [t, id] of this.#added) byId.set(id, t);
    this.#scan(toText(text), (piece, id) => out.push(piece ?? byId.get(id) ?? '[?]'));
    return out;
  }

  encode(text: string): Encoding {
    const ids: number[] = [...this.#prefixIds];
    this.#scan(toText(text), (_piece, id) => ids.push(id));
    for (const id of this.#suffixIds) ids.push(id);
    return { ids, mask: new Array<number>(ids.length).fill(1) };
  }

  /**
   * Each id's vocabulary string. The post-processor's and the added tokens are special (a BERT file's added
   * tokens are [PAD] [UNK] [CLS] [SEP] [MASK]), except the unknown token, which stands for a word.
   */
  pieces(ids: readonly number[]): Pieces {
    if (!this.#byId) {
      const tokens = new Array<string>(this.vocabSize).fill('');
      for (const [token, id] of this.#vocab) tokens[id] = token;
      for (const [token, id] of this.#added) tokens[id] = token;
      this.#byId = { tokens, special: new Set([...this.#prefixIds, ...this.#suffixIds, ...this.#added.values()]) };
    }
    const { tokens, special } = this.#byId;
    return {
      notation: {
        continuingPrefix: this.#prefix,
        bertWords: true,
        lowercase: this.#norm.lowercase,
        stripAccents: this.#norm.stripAccents,
        ...(this.#norm.unicode === 'NFC' || this.#norm.unicode === 'NFKC' ? { composition: this.#norm.unicode } : {}),
      },
      pieces: ids.map((id): Piece => {
        const piece = tokens[id] ?? '';
        if (id === this.unkId) return { piece, special: false, added: this.#added.has(piece), unknown: true };
        return special.has(id) ? { piece, special: true, added: true } : { piece, special: false };
      }),
    };
  }

  /** Emits each piece (string, or undefined for an added token) with its id. */
  #scan(text: string, emit: (piece: string | undefined, id: number) => void): void {
    if (!this.#addedRe) {
      this.#scanSegment(text, emit);
      return;
    }
    let last = 0;
    for (const m of text.matchAll(this.#addedRe)) {
      const at = m.index ?? 0;
      if (at > last) this.#scanSegment(text.slice(last, at), emit);
      emit(undefined, this.#added.get(m[0])!);
      last = at + m[0].length;
    }
    if (last < text.length) this.#scanSegment(text.slice(last), emit);
  }

  #scanSegment(raw: string, emit: (piece: string | undefined, id: number) => void): void {
    const text = normalizeText(raw, this.#norm);
    for (const m of text.matchAll(PRE_TOKEN_RE)) this.#word(m[0], emit);
  }

  /** WordPiece on one pre-token: greedy longest match first. */
  #word(word: string, emit: (piece: string | undefined, id: number) => void): void {
    // Code points: ASCII/BMP words without surrogates index directly; others go through an array.
    const chars = SURROGATE_RE.test(word) ? Array.from(word) : undefined;
    const length = chars ? chars.length : word.length;
    if (length > this.#maxChars) {
      emit(this.#unkToken, this.unkId);
      return;
    }
    const sub = (a: number, b: number): string => (chars ? chars.slice(a, b).join('') : word.slice(a, b));
    const pieces: [string, number][] = [];
    let start = 0;
    while (start < length) {
      let end = Math.min(length, start + this.#maxPiece);
      let found: [string, number] | undefined;
      while (start < end) {
        const piece = start > 0 ? this.#prefix + sub(start, end) : sub(start, end);
        const id = this.#vocab.get(piece);
        if (id !== undefined) {
          found = [piece, id];
          break;
        }
        end--;
      }
      if (!found) {
        emit(this.#unkToken, this.unkId);
        return;
      }
      pieces.push(found);
      start = end;
    }
    for (const [piece, id] of pieces) emit(piece, id);
  }
}

/** String(): JavaScript callers outside the type system must not make encode() throw. */
function toText(text: unknown): string {
  return typeof text === 'string' ? text : String(text);
}

function codePointLength(s: string): number {
  return SURROGATE_RE.test(s) ? Array.from(s).length : s.length;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Step 1 of the pipeline (see the file header). */
export function normalizeText(text: string, o: NormalizerOptions): string {
  let s = text;
  // Printable ASCII (most input): nothing to clean, no CJK, no accents; NFD/NFC/NFK* are identities.
  if (PRINTABLE_ASCII_RE.test(s)) return o.lowercase ? s.toLowerCase() : s;
  if (o.cleanText) s = s.replace(CLEAN_REMOVE_RE, '').replace(WHITESPACE_RE, ' ');
  if (o.handleChineseChars) s = s.replace(CJK_RE, ' $& ');
  if (o.stripAccents) s = s.normalize('NFD').replace(NONSPACING_MARK_RE, '');
  if (o.lowercase) s = s.toLowerCase();
  if (o.unicode) s = s.normalize(o.unicode);
  return s;
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json: reading
// ---------------------------------------------------------------------------------------------

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads the tokenizer.json subset BERT-family models use into constructor options. */
export function parseTokenizerJson(json: unknown, where = 'tokenizer.json'): WordPieceOptions {
  const fail = (what: string): never => {
    throw new TypeError(`${where}: ${what}`);
  };
  if (!isObject(json)) fail('must be a JSON object');
  const root = json as Json;
  const model = root['model'];
  if (!isObject(model)) return fail('has no "model" object');
  if (model['type'] !== undefined && model['type'] !== 'WordPiece') fail(`model type ${JSON.stringify(model['type'])} is not supported (only "WordPiece")`);
  const rawVocab = model['vocab'];
  if (!isObject(rawVocab)) return fail('model.vocab must be an object of token → id');
  const vocab = new Map<string, number>();
  for (const [token, id] of Object.entries(rawVocab)) {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0)
      fail(`model.vocab[${JSON.stringify(token).slice(0, 40)}] must be a non-negative integer`);
    vocab.set(token, id as number);
  }
  const unkToken = typeof model['unk_token'] === 'string' ? model['unk_token'] : '[UNK]';
  const prefix = typeof model['continuing_subword_prefix'] === 'string' ? model['continuing_subword_prefix'] : '##';
  const maxChars = typeof model['max_input_chars_per_word'] === 'number' ? model['max_input_chars_per_word'] : 100;

  const addedTokens = new Map<string, number>();
  const added = root['added_tokens'];
  if (Array.isArray(added)) {
    for (const t of added) {
      if (isObject(t) && typeof t['content'] === 'string' && typeof t['id'] === 'number' && t['content'] !== '') addedTokens.set(t['content'], t['id']);
    }
  }
  // Special tokens that the post-processor names but the vocabulary lacks are resolved through these.
  const idOf = (token: string): number =>
    vocab.get(token) ?? addedTokens.get(token) ?? fail(`special token ${JSON.stringify(token)} is in neither the vocabulary nor added_tokens`);

  const { prefixIds, suffixIds } = parsePostProcessor(root['post_processor'], idOf, fail);
  const normalizer = parseNormalizer(root['normalizer'], fail);
  parsePreTokenizer(root['pre_tokenizer'], fail);
  return { vocab, unkToken, continuingSubwordPrefix: prefix, maxInputCharsPerWord: maxChars, normalizer, prefixIds, suffixIds, addedTokens };
}

function parseNormalizer(n: unknown, fail: (what: string) => never): NormalizerOptions {
  const out: NormalizerOptions = { cleanText: false, handleChineseChars: false, stripAccents: false, lowercase: false };
  if (n === null || n === undefined) return out;
  const apply = (x: unknown): void => {
    if (!isObject(x)) {
      fail('normalizer entries must be objects');
      return;
    }
    switch (x['type']) {
      case 'BertNormalizer': {
        out.cleanText = x['clean_text'] !== false;
        out.handleChineseChars = x['handle_chinese_chars'] !== false;
        out.lowercase = x['lowercase'] !== false;
        // null/absent strip_accents follows lowercase, as in `tokenizers`.
        out.stripAccents = typeof x['strip_accents'] === 'boolean' ? x['strip_accents'] : out.lowercase;
        return;
      }
      case 'Lowercase':
        out.lowercase = true;
        return;
      case 'StripAccents':
        out.stripAccents = true;
        return;
      case 'NFC':
      case 'NFD':
      case 'NFKC':
      case 'NFKD':
        out.unicode = x['type'];
        return;
      case 'Sequence': {
        const list = x['normalizers'];
        if (!Array.isArray(list)) {
          fail('Sequence normalizer needs a "normalizers" array');
          return;
        }
        list.forEach(apply);
        return;
      }
      default:
        fail(`normalizer ${JSON.stringify(x['type'])} is not supported (BertNormalizer, Lowercase, StripAccents, NFC/NFD/NFKC/NFKD, Sequence)`);
    }
  };
  apply(n);
  return out;
}

function parsePreTokenizer(p: unknown, fail: (what: string) => never): void {
  if (isObject(p) && p['type'] === 'BertPreTokenizer') return;
  if (isObject(p) && p['type'] === 'Sequence' && Array.isArray(p['pretokenizers']) && p['pretokenizers'].length === 1) {
    parsePreTokenizer(p['pretokenizers'][0], fail);
    return;
  }
  fail(`pre_tokenizer ${JSON.stringify(isObject(p) ? p['type'] : p)} is not supported (only BertPreTokenizer)`);
}

function parsePostProcessor(p: unknown, idOf: (token: string) => number, fail: (what: string) => never): { prefixIds: number[]; suffixIds: number[] } {
  if (p === null || p === undefined) return { prefixIds: [], suffixIds: [] };
  if (!isObject(p)) return fail('post_processor must be an object');
  if (p['type'] === 'BertProcessing' || p['type'] === 'RobertaProcessing') {
    // RobertaProcessing (MPNet's WordPiece tokenizers use it) differs only for pairs and offsets.
    const cls = p['cls'];
    const sep = p['sep'];
    const id = (pair: unknown, name: string): number =>
      Array.isArray(pair) && typeof pair[1] === 'number'
        ? pair[1]
        : Array.isArray(pair) && typeof pair[0] === 'string'
          ? idOf(pair[0])
          : fail(`${String(p['type'])}.${name} must be [token, id]`);
    return { prefixIds: [id(cls, 'cls')], suffixIds: [id(sep, 'sep')] };
  }
  if (p['type'] === 'TemplateProcessing') {
    const single = p['single'];
    if (!Array.isArray(single)) return fail('TemplateProcessing needs a "single" template');
    const special = isObject(p['special_tokens']) ? p['special_tokens'] : {};
    const idsOf = (name: string): number[] => {
      const s = special[name];
      if (isObject(s) && Array.isArray(s['ids']) && s['ids'].every((i) => typeof i === 'number')) return s['ids'] as number[];
      return [idOf(name)];
    };
    const prefixIds: number[] = [];
    const suffixIds: number[] = [];
    let seenSequence = false;
    for (const piece of single) {
      if (isObject(piece) && isObject(piece['Sequence'])) {
        seenSequence = true;
      } else if (isObject(piece) && isObject(piece['SpecialToken']) && typeof piece['SpecialToken']['id'] === 'string') {
        (seenSequence ? suffixIds : prefixIds).push(...idsOf(piece['SpecialToken']['id']));
      } else {
        fail('TemplateProcessing.single entries must be {Sequence} or {SpecialToken}');
      }
    }
    if (!seenSequence) fail('TemplateProcessing.single has no Sequence');
    return { prefixIds, suffixIds };
  }
  return fail(`post_processor ${JSON.stringify(p['type'])} is not supported (TemplateProcessing, BertProcessing, RobertaProcessing)`);
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json: writing
// ---------------------------------------------------------------------------------------------

export interface WordPieceJsonOptions {
  /** Tokens by id: index = id. Must contain [PAD] [UNK] [CLS] [SEP] [MASK]. */
  vocab: readonly string[];
  lowercase: boolean;
}

const SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] as const;

/**
 * A Hugging Face `tokenizer.json` for an uncased (or cased) BERT WordPiece vocabulary: BertNormalizer,
 * BertPreTokenizer, WordPiece ("##", [UNK], 100 chars), [CLS] $A [SEP] / [CLS] $A [SEP] $B:1 [SEP:1]
 * post-processing, WordPiece decoder. The vocabulary is written in id order (a JS object would move
 * numeric-looking tokens first), so the text is deterministic and diffs cleanly.
 */
export function wordPieceTokenizerJson(options: WordPieceJsonOptions): string {
  const { vocab } = options;
  const index = new Map<string, number>();
  vocab.forEach((t, i) => {
    if (index.has(t)) throw new Error(`vocabulary token ${JSON.stringify(t)} appears twice (ids ${index.get(t)} and ${i})`);
    index.set(t, i);
  });
  const id = (t: string): number => {
    const i = index.get(t);
    if (i === undefined) throw new Error(`vocabulary lacks ${t}`);
    return i;
  };
  const special = (t: string) => ({ id: t, ids: [id(t)], tokens: [t] });
  const head = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((t) => ({ id: id(t), content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: options.lowercase, lowercase: options.lowercase },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '[SEP]', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '[CLS]', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '[SEP]', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 1 } },
        { SpecialToken: { id: '[SEP]', type_id: 1 } },
      ],
      special_tokens: { '[CLS]': special('[CLS]'), '[SEP]': special('[SEP]') },
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
  };
  const model = { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100 };
  const vocabText = vocab.map((t, i) => `      ${JSON.stringify(t)}: ${i}`).join(',\n');
  const headText = JSON.stringify(head, null, 2).replace(/\n}$/, '');
  const modelText = JSON.stringify(model, null, 2).replace(/\n}$/, '').replace(/\n/g, '\n  ');
  return `${headText},\n  "model": ${modelText},\n    "vocab": {\n${vocabText}\n    }\n  }\n}\n`;
}
