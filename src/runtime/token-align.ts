/**
 * Where each token of a text sits in it, as UTF-8 byte offsets. The tokenizers here report no offsets, so each
 * token's surface (the text it stands for after the tokenizer's normalisation) is matched, in order, against the
 * input, folded as src/runtime/text-fold.ts folds it.
 *
 * Owns: the left-to-right aligner. Reading vocabulary notations (byte-level, "▁", "##") into surfaces is
 * src/runtime/token-view.ts's; what each tokenizer does to text (lower-cases, strips accents, composes, drops
 * invisible characters) arrives as `AlignOptions`.
 *
 * Per token, cheapest first:
 *   1. Exact: the surface's bytes at the cursor, or after what the tokenizer drops there (BERT: whitespace,
 *      invisible characters, accents). Byte-level and SentencePiece tokens of ordinary text all match here;
 *      byte-level pieces that split a character are matched as one group, and each gets its own bytes.
 *   2. Folded: folded surface against folded text from the cursor; soft units (whitespace, invisible characters,
 *      stripped accents) may be missing on either side, since tokenizers drop, collapse or insert them (BERT drops
 *      every space, Metaspace prepends "▁"). A group whose bytes differ from the text's (NFC recomposed
 *      "e\u0301") gives all its tokens the range it matched, as Hugging Face's offsets do inside a changed character.
 *   3. Search ahead, when tokens before this one found no place: they wait for the gap up to this one's match.
 *      A search crosses no more words than tokens wait (none waiting: not past the current word), and passes over
 *      a match that would leave the waiting tokens no text; all searching shares a budget linear in the text.
 * An unknown token ([UNK], <unk>) stands for text of unknown length: with BERT's pre-tokenizer it is the whole
 * word at the cursor; otherwise it waits for the gap before the next match. A special token is only stepped over
 * where the text has it literally.
 *
 * A gap is handed out only when its split is unambiguous (one waiting token and one word; or only unknown tokens,
 * as many as words, or as characters); otherwise the waiting tokens get no offsets rather than guessed ones.
 * Starts and stops each come out non-decreasing; tokens from one character (an NFKC ligature, a character NFC
 * decomposes) share its range.
 */
import { BOUND, BREAK, type Composition, Folder, type FoldedText, foldText, INVISIBLE, MARK, SPACE, WS } from './text-fold.ts';

/** What one token stands for, as the aligner needs it. */
export interface AlignToken {
  /** special: matched only literally, never given offsets. unknown: stands for text the vocabulary lacks. */
  kind: 'special' | 'unknown' | 'text';
  /** UTF-8 bytes of the surface (special/unknown: of the vocabulary string). Byte-level pieces may hold part of a character. */
  bytes: Uint8Array;
  /** The surface as a string, when `bytes` are whole UTF-8 characters (folded matching needs characters). */
  text?: string;
  /** Another form the token may take literally in the input (an added token whose notation reads differently). */
  literal?: Uint8Array;
}

export interface AlignOptions {
  /** The tokenizer split words as BERT does, so an unknown token is one whole word. */
  bertWords: boolean;
  /** The tokenizer lower-cases text, so case is not matched. */
  lowercase: boolean;
  /** The character the tokenizer writes for a space ("▁"): one in the text is a space to it as well. */
  space?: string;
  /** The tokenizer strips accents (BERT uncased), so a token may lack the text's; otherwise accents must match. */
  stripAccents: boolean;
  /** The Unicode composition the tokenizer applies (Qwen: NFC, XLM-R: NFKC): a token never ends inside what it composes. */
  composition?: Composition;
}

/** Start and stop byte offsets per token (`-1`: none), for `tokens` of `text` in order. */
export interface Alignment {
  starts: Int32Array;
  stops: Int32Array;
}

/** Search steps allowed per unit of text (plus a constant): beyond, tokens only match where the cursor is. */
const BUDGET_PER_UNIT = 8;
const BUDGET_BASE = 65_536;
/** Units one match may step over once the budget is spent. */
const SPENT_CAP = 256;
/** Most byte-level pieces one character group may have (a character is at most 4 bytes; a group rarely spans two). */
const MAX_GROUP = 16;

