/**
 * Project issue 7: a transformer encoder (`text-bert-synthetic`, MiniLM-L6 size) at sequence lengths 16
 * and 128 and a mixed-length workload, measured in one run:
 *   1. the ceiling: raw onnxruntime-node `run()` over batch sizes × intra-op threads, plus the fused and
 *      int8 variants at seq 128 (speed-up, and cosine of their vectors against fp32);
 *   2. Polyray (batching on, the service defaults) through HTTP GraphQL, cache misses, N = 1/16/64;
 *   3. the naive baseline: the same service with `POLYRAY_BATCH_MAX_ITEMS=1`;
 *   4. a peer: transformers.js behind a minimal node:http server (`bench/peer-server.ts`), one model call
 *      per request and micro-batched, same clients;
 *   5. mixed lengths (8–256 tokens) at N = 64, Polyray vs the peer;
 *   6. responsiveness: a low-rate probe of memory hits while 64 clients saturate the CPU with misses;
 *   7. peak RSS of every server process.
 * Every server is a child process; the load generator is this process (node:http keep-alive clients).
 */
import http from 'node:http';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { WordPieceTokenizer } from '../src/runtime/wordpiece.ts';
import { SentenceSource, prng } from './corpus.ts';
import { type LoadCounts, postHttp, summarise, type Latency } from './load.ts';
import { cpuSnapshot, cpuUse, peakRss, SCRATCH_DIR } from './service.ts';

export const BERT = 'text-bert-synthetic';

// ---------- corpus of WordPiece-length-controlled texts ----------

/** Unique sentences whose WordPiece length ([CLS] and [SEP] included) is chosen by the caller. */
export class BertCorpus {
  readonly tokenizer: WordPieceTokenizer;
  readonly #src: SentenceSource;
  readonly #rand: () => number;

  // biome-ignore lint/style/useConsistentMemberAccessibility: a constructor has no #private form; instances come from the static factory
  private constructor(tokenizer: WordPieceTokenizer, src: SentenceSource, seed: number) {
    this.tokenizer = tokenizer;
    this.#src = src;
    this.#rand = prng(seed);
  }

  /** Whole words (a–z, 2+ letters) of the vocabulary in id order (BERT's vocab is roughly frequency-ordered). */
  static async load(tokenizerJson: string, seed = 7): Promise<BertCorpus> {
    const tok = await WordPieceTokenizer.load(tokenizerJson);
    const json = JSON.parse(readFileSync(tokenizerJson, 'utf8')) as { model: { vocab: Record<string, number> } };
    const words = Object.entries(json.model.vocab)
      .filter(([w]) => /^[a-z]{2,}$/.test(w))
      .sort((a, b) => a[1] - b[1])
      .map(([w]) => w);
    return new BertCorpus(tok, SentenceSource.fromWords(words, seed), seed + 1);
  }

  /** A new text of `tokens` WordPiece tokens (≥ 9; each vocabulary word, comma and period is one token). */
  text(tokens: number): string {
    return this.#src.next(Math.max(7, tokens - 2));
  }

  /** Length drawn uniformly from [lo, hi]. */
  mixed(lo: number, hi: number): string {
    return this.text(lo + Math.floor(this.#rand() * (hi - lo + 1)));
  }

  length(text: string): number {
    return this.tokenizer.encode(text).ids.length;
  }
}

// ---------- ceiling ----------

export interface BertCeilingRow {
  model: string;
  seq: number;
  intraOpThreads: number;
  /** ONNX Runtime `session.intra_op.allow_spinning` of the session. */
  spinning: boolean;
  batchSize: number;
  runs: number;
  itemsPerS: number;
  runMsP50: number;
  cpuCores: number;
}

export interface BertVariantRow {
  model: string;
  seq: number;
  batchSize: number;
  intraOpThreads: number;
  spinning: boolean;
  itemsPerS: number;
  runMsP50: number;
  speedupVsFp32: number;
  cosineMin: number;
  cosineMean: number;
  samples: number;
}

/** Padded int64 feeds (ids, mask, zero token types) for a batch of encodings; the GPU check uses it too. */
export function feedsOf(encs: { ids: number[]; mask: number[] }[]): Record<string, ort.Tensor> {
  const n = encs.length;
  const t = Math.max(...encs.map((e) => e.ids.length));
  const ids = new BigInt64Array(n * t);
  const mask = new BigInt64Array(n * t);
  encs.forEach((e, r) => {
    for (let j = 0; j < e.ids.length; j++) {
      ids[r * t + j] = BigInt(e.ids[j]!);
      mask[r * t + j] = BigInt(e.mask[j]!);
    }
  });
  return {
    input_ids: new ort.Tensor('int64', ids, [n, t]),
    attention_mask: new ort.Tensor('int64', mask, [n, t]),
    token_type_ids: new ort.Tensor('int64', new BigInt64Array(n * t), [n, t]),
  };
}

/** The session options of src/runtime/worker.ts; spinning as given (the service turns it on for these models). */
export function createSession(file: string, intra: number, spin: boolean): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(file, {
    executionProviders: ['cpu'],
    intraOpNumThreads: intra,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    extra: { session: { intra_op: { allow_spinning: spin ? '1' : '0' } } },
  });
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)] ?? NaN;

