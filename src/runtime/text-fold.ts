/**
 * Texts folded for matching against what tokenizers make of them: per code point NFKD, and case-folded for
 * tokenizers that lower-case, so "Café" meets BERT's "cafe" (its accent a soft unit the token may lack), "ｆｉ"
 * meets NFKC's "fi" and "ΣΑΣ" meets "σας". Case stays where the tokenizer keeps it: "E" is not "e" to XLM-R.
 *
 * Owns: the fold of one character and of a whole text, each fold unit carrying the byte range (in the text's
 * UTF-8) of the character it came from, and its kind:
 *   - hard: letters, digits, symbols, punctuation — kept by every tokenizer;
 *   - whitespace: any Unicode space (folded to U+0020) or line break / tab (kept as itself, since SentencePiece
 *     tokenizers keep "\n" apart from "▁") — dropped by BERT, collapsed or inserted by Metaspace;
 *   - invisible: controls, format characters (ZWJ, BOM), unassigned and private-use code points, U+FFFD and lone
 *     surrogates — dropped by BERT, kept by byte-level tokenizers;
 *   - mark: nonspacing marks (accents, variation selectors), whether written as characters or
 *     decomposed out of one ("é" is "e" and a mark, matching "e\u0301" under NFC too) — stripped by BERT uncased,
 *     kept by the others.
 * Whitespace and invisible units, and marks for a tokenizer that strips accents, are "soft": the aligner lets either
 * side lack them.
 */

import { grown } from '../typed-arrays.ts';

/** A hard unit. */
export const HARD = 0;
/** A soft invisible unit: may be missing on either side, but sits inside a word. */
export const INVISIBLE = 1;
/** A soft whitespace unit. */
export const WS = 2;
/** Flag on hard units of a character BERT's pre-tokenizer makes a word of its own (punctuation, CJK ideograph). */
export const BREAK = 4;
/** A mark unit (an accent): part of the word it is in; soft where the tokenizer strips accents. */
export const MARK = 8;
/**
 * Flag on a text's mark unit that the tokenizer's composition (NFC, NFKC) merges into the letter before it ("é",
 * "e\u0301"): no token ends between them.
 */
export const BOUND = 16;
/** Longest letter-and-accents run whose composition is checked (Zalgo text stacks hundreds of accents). */
const MAX_CLUSTER = 16;
/** The unit every space-like character folds to: what separates words for the aligner. */
export const SPACE = 0x20;

interface CharFold {
  units: readonly number[];
  kinds: readonly number[];
}