export function alignTokens(text: string, bytes: Uint8Array, tokens: readonly AlignToken[], options: AlignOptions): Alignment {
  const folder = new Folder(options.lowercase, options.space, options.composition);
  const aligner = new Aligner(foldText(text, folder), bytes, folder, tokens.length, options);
  const strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  for (let i = 0; i < tokens.length; ) {
    const item = itemAt(tokens, i, strict);
    aligner.item(item);
    i += item.count;
  }
  aligner.finish();
  return { starts: aligner.starts, stops: aligner.stops };
}

/** One token, or a run of byte-level pieces that together make whole characters, matched as one. */
interface Item {
  first: number;
  count: number;
  kind: AlignToken['kind'];
  bytes: Uint8Array;
  /** Where each token's bytes end within `bytes`. */
  cuts: number[];
  text: string | undefined;
  literal: Uint8Array | undefined;
}

function itemAt(tokens: readonly AlignToken[], i: number, strict: TextDecoder): Item {
  const t = tokens[i]!;
  const single: Item = { first: i, count: 1, kind: t.kind, bytes: t.bytes, cuts: [t.bytes.length], text: t.text, literal: t.literal };
  if (t.kind !== 'text' || t.text !== undefined) return single;
  let need = utf8Need(t.bytes, 0);
  if (need <= 0) return single;
  const parts = [t.bytes];
  let k = i + 1;
  while (k < tokens.length && k - i < MAX_GROUP && need > 0) {
    const next = tokens[k]!;
    const after = next.kind === 'text' && next.text === undefined ? utf8Need(next.bytes, need) : -1;
    if (after < 0) break;
    parts.push(next.bytes);
    need = after;
    k++;
  }
  // Never whole characters: each piece is matched byte for byte on its own.
  if (need !== 0) return single;
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  const cuts: number[] = [];
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
    cuts.push(at);
  }
  let text: string | undefined;
  try {
    text = strict.decode(bytes);
  } catch {
    text = undefined; // well-formed in shape, not in value (an overlong form): bytes only
  }
  return { first: i, count: k - i, kind: 'text', bytes, cuts, text, literal: undefined };
}

/** Continuation bytes still owed after `bytes`, given `need` owed before; -1 when the bytes cannot be UTF-8. */
function utf8Need(bytes: Uint8Array, need: number): number {
  let owed = need;
  for (const b of bytes) {
    if (owed > 0) {
      if ((b & 0xc0) !== 0x80) return -1;
      owed--;
    } else if (b >= 0x80) {
      if ((b & 0xe0) === 0xc0) owed = 1;
      else if ((b & 0xf0) === 0xe0) owed = 2;
      else if ((b & 0xf8) === 0xf0) owed = 3;
      else return -1;
    }
  }
  return owed;
}

/** A surface folded for matching: where its first hard unit is and how much whitespace leads it. */
interface FoldedPiece {
  units: Int32Array;
  kinds: Uint8Array;
  /** Index of the first hard unit, -1 when all soft. */
  anchor: number;
  leadingWs: number;
  hasWs: boolean;
}

/**
 * A place found for an item: its byte range (exact: the item's own bytes, so a group's tokens can share it out),
 * where the gap before it ends (a unit), and where the cursor goes.
 */
interface Match {
  start: number;
  stop: number;
  exact: boolean;
  gapEnd: number;
  u: number;
  b: number;
}

interface Waiting {
  first: number;
  count: number;
  unknown: boolean;
}