async function timeCell(
  session: ort.InferenceSession,
  batches: Record<string, ort.Tensor>[],
  b: number,
  cellMs: number,
  minRuns: number,
  warm = true,
): Promise<{ runs: number; itemsPerS: number; runMsP50: number; cpuCores: number }> {
  if (warm) await session.run(batches[0]!, ['embedding']); // warm-up
  const times: number[] = [];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let k = 1;
  while (times.length < minRuns || performance.now() - t0 < cellMs) {
    const r0 = performance.now();
    await session.run(batches[k++ % batches.length]!, ['embedding']);
    times.push(performance.now() - r0);
  }
  const s = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(cpu0);
  return { runs: times.length, itemsPerS: (times.length * b) / s, runMsP50: median(times), cpuCores: (c.user + c.system) / 1e6 / s };
}

function cosine(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    d += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return d / Math.sqrt(na * nb);
}

export interface BertCeilingOptions {
  modelsDir: string;
  corpus: BertCorpus;
  seqs: number[];
  batchSizes: number[];
  /** Thread settings measured: intra-op threads × spinning. */
  threads: { intra: number; spin: boolean }[];
  cellMs: number;
  minRuns: number;
  variantSeq: number;
  variantRounds: number;
  /** Batch size and thread setting of the variant comparison (default: the best fp32 cell). */
  variantBatch?: number;
  variantIntra?: number;
  variantSpin?: boolean;
  cosineSamples: number;
  /** Raw batching strategies on mixed-length texts (the bound of what length bucketing can gain). */
  mixed?: { range: [number, number]; texts: number; maxTokens: number; rounds: number };
  log: (s: string) => void;
  checkAbort: () => void;
}

/** One batching strategy over the same mixed-length texts, raw `run()` with the variant session setting. */
export interface BertMixedRow {
  strategy: string;
  itemsPerS: number;
  /** Real ÷ padded tokens. */
  fill: number;
  runs: number;
}

export interface BertCeilingResult {
  rows: BertCeilingRow[];
  best: Record<string, BertCeilingRow>;
  variants: BertVariantRow[];
  mixed?: { range: [number, number]; texts: number; maxTokens: number; intraOpThreads: number; spinning: boolean; rows: BertMixedRow[] };
  tokenLengths: Record<string, { min: number; max: number; mean: number }>;
}

