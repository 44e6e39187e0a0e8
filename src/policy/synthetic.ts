/**
 * Synthetic workloads, for trying the simulator without a trace of one's own.
 *
 * `zipf:s=1.1,n=100000,churn=0.01,requests=1e6` — a catalogue of the `n` newest posts; a request asks
 * for the post at popularity rank k (1 = most popular) with probability ∝ 1/k^s. Rank k is the k-th
 * newest post, so popularity follows recency: with probability `churn` per request a new post arrives,
 * takes rank 1 and pushes every other post one rank down (the oldest leaves the catalogue). Arrivals are
 * a Poisson process at `rps` requests per second. Every record carries the compute cost `ms` and vector
 * size `bytes` it would have if computed, source COMPUTED (there was no real cache), rate 1.
 *
 * Parameters (defaults): s (1.1), n (100000), churn (0.01), requests (1e6), rps (100), seed (1),
 * bytes (3072: a 768-d float32 vector), ms (4: a transformer-sized inference), tokens (32),
 * model (synthetic), clients (1: all records without a client; more: client-1 … client-N, uniformly).
 * The same spec and seed give the same trace, on every machine.
 */
import type { TraceRecord } from './trace.ts';

export interface ZipfSpec {
  s: number;
  n: number;
  churn: number;
  requests: number;
  rps: number;
  seed: number;
  bytes: number;
  ms: number;
  tokens: number;
  model: string;
  clients: number;
}

export const DEFAULT_ZIPF: ZipfSpec = {
  s: 1.1,
  n: 100_000,
  churn: 0.01,
  requests: 1_000_000,
  rps: 100,
  seed: 1,
  bytes: 3072,
  ms: 4,
  tokens: 32,
  model: 'synthetic',
  clients: 1,
};

/** Start time of synthetic traces (fixed, so traces are reproducible): 2025-01-01T00:00:00Z. */
export const SYNTHETIC_EPOCH = Date.UTC(2025, 0, 1);

/** Key length the memory tier would see: `synthetic@0123456789abcdef:` + 43 base64url characters. */
const KEY_LENGTH = 'synthetic@0123456789abcdef:'.length + 43;

export function parseSynthetic(spec: string): ZipfSpec {
  const m = /^zipf(?::(.*))?$/i.exec(spec.trim());
  if (!m) throw new TypeError(`--synthetic: "${spec}" must look like zipf:s=1.1,n=100000,churn=0.01,requests=1e6`);
  const out: ZipfSpec = { ...DEFAULT_ZIPF };
  for (const part of (m[1] ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)) {
    const [k, v] = part.split('=') as [string, string | undefined];
    if (k === 'model') {
      if (!v) throw new TypeError('--synthetic: model needs a name');
      out.model = v;
      continue;
    }
    const n = Number(v);
    if (!(k in out) || !Number.isFinite(n)) throw new TypeError(`--synthetic: "${part}" is not one of ${Object.keys(DEFAULT_ZIPF).join(', ')} = a number`);
    (out as unknown as Record<string, number>)[k] = n;
  }
  const int = (name: keyof ZipfSpec, min: number) => {
    const x = out[name] as number;
    if (!Number.isSafeInteger(x) || x < min) throw new TypeError(`--synthetic: ${name} must be an integer >= ${min}, received ${x}`);
  };
  int('n', 1);
  int('requests', 0);
  int('bytes', 1);
  int('tokens', 0);
  int('clients', 1);
  int('seed', 0);
  if (!(out.s >= 0)) throw new TypeError(`--synthetic: s must be >= 0, received ${out.s}`);
  if (!(out.churn >= 0 && out.churn <= 1)) throw new TypeError(`--synthetic: churn must be in [0, 1], received ${out.churn}`);
  if (!(out.rps > 0)) throw new TypeError(`--synthetic: rps must be > 0, received ${out.rps}`);
  if (!(out.ms >= 0)) throw new TypeError(`--synthetic: ms must be >= 0, received ${out.ms}`);
  return out;
}

/** xoshiro128** seeded through splitmix32: fast, small, and good enough for workloads. */
export function rng(seed: number): () => number {
  let x = seed >>> 0;
  const split = () => {
    x = (x + 0x9e3779b9) >>> 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split();
  let b = split();
  let c = split();
  let d = split();
  return () => {
    const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return r / 4294967296;
  };
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** Sampler of ranks 1..n with P(k) ∝ k^-s (inverse CDF, binary search). */
export function zipfSampler(n: number, s: number, random: () => number): () => number {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let k = 1; k <= n; k++) {
    sum += k ** -s;
    cdf[k - 1] = sum;
  }
  for (let i = 0; i < n; i++) cdf[i]! /= sum;
  return () => {
    const u = random();
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cdf[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    return lo + 1;
  };
}

/** The workload as records, lazily, in time order. Keys are `p<post id in hex>`. */
export function* zipfTrace(spec: ZipfSpec): Generator<TraceRecord> {
  const random = rng(spec.seed);
  const rank = zipfSampler(spec.n, spec.s, random);
  let newest = spec.n - 1;
  let t = SYNTHETIC_EPOCH;
  const meanGapMs = 1000 / spec.rps;
  for (let i = 0; i < spec.requests; i++) {
    if (spec.churn > 0 && random() < spec.churn) newest++;
    t += -Math.log(1 - random()) * meanGapMs;
    const id = newest - (rank() - 1);
    const rec: TraceRecord = {
      t: Math.round(t * 1000) / 1000,
      k: `p${id.toString(16)}`,
      kl: KEY_LENGTH,
      m: spec.model,
      b: spec.bytes,
      tok: spec.tokens,
      ms: spec.ms,
      src: 'COMPUTED',
      r: 1,
    };
    if (spec.clients > 1) rec.c = `client-${1 + Math.floor(random() * spec.clients)}`;
    yield rec;
  }
}

/** Ranks only (no records): the post ids a Zipf workload asks for, for driving a real service. */
export function* zipfIds(spec: Pick<ZipfSpec, 'n' | 's' | 'churn' | 'requests' | 'seed'>): Generator<number> {
  const random = rng(spec.seed);
  const rank = zipfSampler(spec.n, spec.s, random);
  let newest = spec.n - 1;
  for (let i = 0; i < spec.requests; i++) {
    if (spec.churn > 0 && random() < spec.churn) newest++;
    yield newest - (rank() - 1);
  }
}
