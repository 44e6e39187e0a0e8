/**
 * The tokens of a text as TEI's `POST /tokenize` lists them: `{id, text, special, start, stop}`, with UTF-8 byte
 * offsets into the text.
 *
 * Owns: the token view (ids exactly as `encode` gives them, the template's special tokens dropped on request),
 * and reading each vocabulary piece back into the bytes it stands for: GPT-2 byte-level characters, SentencePiece
 * "▁" and "<0xE4>" byte fallback, WordPiece "##" continuations (`PieceNotation`). Where those bytes sit in the
 * text is src/runtime/token-align.ts's.
 *
 * As TEI answers: a special token's `text` is its vocabulary string and its offsets are null; another token's
 * `text` is the input's bytes [start, stop) decoded as UTF-8, lossily, so a token holding part of a character
 * reads "\uFFFD". A token the alignment finds no place for has null offsets and, for `text`, what its piece
 * stands for (an unknown token: the piece itself, "[UNK]"); so does every token of a tokenizer without `pieces`.
 */
import { type AlignOptions, type AlignToken, alignTokens } from './token-align.ts';
import type { Piece, PieceNotation, Tokenizer } from './tokenizer.ts';

export interface TokenView {
  id: number;
  text: string;
  special: boolean;
  /** Byte offsets into the UTF-8 text, [start, stop); null for special tokens and tokens without a place. */
  start: number | null;
  stop: number | null;
}

export interface ViewTokensOptions {
  /** Keep the special tokens the tokenizer's template puts around the text ([CLS] … [SEP], <bos>). */
  addSpecialTokens: boolean;
}

/**
 * The tokens of `text` as `tokenizer.encode(text)` yields them (same ids, same order), with offsets. Never throws
 * (given an `encode` that keeps its own never-throw contract): where alignment fails, offsets are null.
 */
export function viewTokens(tokenizer: Tokenizer, text: string, options: ViewTokensOptions): TokenView[] {
  const input = typeof text === 'string' ? text : String(text);
  const ids = tokenizer.encode(input).ids;
  const prefix = Math.min(tokenizer.specials?.prefix ?? 0, ids.length);
  const suffix = Math.min(tokenizer.specials?.suffix ?? 0, ids.length - prefix);
  const bytes = Buffer.from(input, 'utf8');
  let described: Described | undefined;
  let starts: Int32Array | undefined;
  let stops: Int32Array | undefined;
  try {
    described = describe(tokenizer, ids, prefix, suffix);
    if (described) ({ starts, stops } = alignTokens(input, bytes, described.tokens, described.options));
  } catch {
    // A tokenizer's pieces the reading above does not expect: the ids stand, without offsets.
    starts = undefined;
    stops = undefined;
  }
  const from = options.addSpecialTokens ? 0 : prefix;
  const to = options.addSpecialTokens ? ids.length : ids.length - suffix;
  const views: TokenView[] = [];
  let lastStart = 0;
  let lastStop = 0;
  for (let i = from; i < to; i++) {
    const id = ids[i]!;
    const piece = described?.pieces[i];
    const token = described?.tokens[i];
    if (!piece || !token) {
      views.push({ id, text: '', special: i < prefix || i >= ids.length - suffix, start: null, stop: null });
      continue;
    }
    if (token.kind === 'special') {
      views.push({ id, text: piece.piece, special: true, start: null, stop: null });
      continue;
    }
    const start = starts?.[i] ?? -1;
    const stop = stops?.[i] ?? -1;
    // The aligner keeps offsets in order; this is the contract's last line of defence, not a repair.
    if (start >= lastStart && stop >= Math.max(start, lastStop) && stop <= bytes.length) {
      lastStart = start;
      lastStop = stop;
      views.push({ id, text: bytes.toString('utf8', start, stop), special: false, start, stop });
    } else {
      views.push({ id, text: token.kind === 'unknown' ? piece.piece : Buffer.from(token.bytes).toString('utf8'), special: false, start: null, stop: null });
    }
  }
  return views;
}