export async function bertCeiling(o: BertCeilingOptions): Promise<BertCeilingResult> {
  const file = (m: string): string => path.join(o.modelsDir, m, 'model.onnx');
  const pool = new Map<number, { ids: number[]; mask: number[] }[]>();
  const tokenLengths: BertCeilingResult['tokenLengths'] = {};
  const maxB = Math.max(...o.batchSizes);
  for (const seq of o.seqs) {
    const encs = Array.from({ length: maxB * 2 }, () => o.corpus.tokenizer.encode(o.corpus.text(seq)));
    pool.set(seq, encs);
    const ls = encs.map((e) => e.ids.length);
    tokenLengths[`seq${seq}`] = { min: Math.min(...ls), max: Math.max(...ls), mean: ls.reduce((a, b) => a + b, 0) / ls.length };
  }
  const batchesOf = (seq: number, b: number): Record<string, ort.Tensor>[] => {
    const encs = pool.get(seq)!;
    return [0, 1].map((i) => feedsOf(encs.slice(i * b, i * b + b)));
  };
  const rows: BertCeilingRow[] = [];
  for (const { intra, spin } of o.threads) {
    o.checkAbort();
    const session = await createSession(file(BERT), intra, spin);
    try {
      for (const seq of o.seqs) {
        for (const b of o.batchSizes) {
          o.checkAbort();
          // One untimed run warms the session per sequence length and for the small batches (cheap); the
          // larger cells follow warm cells of the same session, and their runs are long.
          const r = await timeCell(session, batchesOf(seq, b), b, o.cellMs, o.minRuns, b === o.batchSizes[0] || b * seq <= 512);
          rows.push({ model: BERT, seq, intraOpThreads: intra, spinning: spin, batchSize: b, ...r });
          o.log(
            `  bert ceiling seq=${seq} intra=${intra}${spin ? ' spin' : ''} batch=${String(b).padStart(2)}: ${r.itemsPerS.toFixed(1).padStart(7)} items/s (run p50 ${r.runMsP50.toFixed(1)} ms, ${r.cpuCores.toFixed(2)} cores)`,
          );
        }
      }
    } finally {
      await session.release();
    }
  }
  const best: Record<string, BertCeilingRow> = {};
  for (const seq of o.seqs) {
    const rs = rows.filter((r) => r.seq === seq);
    best[`seq${seq}`] = rs.reduce((a, r) => (r.itemsPerS > a.itemsPerS ? r : a), rs[0]!);
  }

  // Variants at one sequence length, the best batch and threads of plain fp32, in interleaved rounds.
  // A fixed batch when given: the best cell moves between runs on a noisy shared box.
  const bestV = best[`seq${o.variantSeq}`]!;
  const vb = {
    batchSize: o.variantBatch ?? bestV.batchSize,
    intraOpThreads: o.variantIntra ?? bestV.intraOpThreads,
    spinning: o.variantSpin ?? bestV.spinning,
  };
  const models = [BERT, `${BERT}-fused`, `${BERT}-int8`];
  const sessions = new Map<string, ort.InferenceSession>();
  const variants: BertVariantRow[] = [];
  try {
    for (const m of models) sessions.set(m, await createSession(file(m), vb.intraOpThreads, vb.spinning));
    const acc = new Map<string, { times: number[] }>();
    const batches = batchesOf(o.variantSeq, vb.batchSize);
    for (let round = 0; round < o.variantRounds; round++) {
      for (let i = 0; i < models.length; i++) {
        o.checkAbort();
        const m = models[(i + round) % models.length]!;
        const r = await timeCell(sessions.get(m)!, batches, vb.batchSize, o.cellMs, o.minRuns);
        const a = acc.get(m) ?? { times: [] };
        a.times.push(r.itemsPerS); // items/s of each round; the median round is reported
        acc.set(m, a);
      }
    }
    // Cosine against fp32, one text per run (no padding effects), half short, half long.
    const samples = Array.from({ length: o.cosineSamples }, (_, i) => o.corpus.text(i % 2 ? o.variantSeq : 16));
    const vecs = new Map<string, Float32Array[]>();
    for (const m of models) {
      const out: Float32Array[] = [];
      for (const t of samples)
        out.push(new Float32Array((await sessions.get(m)!.run(feedsOf([o.corpus.tokenizer.encode(t)]), ['embedding'])).embedding!.data as Float32Array));
      vecs.set(m, out);
    }
    const fp32 = median(acc.get(BERT)!.times);
    for (const m of models) {
      const cos = vecs.get(m)!.map((v, i) => cosine(v, vecs.get(BERT)![i]!));
      const ips = median(acc.get(m)!.times);
      variants.push({
        model: m,
        seq: o.variantSeq,
        batchSize: vb.batchSize,
        intraOpThreads: vb.intraOpThreads,
        spinning: vb.spinning,
        itemsPerS: ips,
        runMsP50: (vb.batchSize * 1000) / ips,
        speedupVsFp32: ips / fp32,
        cosineMin: Math.min(...cos),
        cosineMean: cos.reduce((a, b) => a + b, 0) / cos.length,
        samples: cos.length,
      });
      o.log(
        `  variant ${m.padEnd(26)} seq=${o.variantSeq} batch=${vb.batchSize}: ${ips.toFixed(1)} items/s (×${(ips / fp32).toFixed(2)} vs fp32), cosine vs fp32 min ${Math.min(...cos).toFixed(5)}`,
      );
    }
  } finally {
    for (const s of sessions.values()) await s.release();
  }
  const mixed = o.mixed ? await mixedStrategies(o, file(BERT), vb.intraOpThreads, vb.spinning, o.mixed) : undefined;
  return { rows, best, variants, tokenLengths, ...(mixed ? { mixed } : {}) };
}

