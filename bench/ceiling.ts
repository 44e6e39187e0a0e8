/**
 * The ceiling: raw onnxruntime-node `InferenceSession.run()` in this process, with the session
 * options the service's workers use, on tokenised bench sentences padded per batch. No HTTP, no
 * GraphQL, no cache, no worker messages: what the model alone can do on this machine.
 *
 * Also measures the per-item work the service does on its main thread besides inference (cache key,
 * tokenisation, building the int64 feeds the way the batcher does), to explain the gap to the ceiling.
 */
import * as ort from 'onnxruntime-node';
import { cacheKey, contentHash, normaliseText } from '../src/cache/keys.ts';
import type { WordTokenizer } from '../src/runtime/tokenizer.ts';
import type { SentenceSource } from './corpus.ts';
import { machineCpuSeconds } from './service.ts';

/** One ONNX Runtime session configuration the ceiling is measured with. */
export interface CeilingSession {
  label: string;
  intraOpThreads: number;
  /** `session.intra_op.allow_spinning = 0`: idle intra-op threads block instead of spinning. */
  noSpin: boolean;
}

export interface CeilingRow {
  session: string;
  intraOpThreads: number;
  noSpin: boolean;
  batchSize: number;
  runs: number;
  items: number;
  seconds: number;
  itemsPerS: number;
  /** Items/s of each interleaved round. */
  roundsItemsPerS: number[];
  /** Median wall time of one run() call. */
  runMsP50: number;
  /** CPU of the bench process while this cell ran, in cores (includes any spinning ORT thread). */
  cpuCores: number;
  /** CPU of every other process on the machine meanwhile, in cores (other tenants of the shared box). */
  othersCores: number;
  /** Mean padded length (tokens per row) of the batches used. */
  meanPaddedLen: number;
  /** Real (unpadded) tokens / padded tokens. */
  fill: number;
}

export interface HostCost {
  step: string;
  usPerItem: number;
  /** Items per second one core could do of this step alone. */
  itemsPerS: number;
}

export interface CeilingResult {
  rows: CeilingRow[];
  best: CeilingRow;
  rounds: number;
  cellMsPerRound: number;
  sessionCreateMs: Record<string, number>;
  hostCosts: HostCost[];
  meanTokens: number;
}

export interface CeilingOptions {
  modelPath: string;
  tokenizer: WordTokenizer;
  corpus: SentenceSource;
  batchSizes: number[];
  sessions: CeilingSession[];
  /** Timed duration per (session, batch size) cell, split over `rounds` interleaved rounds. */
  cellMs: number;
  rounds: number;
  /** Untimed warm-up per cell and round. */
  warmupMs: number;
  /** Sentences used for the host-cost measurements. */
  hostItems: number;
  /** Distinct tokenised sentences the batches are cut from (default: max(2048, 8 × the largest batch)). */
  poolSize?: number;
  log: (line: string) => void;
  /** Throws when the bench is being aborted. */
  checkAbort: () => void;
}

interface Prepared {
  feeds: Record<string, ort.Tensor>;
  paddedLen: number;
  realTokens: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor((s.length - 1) / 2)]!;
}

/** Pads encodings into [n, t] int64 ids and mask, as the batcher does. */
function buildFeeds(encs: { ids: number[]; mask: number[] }[]): Prepared {
  const n = encs.length;
  const t = Math.max(1, ...encs.map((e) => e.ids.length));
  const ids = new BigInt64Array(n * t);
  const mask = new BigInt64Array(n * t);
  let real = 0;
  encs.forEach((e, r) => {
    for (let j = 0; j < e.ids.length; j++) {
      ids[r * t + j] = BigInt(e.ids[j]!);
      mask[r * t + j] = BigInt(e.mask[j]!);
    }
    real += e.ids.length;
  });
  return {
    feeds: { input_ids: new ort.Tensor('int64', ids, [n, t]), attention_mask: new ort.Tensor('int64', mask, [n, t]) },
    paddedLen: t,
    realTokens: real,
  };
}