const LINE_OR_TAB_RE = /^[\t\n\v\f\r\u0085\u2028\u2029]$/u;
const WHITE_SPACE_RE = /^\p{White_Space}$/u;
const INVISIBLE_RE = /^[\p{Cc}\p{Cf}\p{Cn}\p{Co}\p{Cs}\uFFFD]$/u;
// Nonspacing marks only: what BERT strips (an enclosing mark, "⃟", stays a character of its own).
const SOFT_MARK_RE = /^\p{Mn}$/u;
const ACCENTS_RE = /\p{Mn}/gu;
// As src/runtime/wordpiece.ts splits words: punctuation (Unicode P*, ASCII symbols) and CJK ideographs stand alone.
const BERT_BREAK_RE =
  /^[\p{P}!-/:-@[-\x60{-~\u{4E00}-\u{9FFF}\u{3400}-\u{4DBF}\u{20000}-\u{2A6DF}\u{2A700}-\u{2B73F}\u{2B740}-\u{2B81F}\u{2B820}-\u{2CEAF}\u{F900}-\u{FAFF}\u{2F800}-\u{2FA1F}]$/u;

/** Composition a tokenizer applies to text before its model. */
export type Composition = 'NFC' | 'NFKC';

function countMarks(s: string): number {
  let n = 0;
  for (const c of s) if (SOFT_MARK_RE.test(c)) n++;
  return n;
}

function foldChar(cp: number, caseless: boolean, composition: Composition | undefined): CharFold {
  // Lone surrogates reach UTF-8 (and the tokenizers) as U+FFFD.
  if (cp >= 0xd800 && cp <= 0xdfff) return { units: [0xfffd], kinds: [INVISIBLE] };
  const ch = String.fromCodePoint(cp);
  if (LINE_OR_TAB_RE.test(ch)) return { units: [cp], kinds: [WS] };
  if (WHITE_SPACE_RE.test(ch)) return { units: [SPACE], kinds: [WS] };
  if (INVISIBLE_RE.test(ch)) return { units: [cp], kinds: [INVISIBLE] };
  // BERT decides after stripping accents: "\u1FEF" (a Greek accent) is "`" by then, punctuation.
  const base = ch.normalize('NFD').replace(ACCENTS_RE, '');
  const hard = BERT_BREAK_RE.test(ch) || (base.length > 0 && BERT_BREAK_RE.test(base)) ? HARD | BREAK : HARD;
  // Accents the composition merges into a letter ("é"; "ǅ" is "Dž" under NFKC) are bound to it; those it leaves
  // apart (Hebrew "שּׂ" under NFC, "ﴽ" under NFKC) are not.
  const mark = composition && countMarks(ch.normalize(composition)) < countMarks(ch.normalize('NFKD')) ? MARK | BOUND : MARK;
  const units: number[] = [];
  const kinds: number[] = [];
  const push = (c: string, kind: number): void => {
    units.push(c.codePointAt(0)!);
    kinds.push(kind);
  };
  for (const d of ch.normalize('NFKD')) {
    // Marks are kept as they are: case folding would make letters of some (U+0345 upper-cases to "Ι").
    if (SOFT_MARK_RE.test(d)) push(d, cp === d.codePointAt(0) ? MARK : mark);
    // NFKD can make a space ("˛" is a space and a mark): it matches a space, but BERT sees no whitespace there
    // (and, for "‾", punctuation).
    else if (WHITE_SPACE_RE.test(d)) push(' ', INVISIBLE | (hard & BREAK));
    else if (!caseless) push(d, hard);
    // Upper then lower case folds what per-character lowercasing alone misses (final sigma, "ß" vs "SS").
    else for (const c of d.toUpperCase().toLowerCase().normalize('NFKD')) push(c, SOFT_MARK_RE.test(c) ? mark : hard);
  }
  return { units, kinds };
}

const ASCII_CASED: readonly CharFold[] = Array.from({ length: 128 }, (_, cp) => foldChar(cp, false, undefined));
const ASCII_CASELESS: readonly CharFold[] = Array.from({ length: 128 }, (_, cp) => foldChar(cp, true, undefined));

/** Per-code-point folds, cached for one alignment (a text has few distinct characters). */
export class Folder {
  readonly #cache = new Map<number, CharFold>();
  readonly #caseless: boolean;
  readonly #ascii: readonly CharFold[];
  /** The tokenizer's composition, for binding accents to letters; undefined when it composes nothing. */
  readonly composition: Composition | undefined;

  /**
   * `caseless`: the tokenizer lower-cases, so case is folded away. `space`: a character the tokenizer does not tell
   * from a space (SentencePiece's "▁", which it writes for spaces and keeps when the text has it). `composition`:
   * the Unicode composition it applies (see BOUND).
   */
  constructor(caseless: boolean, space?: string, composition?: Composition) {
    this.#caseless = caseless;
    this.composition = composition;
    this.#ascii = caseless ? ASCII_CASELESS : ASCII_CASED;
    const cp = space !== undefined && space.length > 0 ? space.codePointAt(0)! : undefined;
    if (cp !== undefined && cp >= 128) this.#cache.set(cp, { units: [SPACE], kinds: [WS] });
  }

  char(cp: number): CharFold {
    if (cp < 128) return this.#ascii[cp]!;
    let f = this.#cache.get(cp);
    if (f === undefined) {
      f = foldChar(cp, this.#caseless, this.composition);
      this.#cache.set(cp, f);
    }
    return f;
  }

  /** Units and kinds of a whole string, folded per code point as a text is. */
  string(s: string): { units: Int32Array; kinds: Uint8Array } {
    const units: number[] = [];
    const kinds: number[] = [];
    for (const ch of s) {
      const f = this.char(ch.codePointAt(0)!);
      units.push(...f.units);
      kinds.push(...f.kinds);
    }
    return { units: Int32Array.from(units), kinds: Uint8Array.from(kinds) };
  }
}

/** A text as folded units, each with the byte range of the character it came from. */
export interface FoldedText {
  n: number;
  units: Int32Array;
  kinds: Uint8Array;
  starts: Int32Array;
  ends: Int32Array;
  byteLength: number;
}

export function foldText(text: string, folder: Folder): FoldedText {
  let cap = text.length + 16;
  let units = new Int32Array(cap);
  let kinds = new Uint8Array(cap);
  let starts = new Int32Array(cap);
  let ends = new Int32Array(cap);
  const grow = (need: number): void => {
    while (cap < need) cap *= 2;
    units = grown(units, cap);
    kinds = grown(kinds, cap);
    starts = grown(starts, cap);
    ends = grown(ends, cap);
  };
  let n = 0;
  let byte = 0;
  // A letter and the accents written after it, and the length of its composition, to tell whether the composition
  // takes in each accent (in "e\u0301\u0301", NFC takes the first only).
  let cluster = '';
  let composed = 0;
  for (let i = 0; i < text.length; ) {
    let cp = text.charCodeAt(i);
    let width = 1;
    if (cp >= 0xd800 && cp <= 0xdbff && i + 1 < text.length) {
      const lo = text.charCodeAt(i + 1);
      if (lo >= 0xdc00 && lo <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        width = 2;
      }
    }
    // Buffer.from(text) writes a lone surrogate as U+FFFD: 3 bytes, like any other BMP code point.
    const size = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    const f = folder.char(cp);
    const standaloneMark = f.units.length === 1 && f.kinds[0] === MARK;
    let bound = false;
    if (!standaloneMark) {
      cluster = String.fromCodePoint(cp);
      composed = -1;
    } else if (folder.composition && cluster !== '' && cluster.length < MAX_CLUSTER) {
      if (composed < 0) composed = cluster.normalize(folder.composition).length;
      cluster += String.fromCodePoint(cp);
      const now = cluster.normalize(folder.composition).length;
      bound = now === composed;
      composed = now;
    }
    // A character that folds to nothing (none is known to) adds its bytes to the unit before it.
    if (f.units.length === 0) {
      if (n > 0) ends[n - 1] = byte + size;
    } else {
      if (n + f.units.length > cap) grow(n + f.units.length);
      for (let k = 0; k < f.units.length; k++) {
        units[n] = f.units[k]!;
        kinds[n] = bound ? f.kinds[k]! | BOUND : f.kinds[k]!;
        starts[n] = byte;
        ends[n] = byte + size;
        n++;
      }
    }
    byte += size;
    i += width;
  }
  return { n, units, kinds, starts, ends, byteLength: byte };
}