/**
 * The same mixed-length texts run three ways on one session: one text per run (no padding, batch 1 — the
 * peer's one-call-per-request mode), random groups of 8 padded to their longest (the peer's micro-batched
 * mode), and length-sorted groups of at most `maxTokens` padded tokens (the best any length bucketing can
 * do with these texts: Polyray's batcher sees only what is queued, so it does no better). Interleaved rounds,
 * median round.
 */
async function mixedStrategies(
  o: BertCeilingOptions,
  modelFile: string,
  intra: number,
  spin: boolean,
  m: NonNullable<BertCeilingOptions['mixed']>,
): Promise<NonNullable<BertCeilingResult['mixed']>> {
  const encs = Array.from({ length: m.texts }, () => o.corpus.tokenizer.encode(o.corpus.mixed(m.range[0], m.range[1])));
  const chunk = <T>(xs: T[], n: number): T[][] => Array.from({ length: Math.ceil(xs.length / n) }, (_, i) => xs.slice(i * n, i * n + n));
  const sorted = [...encs].sort((a, b) => a.ids.length - b.ids.length);
  const bucketed: (typeof encs)[] = [];
  let cur: typeof encs = [];
  for (const e of sorted) {
    const longest = Math.max(e.ids.length, ...cur.map((c) => c.ids.length));
    if (cur.length > 0 && longest * (cur.length + 1) > m.maxTokens) {
      bucketed.push(cur);
      cur = [];
    }
    cur.push(e);
  }
  if (cur.length) bucketed.push(cur);
  const strategies: { strategy: string; groups: (typeof encs)[] }[] = [
    { strategy: 'one text per run', groups: encs.map((e) => [e]) },
    { strategy: 'random groups of 8, padded to the longest', groups: chunk(encs, 8) },
    { strategy: `length-sorted groups, ≤ ${m.maxTokens} padded tokens`, groups: bucketed },
  ];
  const session = await createSession(modelFile, intra, spin);
  const acc = new Map<string, number[]>();
  try {
    await session.run(feedsOf([encs[0]!]), ['embedding']);
    for (let round = 0; round < m.rounds; round++) {
      for (let i = 0; i < strategies.length; i++) {
        o.checkAbort();
        const st = strategies[(i + round) % strategies.length]!;
        const feeds = st.groups.map((g) => feedsOf(g));
        const t0 = performance.now();
        for (const f of feeds) await session.run(f, ['embedding']);
        const ips = encs.length / ((performance.now() - t0) / 1000);
        acc.set(st.strategy, [...(acc.get(st.strategy) ?? []), ips]);
      }
    }
  } finally {
    await session.release();
  }
  const real = encs.reduce((a, e) => a + e.ids.length, 0);
  const rows = strategies.map((st) => {
    const padded = st.groups.reduce((a, g) => a + g.length * Math.max(...g.map((e) => e.ids.length)), 0);
    const row = { strategy: st.strategy, itemsPerS: median(acc.get(st.strategy)!), fill: real / padded, runs: st.groups.length };
    o.log(`  mixed raw ${row.strategy.padEnd(48)} ${row.itemsPerS.toFixed(1).padStart(7)} items/s (fill ${(row.fill * 100).toFixed(0)}%, ${row.runs} runs)`);
    return row;
  });
  return { range: m.range, texts: m.texts, maxTokens: m.maxTokens, intraOpThreads: intra, spinning: spin, rows };
}

// ---------- HTTP load ----------

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const probeAgent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

/** A transformer batch can take far longer than a cache hit: 60 s before a request counts as failed. */
function post(url: string, body: string, a: http.Agent = agent): Promise<{ status: number; text: string }> {
  return postHttp(url, body, a, 60_000);
}

export interface Outcome {
  ok: boolean;
  sources: string[];
  error?: string;
}
export type Target = (texts: string[], probe?: boolean) => Promise<Outcome>;

const VECTOR_B64 = 4 * Math.ceil((384 * 4) / 3);
const embedQuery = (model: string): string => `query($inputs:[EmbedInput!]!){ embed(model:"${model}", inputs:$inputs){ source base64 } }`;