export async function measureCeiling(o: CeilingOptions): Promise<CeilingResult> {
  // One pool of tokenised sentences, reused by every cell so the cells differ only in batch size/session.
  const poolSize = Math.max(o.poolSize ?? 2048, Math.max(...o.batchSizes) * 8);
  const encs = o.corpus.take(poolSize).map((s) => o.tokenizer.encode(s));
  const meanTokens = encs.reduce((s, e) => s + e.ids.length, 0) / encs.length;
  const prepared = new Map<number, Prepared[]>();
  for (const b of o.batchSizes) {
    const nBatches = Math.max(4, Math.floor(poolSize / b));
    const batches: Prepared[] = [];
    for (let i = 0; i < nBatches; i++) {
      const start = (i * b) % poolSize;
      batches.push(buildFeeds(encs.slice(start, start + b)));
    }
    prepared.set(b, batches);
  }

  // Every session is created first, then the cells are measured in interleaved rounds (rotating the
  // session order), so drift from other tenants of this machine spreads over all cells alike.
  const sessionCreateMs: Record<string, number> = {};
  const sessions: { spec: CeilingSession; session: ort.InferenceSession; output: string }[] = [];
  try {
    for (const spec of o.sessions) {
      o.checkAbort();
      const t0 = performance.now();
      // The options of src/runtime/worker.ts, so the ceiling is the service's own session.
      const session = await ort.InferenceSession.create(o.modelPath, {
        executionProviders: ['cpu'],
        intraOpNumThreads: spec.intraOpThreads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
        executionMode: 'sequential',
        ...(spec.noSpin ? { extra: { session: { intra_op: { allow_spinning: '0' } } } } : {}),
      });
      sessionCreateMs[spec.label] = Math.round(performance.now() - t0);
      sessions.push({ spec, session, output: session.outputNames[0]! });
    }
    type Acc = { runs: number; items: number; ms: number; cpuS: number; machineS: number; padded: number; real: number; times: number[]; rounds: number[] };
    const acc = new Map<string, Acc>();
    const cellMs = o.cellMs / o.rounds;
    for (let round = 0; round < o.rounds; round++) {
      for (const b of o.batchSizes) {
        const batches = prepared.get(b)!;
        for (let si = 0; si < sessions.length; si++) {
          o.checkAbort();
          const { spec, session, output } = sessions[(si + round) % sessions.length]!;
          const key = `${spec.label}|${b}`;
          const a = acc.get(key) ?? { runs: 0, items: 0, ms: 0, cpuS: 0, machineS: 0, padded: 0, real: 0, times: [], rounds: [] };
          acc.set(key, a);
          let k = round * 7;
          const warmEnd = performance.now() + o.warmupMs;
          for (let i = 0; i < 3 || performance.now() < warmEnd; i++) await session.run(batches[k++ % batches.length]!.feeds, [output]);
          const cpu0 = process.cpuUsage();
          const m0 = machineCpuSeconds().busy;
          const start = performance.now();
          let now = start;
          let runs = 0;
          while (now - start < cellMs || runs < 5) {
            const p = batches[k++ % batches.length]!;
            const r0 = performance.now();
            const out = await session.run(p.feeds, [output]);
            now = performance.now();
            runs++;
            a.times.push(now - r0);
            a.padded += p.paddedLen * b;
            a.real += p.realTokens;
            if (out[output]!.dims[0] !== b) throw new Error(`ceiling: unexpected output shape ${JSON.stringify(out[output]!.dims)}`);
          }
          const cpu = process.cpuUsage(cpu0);
          a.machineS += machineCpuSeconds().busy - m0;
          a.runs += runs;
          a.items += runs * b;
          a.ms += now - start;
          a.cpuS += (cpu.user + cpu.system) / 1e6;
          a.rounds.push((runs * b * 1000) / (now - start));
        }
      }
    }
    const rows: CeilingRow[] = [];
    for (const { spec } of sessions) {
      for (const b of o.batchSizes) {
        const a = acc.get(`${spec.label}|${b}`)!;
        const seconds = a.ms / 1000;
        const row: CeilingRow = {
          session: spec.label,
          intraOpThreads: spec.intraOpThreads,
          noSpin: spec.noSpin,
          batchSize: b,
          runs: a.runs,
          items: a.items,
          seconds,
          itemsPerS: a.items / seconds,
          roundsItemsPerS: a.rounds.map((x) => Math.round(x)),
          runMsP50: median(a.times),
          cpuCores: a.cpuS / seconds,
          othersCores: Math.max(0, (a.machineS - a.cpuS) / seconds),
          meanPaddedLen: a.padded / a.items,
          fill: a.real / a.padded,
        };
        rows.push(row);
        o.log(
          `  ceiling ${spec.label.padEnd(16)} batch=${String(b).padStart(3)}: ${Math.round(row.itemsPerS).toLocaleString('en-US').padStart(9)} items/s ` +
            `(run p50 ${row.runMsP50.toFixed(3)} ms, ${row.cpuCores.toFixed(2)} cores, others ${row.othersCores.toFixed(2)}, rounds ${row.roundsItemsPerS.map((x) => x.toLocaleString('en-US')).join(' / ')})`,
        );
      }
    }
    // The ceiling is the best cell of the session options the service can run (it never disables spinning).
    const eligible = rows.filter((r) => !r.noSpin);
    const best = eligible.reduce((a, r) => (r.itemsPerS > a.itemsPerS ? r : a), eligible[0] ?? rows[0]!);
    return { rows, best, rounds: o.rounds, cellMsPerRound: cellMs, sessionCreateMs, hostCosts: measureHostCosts(o), meanTokens };
  } finally {
    for (const s of sessions) await s.session.release();
  }
}

/** Per-item main-thread work of a cache miss in the service, step by step, on one core. */
function measureHostCosts(o: CeilingOptions): HostCost[] {
  const texts = o.corpus.take(o.hostItems);
  const time = (step: string, f: () => void): HostCost => {
    f(); // warm-up (JIT)
    const t0 = performance.now();
    f();
    const us = ((performance.now() - t0) * 1000) / texts.length;
    return { step, usPerItem: us, itemsPerS: 1e6 / us };
  };
  let sink = 0;
  const key = time('normalise + sha256 cache key', () => {
    for (const t of texts) sink += cacheKey('text-glove', 'v', contentHash(normaliseText(t))).length;
  });
  const tok = time('WordTokenizer.encode', () => {
    for (const t of texts) sink += o.tokenizer.encode(t).ids.length;
  });
  const encs = texts.map((t) => o.tokenizer.encode(t));
  const feed = time('int64 feed build (batcher loop, batches of 64)', () => {
    for (let i = 0; i < encs.length; i += 64) sink += buildFeeds(encs.slice(i, i + 64)).realTokens;
  });
  if (sink === 0) throw new Error('unreachable');
  return [key, tok, feed];
}
