/**
 * Bench corpus: real-looking English sentences of 8–40 tokens, never repeated.
 *
 * Words come from the model's own vocabulary (`vocab.txt`, GloVe frequency order), keeping only
 * plain lower-case words, and are drawn with Zipf's law over the 50,000 most frequent of them, so
 * "the", "of", "and" are as common as in English prose and the embedding rows touched have a
 * realistic cache locality. Sentences get a capital letter, the odd comma, and a final period.
 *
 * Uniqueness is structural, not checked: word positions 1, 3 and 5 of sentence number c spell c in
 * base K (after a fixed bijective scramble) with K "content" words (ranks 200..200+K), so two sentences of different numbers differ in
 * at least one of those words; K = 4000 gives 6.4e10 distinct sentences. Deterministic for a seed.
 */
import { readFile } from 'node:fs/promises';

/** mulberry32: small, fast, seedable PRNG in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const MIN_TOKENS = 8;
export const MAX_TOKENS = 40;
const ZIPF_WORDS = 50_000;
const CONTENT_FROM = 200;
const CONTENT_K = 4000;
const COMMA_P = 0.08;
/** Coprime to K³ (= 2^15 · 5^9), so c → (A·c + B) mod K³ is a bijection; A·c stays exact below 2^53. */
const SCRAMBLE_A = 1_000_003;
const SCRAMBLE_B = 12_345_678;

export class SentenceSource {
  readonly #words: string[];
  readonly #content: string[];
  readonly #cdf: Float64Array;
  readonly #rand: () => number;
  #counter = 0;

  // biome-ignore lint/style/useConsistentMemberAccessibility: a constructor has no #private form; instances come from the static factory
  private constructor(words: string[], seed: number) {
    this.#words = words.slice(0, ZIPF_WORDS);
    this.#content = words.slice(CONTENT_FROM, CONTENT_FROM + CONTENT_K);
    if (this.#content.length < CONTENT_K) throw new Error(`vocabulary too small for the bench corpus (${words.length} plain words)`);
    const cdf = new Float64Array(this.#words.length);
    let s = 0;
    for (let r = 0; r < cdf.length; r++) {
      s += 1 / (r + 1);
      cdf[r] = s;
    }
    for (let r = 0; r < cdf.length; r++) cdf[r]! /= s;
    this.#cdf = cdf;
    this.#rand = prng(seed);
  }

  /** Reads the plain words (a–z only, 2+ letters) of a vocabulary file, in file (frequency) order. */
  static async fromVocab(vocabPath: string, seed = 42): Promise<SentenceSource> {
    const lines = (await readFile(vocabPath, 'utf8')).split('\n');
    const words: string[] = [];
    for (let i = 1; i < lines.length; i++) {
      const w = lines[i]!.trim();
      if (/^[a-z]{2,}$/.test(w)) words.push(w);
    }
    return new SentenceSource(words, seed);
  }

  /** A source over a given list of plain words (most frequent first), e.g. a WordPiece vocabulary's whole words. */
  static fromWords(words: string[], seed = 42): SentenceSource {
    return new SentenceSource(words, seed);
  }

  /** How many sentences have been produced. */
  get produced(): number {
    return this.#counter;
  }

  #zipf(): string {
    const u = this.#rand();
    let lo = 0;
    let hi = this.#cdf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#cdf[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    return this.#words[lo]!;
  }

  /** The next sentence; `tokens` (8–40) defaults to a uniform draw. Every call returns a new text. */
  next(tokens?: number): string {
    const k = tokens ?? MIN_TOKENS + Math.floor(this.#rand() * (MAX_TOKENS - MIN_TOKENS + 1));
    if (this.#counter >= CONTENT_K ** 3) throw new Error('bench corpus exhausted');
    // An affine bijection of [0, K³) spreads consecutive numbers over all three word positions.
    let c = (this.#counter++ * SCRAMBLE_A + SCRAMBLE_B) % CONTENT_K ** 3;
    const digits: string[] = [];
    for (let i = 0; i < 3; i++) {
      digits.push(this.#content[c % CONTENT_K]!);
      c = Math.floor(c / CONTENT_K);
    }
    // k tokens = words + commas + the final period.
    const parts: string[] = [];
    let budget = k - 1;
    let wordIndex = 0;
    while (budget > 0) {
      let w = wordIndex === 1 ? digits[0]! : wordIndex === 3 ? digits[1]! : wordIndex === 5 ? digits[2]! : this.#zipf();
      if (wordIndex === 0) w = w[0]!.toUpperCase() + w.slice(1);
      budget--;
      // A comma is a token of its own; it never ends the sentence, never follows the first word, and
      // always leaves room for the words up to position 5 (the ones that make the sentence unique).
      if (wordIndex > 0 && budget - 1 >= Math.max(2, 5 - wordIndex) && this.#rand() < COMMA_P) {
        w += ',';
        budget--;
      }
      parts.push(w);
      wordIndex++;
    }
    return `${parts.join(' ')}.`;
  }

  /** `n` new sentences. */
  take(n: number): string[] {
    const out: string[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.next();
    return out;
  }
}