class Aligner {
  readonly starts: Int32Array;
  readonly stops: Int32Array;
  readonly #t: FoldedText;
  readonly #bytes: Uint8Array;
  readonly #folder: Folder;
  readonly #bertWords: boolean;
  readonly #folded = new Map<string, FoldedPiece>();
  /** Cursor: next unit, and next byte (inside a character after a byte-level piece of it). */
  #u = 0;
  #b = 0;
  #lastStop = 0;
  #budget: number;
  #waiting: Waiting[] = [];
  /** First unit at or after the cursor that is not a space (cached: the cursor only moves on). */
  #text = 0;
  /** Unit kinds either side may lack: whitespace, invisible characters, and accents where the tokenizer strips them. */
  readonly #soft: number;
  /**
   * Unit kinds a token may follow at the cursor without owning them (they go to the gap before it): what BERT's
   * normalizer drops (whitespace, invisible characters, accents) for BERT, else stripped accents only; spaces always.
   * The others keep line breaks and invisible characters, as bytes or as unknown tokens.
   */
  readonly #skippable: number;
  /** What an unknown token written literally ("[UNK]", "<unk>") may follow: an unknown one may be that very accent. */
  readonly #skippableByUnknown: number;

  constructor(t: FoldedText, bytes: Uint8Array, folder: Folder, count: number, options: AlignOptions) {
    this.#t = t;
    this.#bytes = bytes;
    this.#folder = folder;
    this.#bertWords = options.bertWords;
    this.#soft = WS | INVISIBLE | (options.stripAccents ? MARK : 0);
    this.#skippableByUnknown = options.bertWords ? WS | INVISIBLE | MARK : 0;
    this.#skippable = this.#skippableByUnknown | (options.stripAccents ? MARK : 0);
    this.#budget = BUDGET_PER_UNIT * t.n + BUDGET_BASE;
    this.starts = new Int32Array(count).fill(-1);
    this.stops = new Int32Array(count).fill(-1);
  }