/** Polyray: one GraphQL `embed` request (of `model`, default text-bert-synthetic). */
export function polyrayTarget(url: string, model = BERT): Target {
  const query = embedQuery(model);
  return async (texts, probe) => {
    try {
      const res = await post(`${url}/graphql`, JSON.stringify({ query, variables: { inputs: texts.map((text) => ({ text })) } }), probe ? probeAgent : agent);
      const body = JSON.parse(res.text) as {
        data?: { embed?: { source: string; base64: string }[] };
        errors?: { message: string; extensions?: { code?: string } }[];
      };
      const e = body.data?.embed;
      if (res.status !== 200 || body.errors?.length || !e || e.length !== texts.length) {
        return {
          ok: false,
          sources: [],
          error: `HTTP ${res.status} ${body.errors?.[0]?.extensions?.code ?? ''} ${body.errors?.[0]?.message ?? ''}`.slice(0, 300),
        };
      }
      if (e.some((x) => x.base64.length !== VECTOR_B64)) return { ok: false, sources: [], error: 'bad vector length' };
      return { ok: true, sources: e.map((x) => x.source) };
    } catch (err) {
      return { ok: false, sources: [], error: String((err as Error).message).slice(0, 300) };
    }
  };
}

/** The peer server: POST {texts} to /embed or /embed-batched. */
export function peerTarget(url: string, endpoint: '/embed' | '/embed-batched'): Target {
  return async (texts, probe) => {
    try {
      const res = await post(`${url}${endpoint}`, JSON.stringify({ texts }), probe ? probeAgent : agent);
      const body = JSON.parse(res.text) as { vectors?: string[]; error?: string };
      if (res.status !== 200 || !body.vectors || body.vectors.length !== texts.length)
        return { ok: false, sources: [], error: `HTTP ${res.status} ${body.error ?? ''}`.slice(0, 300) };
      if (body.vectors.some((v) => v.length !== VECTOR_B64)) return { ok: false, sources: [], error: 'bad vector length' };
      return { ok: true, sources: texts.map(() => 'COMPUTED') };
    } catch (err) {
      return { ok: false, sources: [], error: String((err as Error).message).slice(0, 300) };
    }
  };
}

/** Raw vectors of one request (for the peer-vs-Polyray equality check). */
export async function vectorsOf(url: string, kind: 'polyray' | 'peer', texts: string[], model = BERT): Promise<Float32Array[]> {
  const res =
    kind === 'polyray'
      ? await post(`${url}/graphql`, JSON.stringify({ query: embedQuery(model), variables: { inputs: texts.map((text) => ({ text })) } }))
      : await post(`${url}/embed`, JSON.stringify({ texts }));
  const body = JSON.parse(res.text) as { data?: { embed?: { base64: string }[] }; vectors?: string[] };
  const b64 = kind === 'polyray' ? (body.data?.embed ?? []).map((x) => x.base64) : (body.vectors ?? []);
  return b64.map((s) => {
    const buf = Buffer.from(s, 'base64');
    return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  });
}

export { cosine };

export interface LoadSpec {
  server: string;
  workload: string;
  concurrency: number;
  warmupMs: number;
  durationMs: number;
}

export interface LoadResult extends LoadSpec, LoadCounts {
  probe?: ProbeResult;
  /** Polyray only: its inference batches over the phase (warm-up included), from /metrics. */
  batches?: { count: number; meanSize: number; meanRunMs: number };
}

export interface ProbeResult {
  ratePerS: number;
  sent: number;
  answered: number;
  errors: number;
  latencyMs: Latency;
  sources: Record<string, number>;
  firstError?: string;
}

export interface LoadOptions {
  target: Target;
  nextText: () => string;
  pid: number | undefined;
  expected: string;
  checkAbort: () => void;
  probe?: { target: Target; texts: string[]; ratePerS: number; expected: string };
}