interface Described {
  pieces: Piece[];
  tokens: AlignToken[];
  options: AlignOptions;
}

/** Each token's piece, and what it stands for; undefined when the tokenizer cannot say. */
function describe(tokenizer: Tokenizer, ids: readonly number[], prefix: number, suffix: number): Described | undefined {
  const p = tokenizer.pieces?.(ids);
  if (!p || p.pieces.length !== ids.length) return undefined;
  const { notation, pieces } = p;
  const reader = new PieceReader(notation);
  // The same id reads the same everywhere (texts repeat tokens); template positions are special whatever the piece says.
  const byId = new Map<number, AlignToken>();
  const tokens = pieces.map((piece, i): AlignToken => {
    const template = i < prefix || i >= ids.length - suffix;
    if (template && !piece.special) return reader.token({ ...piece, special: true });
    const id = ids[i]!;
    let t = byId.get(id);
    if (t === undefined) {
      t = reader.token(piece);
      byId.set(id, t);
    }
    return t;
  });
  const options: AlignOptions = {
    bertWords: notation.bertWords === true,
    lowercase: notation.lowercase === true,
    stripAccents: notation.stripAccents === true,
  };
  if (notation.space !== undefined) options.space = notation.space;
  if (notation.composition !== undefined) options.composition = notation.composition;
  return { pieces, tokens, options };
}

const BYTE_PIECE_RE = /^<0x([0-9A-Fa-f]{2})>$/;

/** GPT-2's byte-to-unicode table inverted: the character a byte-level vocabulary writes → the byte. */
const BYTE_LEVEL: ReadonlyMap<number, number> = (() => {
  const printable = (b: number): boolean => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  const map = new Map<number, number>();
  let next = 256;
  for (let b = 0; b < 256; b++) map.set(printable(b) ? b : next++, b);
  return map;
})();

/** Reads pieces in one notation into what they stand for. */
class PieceReader {
  readonly #n: PieceNotation;
  readonly #utf8 = new TextEncoder();
  readonly #strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

  constructor(notation: PieceNotation) {
    this.#n = notation;
  }

  token(piece: Piece): AlignToken {
    const literal = this.#utf8.encode(piece.piece);
    if (piece.unknown) return { kind: 'unknown', bytes: literal };
    if (piece.special) return { kind: 'special', bytes: literal };
    const bytes = this.#bytes(piece.piece);
    let text: string | undefined;
    try {
      text = this.#strict.decode(bytes);
    } catch {
      // Part of a character (a byte-level or byte-fallback piece): matched byte for byte only.
      text = undefined;
    }
    const t: AlignToken = text === undefined ? { kind: 'text', bytes } : { kind: 'text', bytes, text };
    if (piece.added && !sameBytes(bytes, literal)) t.literal = literal;
    return t;
  }

  #bytes(piece: string): Uint8Array {
    const n = this.#n;
    if (n.byteFallback) {
      const m = BYTE_PIECE_RE.exec(piece);
      if (m) return Uint8Array.of(Number.parseInt(m[1]!, 16));
    }
    if (n.byteLevel) {
      const out = new Uint8Array(piece.length);
      let k = 0;
      for (let i = 0; i < piece.length; i++) {
        const b = BYTE_LEVEL.get(piece.charCodeAt(i));
        if (b === undefined) break;
        out[k++] = b;
      }
      // Characters outside the table (all of it is in the BMP): an added token, written as itself.
      if (k === piece.length) return out;
    }
    let s = piece;
    const prefix = n.continuingPrefix;
    if (prefix && s.length > prefix.length && s.startsWith(prefix)) s = s.slice(prefix.length);
    const suffix = n.endOfWordSuffix;
    if (suffix && s.length > suffix.length && s.endsWith(suffix)) s = s.slice(0, s.length - suffix.length);
    if (n.space) s = s.replaceAll(n.space, ' ');
    return this.#utf8.encode(s);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