  item(item: Item): void {
    const waiting = this.#waiting.length > 0;
    switch (item.kind) {
      case 'special': {
        // Template tokens ([CLS], <bos>) are not in the text; one written in it is stepped over, without offsets.
        const m = this.#exactHere(item.bytes) ?? (waiting ? this.#searchExact(item.bytes) : undefined);
        if (m) this.#accept(m, undefined);
        return;
      }
      case 'unknown': {
        const m =
          this.#exactHere(item.bytes, this.#skippableByUnknown) ??
          (waiting ? this.#searchExact(item.bytes) : undefined) ??
          (this.#bertWords && !waiting ? this.#bertWord() : undefined);
        if (m) this.#accept(m, item);
        else if (!this.#bertWords || waiting) this.#wait(item, true);
        return;
      }
      case 'text': {
        const piece = item.text === undefined ? undefined : this.#fold(item.text);
        let m = this.#exactHere(item.bytes) ?? (item.literal ? this.#exactHere(item.literal) : undefined) ?? (piece ? this.#foldHere(piece) : undefined);
        // Tokens waiting stand for some text: a match right at the cursor would leave them none, so look further first.
        if (piece && (!m || (waiting && !this.#leavesText(m)))) m = this.#searchFold(piece) ?? m;
        if (m) this.#accept(m, item);
        // A surface that folds to nothing (a lone accent) has nothing left to find.
        else if (!piece || piece.units.length > 0) this.#wait(item, false);
        return;
      }
    }
  }

  /** Tokens still waiting stand for the rest of the text. */
  finish(): void {
    this.#resolve(this.#t.n);
  }

  #hard(kind: number): boolean {
    return (kind & this.#soft) === 0;
  }

  #fold(text: string): FoldedPiece {
    let f = this.#folded.get(text);
    if (f === undefined) {
      const { units, kinds } = this.#folder.string(text);
      let anchor = -1;
      let leadingWs = 0;
      let hasWs = false;
      for (let i = 0; i < units.length; i++) {
        const k = kinds[i]!;
        if (k & WS) {
          hasWs = true;
          if (anchor < 0 && leadingWs === i) leadingWs++;
        }
        if (anchor < 0 && this.#hard(k)) anchor = i;
      }
      f = { units, kinds, anchor, leadingWs, hasWs };
      this.#folded.set(text, f);
    }
    return f;
  }

  #wait(item: Item, unknown: boolean): void {
    this.#waiting.push({ first: item.first, count: item.count, unknown });
  }

  #give(first: number, count: number, start: number, stop: number): void {
    for (let k = first; k < first + count; k++) {
      this.starts[k] = start;
      this.stops[k] = stop;
    }
    if (stop > this.#lastStop) this.#lastStop = stop;
  }

  /** Takes a match: waiting tokens get the gap before it, the item (unless none) its range, the cursor moves on. */
  #accept(m: Match, item: Item | undefined): void {
    this.#resolve(m.gapEnd);
    if (item && item.count > 1 && m.exact) {
      // A group matched byte for byte: each piece gets its own bytes.
      let from = m.start;
      item.cuts.forEach((cut, k) => {
        this.#give(item.first + k, 1, from, m.start + cut);
        from = m.start + cut;
      });
    } else if (item) this.#give(item.first, item.count, m.start, m.stop);
    if (m.u > this.#u) this.#u = m.u;
    if (m.b > this.#b) this.#b = m.b;
  }

  /** Steps of search work; false once the budget is spent. */
  #spend(steps: number): boolean {
    this.#budget -= steps;
    return this.#budget > 0;
  }

  /** Whether the gap a match leaves before it holds anything but spaces (waiting tokens stand for some text). */
  #leavesText(m: Match): boolean {
    const { n, units } = this.#t;
    if (this.#text < this.#u) this.#text = this.#u;
    while (this.#text < n && units[this.#text] === SPACE && this.#spend(1)) this.#text++;
    return this.#text < m.gapEnd;
  }

  /** First unit at or after `from` whose character starts at or after `byte`. */
  #unitFrom(from: number, byte: number): number {
    const { n, starts } = this.#t;
    let u = from;
    while (u < n && starts[u]! < byte) u++;
    return u;
  }

  #bytesAt(at: number, want: Uint8Array): boolean {
    const bytes = this.#bytes;
    if (at + want.length > bytes.length) return false;
    for (let i = 0; i < want.length; i++) if (bytes[at + i] !== want[i]) return false;
    return true;
  }

  /** `want` at the cursor, or after units there of the kinds `skippable` (by default `#skippable`) and spaces. */
  #exactHere(want: Uint8Array, skippable = this.#skippable): Match | undefined {
    if (want.length === 0) return undefined;
    let at = this.#b;
    let gapEnd: number;
    if (this.#bytesAt(at, want)) gapEnd = this.#unitFrom(this.#u, at);
    else {
      if (isAsciiSpace(want[0]!)) return undefined;
      const { n, kinds, starts } = this.#t;
      const cap = this.#budget > 0 ? n : Math.min(n, this.#u + SPENT_CAP);
      let j = this.#u;
      while (j < cap && (kinds[j]! & skippable || (this.#t.units[j] === SPACE && kinds[j]! & WS))) j++;
      this.#spend(j - this.#u);
      if (j === this.#u || j >= n || !this.#bytesAt(starts[j]!, want)) return undefined;
      at = starts[j]!;
      gapEnd = j;
    }
    const stop = at + want.length;
    return { start: at, stop, exact: true, gapEnd, u: this.#unitFrom(gapEnd, stop), b: stop };
  }

  /**
   * The folded piece from unit `from`: the first and end units it covers (first -1: it is all soft and met no soft
   * text), or undefined when it does not match there.
   */
  #matchAt(from: number, p: FoldedPiece): { first: number; end: number } | undefined {
    const { n, units, kinds } = this.#t;
    const cap = this.#budget > 0 ? n : Math.min(n, from + p.units.length + SPENT_CAP);
    // From the cursor: whitespace the token lacks is skipped where it is met, so a token keeping its spaces takes the
    // ones at the cursor (Gemma, Qwen keep every space) and one collapsing them takes the whole run (XLM-R's "▁").
    let j = from;
    let i = 0;
    let first = -1;
    while (i < p.units.length) {
      // The space NFKD makes of "¨" meets a space the tokenizer made of it (XLM-R's "▁"), but a piece holding
      // the character itself (BERT's "¨") never meets whitespace.
      if (j < cap && units[j] === p.units[i] && !(p.kinds[i]! & INVISIBLE && kinds[j]! & WS)) {
        if (first < 0) first = j;
        i++;
        j++;
      } else if (!this.#hard(p.kinds[i]!)) i++;
      else if (j < cap && !this.#hard(kinds[j]!)) j++;
      else {
        this.#spend(j - from);
        return undefined;
      }
    }
    this.#spend(j - from);
    return { first, end: j };
  }

  /**
   * A folded match from `first` to `end`, unless it ends between a letter and an accent the tokenizer's composition
   * merges into it: to XLM-R, "e" is not part of "é" (but "ﬁ" may split into "f" and "i", and to Qwen, Hebrew "שּׂ",
   * which NFC leaves decomposed, into its letter and points).
   */
  #wholeMatch(first: number, end: number): Match | undefined {
    const { n, kinds } = this.#t;
    if (end < n && end > 0 && kinds[end]! & BOUND && this.#hard(kinds[end]!) && this.#hard(kinds[end - 1]!)) return undefined;
    return this.#foldMatch(first, end);
  }

  #foldMatch(first: number, end: number): Match {
    const t = this.#t;
    return { start: t.starts[first]!, stop: t.ends[end - 1]!, exact: false, gapEnd: first, u: end, b: end < t.n ? t.starts[end]! : t.byteLength };
  }

  #foldHere(p: FoldedPiece): Match | undefined {
    // A token of soft units only and no whitespace ("¨" folds to a space and an accent) first steps over what BERT
    // drops: whitespace and invisible characters, but not the space such a character folds to.
    const { n, units, kinds } = this.#t;
    let from = this.#u;
    if (p.anchor < 0 && !p.hasWs) {
      while (from < n && kinds[from]! & this.#skippable & (INVISIBLE | WS) && !(kinds[from]! & INVISIBLE && units[from] === SPACE)) from++;
    }
    const r = this.#matchAt(from, p);
    if (!r) return undefined;
    if (r.first >= 0) return this.#wholeMatch(r.first, r.end);
    // All soft, and no soft text here (a prepended "▁"): it stands for nothing, at the cursor. Waiting tokens
    // need a real match to end their gap.
    if (this.#waiting.length > 0) return undefined;
    const at = Math.max(this.#b, this.#lastStop);
    return { start: at, stop: at, exact: false, gapEnd: this.#u, u: this.#u, b: this.#b };
  }

  /**
   * Scans ahead from the cursor for a unit where `attempt` finds a match, while the gap before it touches no more
   * words (runs between spaces) than tokens wait; none waiting, the gap stays inside the word at the cursor.
   * With tokens waiting, a match that would leave them no text is passed over.
   */
  #search(candidate: (j: number) => boolean, attempt: (j: number) => Match | undefined): Match | undefined {
    const { n, units, kinds } = this.#t;
    const waiting = this.#waiting.length;
    let words = 0;
    let inWord = false;
    for (let j = this.#u; j < n; j++) {
      if (!this.#spend(1)) return undefined;
      if (candidate(j)) {
        const m = attempt(j);
        if (m && (waiting === 0 || this.#leavesText(m))) return m;
      }
      const k = kinds[j]!;
      if (waiting === 0) {
        if (k & WS) {
          if (inWord) return undefined;
        } else if (this.#hard(k)) inWord = true;
      } else if (units[j] === SPACE) inWord = false;
      else if (!inWord) {
        inWord = true;
        if (++words > waiting) return undefined;
      }
    }
    return undefined;
  }

  #searchFold(p: FoldedPiece): Match | undefined {
    const { units, kinds } = this.#t;
    // Without tokens waiting, an all-soft token (a space) stands for nothing: #foldHere placed it.
    if (p.anchor < 0 && this.#waiting.length === 0) return undefined;
    const anchor = p.anchor >= 0 ? p.units[p.anchor]! : p.units[0]!;
    const candidate =
      p.anchor >= 0
        ? (j: number) => units[j] === anchor && this.#hard(kinds[j]!)
        : p.hasWs
          ? (j: number) => (kinds[j]! & WS) !== 0 || units[j] === SPACE
          : (j: number) => units[j] === anchor;
    return this.#search(candidate, (j) => {
      // Take in the whitespace before the anchor that the token's own leading whitespace stands for.
      let from = j;
      for (let k = p.anchor >= 0 ? p.leadingWs : 0; k > 0 && from > this.#u && kinds[from - 1]! & WS; k--) from--;
      const r = this.#matchAt(from, p);
      return r && r.first >= 0 ? this.#wholeMatch(r.first, r.end) : undefined;
    });
  }

  #searchExact(want: Uint8Array): Match | undefined {
    if (want.length === 0) return undefined;
    const { starts } = this.#t;
    return this.#search(
      (j) => this.#bytes[starts[j]!] === want[0],
      (j) => {
        const at = starts[j]!;
        if (!this.#bytesAt(at, want)) return undefined;
        const stop = at + want.length;
        return { start: at, stop, exact: true, gapEnd: j, u: this.#unitFrom(j, stop), b: stop };
      },
    );
  }

  /** The word BERT's pre-tokenizer sees at the cursor: one punctuation character or CJK ideograph, or a run up to whitespace or punctuation. */
  #bertWord(): Match | undefined {
    const { n, units, kinds, starts } = this.#t;
    // A word starts at a hard unit, or at the space a spacing accent ("˜") folds to: BERT keeps that character.
    let j = this.#u;
    while (j < n && !this.#hard(kinds[j]!) && !(kinds[j]! & INVISIBLE && units[j] === SPACE)) j++;
    if (j >= n) return undefined;
    const first = j;
    if (kinds[j]! & BREAK) {
      const char = starts[j];
      while (j < n && starts[j] === char) j++;
    } else {
      while (j < n && !(kinds[j]! & WS) && !(kinds[j]! & BREAK)) j++;
      // Invisible characters BERT drops at the word's end are not part of it (its accents are).
      while (j > first + 1 && kinds[j - 1]! & INVISIBLE && units[j - 1] !== SPACE) j--;
    }
    this.#spend(j - this.#u);
    return this.#foldMatch(first, j);
  }

  /** Hands the gap [cursor, gapEnd) to the waiting tokens when the split is unambiguous (see the file header). */
  #resolve(gapEnd: number): void {
    const waiting = this.#waiting;
    if (waiting.length === 0) return;
    this.#waiting = [];
    const { units, kinds, starts, ends } = this.#t;
    const from = this.#u;
    // Words: runs between spaces, without the invisible characters at their ends.
    const words: [number, number][] = [];
    let hard = 0;
    let other = 0;
    for (let j = from; j < gapEnd; ) {
      if (units[j] === SPACE) {
        j++;
        continue;
      }
      let z = j;
      while (z + 1 < gapEnd && units[z + 1] !== SPACE) z++;
      let a = j;
      let b = z;
      while (a < b && kinds[a]! & INVISIBLE) a++;
      while (b > a && kinds[b]! & INVISIBLE) b--;
      words.push([a, b]);
      for (let k = j; k <= z; k++) {
        if (this.#hard(kinds[k]!)) hard++;
        else other++;
      }
      j = z + 1;
    }
    const give = (w: Waiting, a: number, z: number): void => this.#give(w.first, w.count, starts[a]!, ends[z]!);
    if (waiting.length === 1) {
      // A token that failed to match stood for some letter, digit or symbol; an unknown one may be a line break.
      const w = waiting[0]!;
      if (words.length === 1 && (w.unknown || hard > 0)) give(w, words[0]![0], words[0]![1]);
      return;
    }
    if (!waiting.every((w) => w.unknown)) return;
    if (words.length === waiting.length) {
      for (const [i, w] of waiting.entries()) give(w, words[i]![0], words[i]![1]);
    } else if (hard === waiting.length) {
      let i = 0;
      for (let j = from; j < gapEnd; j++) if (this.#hard(kinds[j]!)) give(waiting[i++]!, j, j);
    } else if (hard === 0 && other === waiting.length) {
      let i = 0;
      for (let j = from; j < gapEnd; j++) if (units[j] !== SPACE) give(waiting[i++]!, j, j);
    }
  }
}

function isAsciiSpace(b: number): boolean {
  return b === 32 || (b >= 9 && b <= 13);
}