/** N closed-loop clients, one text per request; optionally an open-loop probe at a fixed rate during the window. */
export async function runLoad(spec: LoadSpec, o: LoadOptions): Promise<LoadResult> {
  o.checkAbort();
  const t0 = performance.now();
  const ws = t0 + spec.warmupMs;
  const we = ws + spec.durationMs;
  const lat: number[] = [];
  const sources: Record<string, number> = {};
  let requests = 0;
  let errors = 0;
  let unexpected = 0;
  let firstError: string | undefined;
  let cpuA: ReturnType<typeof cpuSnapshot> | undefined;
  let cpuB: ReturnType<typeof cpuSnapshot> | undefined;
  const ta = setTimeout(() => (cpuA = cpuSnapshot(o.pid)), spec.warmupMs);
  const tb = setTimeout(() => (cpuB = cpuSnapshot(o.pid)), spec.warmupMs + spec.durationMs);
  const client = async (): Promise<void> => {
    while (performance.now() < we) {
      const texts = [o.nextText()];
      const s = performance.now();
      const r = await o.target(texts);
      const e = performance.now();
      if (e < ws || e > we) continue;
      if (!r.ok) {
        errors++;
        firstError ??= r.error;
        continue;
      }
      requests++;
      lat.push(e - s);
      for (const x of r.sources) {
        sources[x] = (sources[x] ?? 0) + 1;
        if (x !== o.expected) unexpected++;
      }
    }
  };
  // The probe: one request every 1/rate s sent inside the window, whatever the previous one is doing.
  const probeLat: number[] = [];
  const probeSources: Record<string, number> = {};
  let probeSent = 0;
  let probeErrors = 0;
  let probeFirstError: string | undefined;
  const probes: Promise<void>[] = [];
  let probeTimer: NodeJS.Timeout | undefined;
  if (o.probe) {
    const p = o.probe;
    const start = setTimeout(() => {
      probeTimer = setInterval(() => {
        if (performance.now() > we) return;
        const text = p.texts[probeSent++ % p.texts.length]!;
        const s = performance.now();
        probes.push(
          p.target([text], true).then((r) => {
            if (!r.ok) {
              probeErrors++;
              probeFirstError ??= r.error;
              return;
            }
            probeLat.push(performance.now() - s);
            for (const x of r.sources) probeSources[x] = (probeSources[x] ?? 0) + 1;
          }),
        );
      }, 1000 / p.ratePerS);
    }, spec.warmupMs);
    probes.push(new Promise<void>((r) => setTimeout(r, spec.warmupMs + 1)).then(() => clearTimeout(start)));
  }
  try {
    await Promise.all(Array.from({ length: spec.concurrency }, () => client()));
  } finally {
    clearTimeout(ta);
    clearTimeout(tb);
    if (probeTimer) clearInterval(probeTimer);
  }
  await Promise.all(probes);
  const a = cpuA ?? cpuSnapshot(o.pid);
  const b = cpuB ?? cpuSnapshot(o.pid);
  const seconds = spec.durationMs / 1000;
  return {
    ...spec,
    requests,
    items: requests,
    itemsPerS: requests / seconds,
    latencyMs: summarise(lat),
    errors,
    ...(firstError ? { firstError } : {}),
    sources,
    unexpectedSource: unexpected,
    cpu: cpuUse(a, b),
    ...(o.probe
      ? {
          probe: {
            ratePerS: o.probe.ratePerS,
            sent: probeSent,
            answered: probeLat.length,
            errors: probeErrors,
            latencyMs: summarise(probeLat),
            sources: probeSources,
            ...(probeFirstError ? { firstError: probeFirstError } : {}),
          },
        }
      : {}),
  };
}

// ---------- the peer's model folder (Hugging Face layout, symlinks) ----------

/** `<dir>/<id>/{config.json, tokenizer.json, tokenizer_config.json, onnx/model.onnx}` for transformers.js. */
export function hfLayout(modelDir: string, id: string): string {
  const root = path.join(SCRATCH_DIR, 'hf');
  const d = path.join(root, id);
  mkdirSync(path.join(d, 'onnx'), { recursive: true });
  symlinkSync(path.join(modelDir, 'config.json'), path.join(d, 'config.json'));
  symlinkSync(path.join(modelDir, 'tokenizer.json'), path.join(d, 'tokenizer.json'));
  symlinkSync(path.join(modelDir, 'model.onnx'), path.join(d, 'onnx', 'model.onnx'));
  writeFileSync(
    path.join(d, 'tokenizer_config.json'),
    JSON.stringify({
      tokenizer_class: 'BertTokenizer',
      do_lower_case: true,
      model_max_length: 512,
      cls_token: '[CLS]',
      sep_token: '[SEP]',
      pad_token: '[PAD]',
      unk_token: '[UNK]',
      mask_token: '[MASK]',
    }),
  );
  return root;
}

export { peakRss };
