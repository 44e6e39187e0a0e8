/**
 * The issue-7 section of `npm run bench`: ceiling, Polyray (batched), naive (batching off), the peer, the
 * mixed-length workload, responsiveness and memory, for `text-bert-synthetic`. See bench/transformer.ts.
 */
import path from 'node:path';
import { packageVersion } from './conditions.ts';
import { scrapeBatchMetrics } from './load.ts';
import type { ServiceProcess } from './service.ts';
import { effectiveSettings, modelsFolder } from './service.ts';
import {
  BERT,
  BertCorpus,
  bertCeiling,
  cosine,
  hfLayout,
  peakRss,
  peerTarget,
  polyrayTarget,
  runLoad,
  vectorsOf,
  type BertCeilingResult,
  type LoadResult,
  type Target,
} from './transformer.ts';

export interface TransformerPlan {
  ceiling: {
    seqs: number[];
    batchSizes: number[];
    threads: { intra: number; spin: boolean }[];
    cellMs: number;
    minRuns: number;
    variantRounds: number;
    variantBatch?: number;
    variantIntra?: number;
    variantSpin?: boolean;
    cosineSamples: number;
    mixedTexts: number;
    mixedRounds: number;
  };
  seqs: number[];
  concurrency: number[];
  /** Peer micro-batching measured at these N (at N=1 both modes are the same call). */
  peerBatchedConcurrency: number[];
  mixedConcurrency: number;
  mixedRange: [number, number];
  probeConcurrency: number;
  probeRatePerS: number;
  warmup: (seq: number | 'mixed', n: number) => number;
  /** A Polyray server with POLYRAY_BATCH_MAX_TOKENS set to this (small batches), measured on the N=64 seq-max and mixed rows. */
  tunedMaxTokens?: number;
  duration: (seq: number | 'mixed', n: number) => number;
}

export interface ServerInfo {
  label: string;
  kind: 'polyray' | 'polyray-naive' | 'peer';
  env: Record<string, string>;
  startupMs: number;
  peakRssMiB: number;
  description: string;
}

export interface TransformerResults {
  model: string;
  ceiling: BertCeilingResult;
  servers: ServerInfo[];
  loads: LoadResult[];
  peer: {
    library: string;
    version: string;
    kind: 'transformers' | 'ort';
    note: string;
    cosineVsPolyray: { min: number; samples: number };
    bestMode: Record<string, string>;
  };
  corpus: string;
  errors: string[];
}

export interface TransformerDeps {
  root: string;
  plan: TransformerPlan;
  start: (label: string, env: Record<string, string>, script?: string) => Promise<ServiceProcess>;
  log: (s: string) => void;
  checkAbort: () => void;
}

function logLoad(log: (s: string) => void, r: LoadResult): void {
  log(
    `  ${r.server.padEnd(22)} ${r.workload.padEnd(7)} N=${String(r.concurrency).padEnd(3)} ${r.itemsPerS.toFixed(1).padStart(7)} items/s  p50 ${r.latencyMs.p50.toFixed(1)} ms  p99 ${r.latencyMs.p99.toFixed(1)} ms  errors ${r.errors}` +
      `${r.unexpectedSource ? `  UNEXPECTED ${r.unexpectedSource}` : ''}${r.firstError ? ` (${r.firstError})` : ''}` +
      (r.probe ? `  | probe ${r.probe.answered}/${r.probe.sent} p50 ${r.probe.latencyMs.p50.toFixed(1)} ms p99 ${r.probe.latencyMs.p99.toFixed(1)} ms` : ''),
  );
}

export async function runTransformerSection(d: TransformerDeps): Promise<TransformerResults> {
  const { plan: P, log, checkAbort } = d;
  const modelDir = path.join(d.root, 'models', BERT);
  const corpus = await BertCorpus.load(path.join(modelDir, 'tokenizer.json'));
  const errors: string[] = [];

  log(`issue 7: ${BERT} ceiling (raw run(), thread settings × batch sizes)`);
  const ceiling = await bertCeiling({
    modelsDir: path.join(d.root, 'models'),
    corpus,
    seqs: P.ceiling.seqs,
    batchSizes: P.ceiling.batchSizes,
    threads: P.ceiling.threads,
    cellMs: P.ceiling.cellMs,
    minRuns: P.ceiling.minRuns,
    variantSeq: Math.max(...P.ceiling.seqs),
    variantRounds: P.ceiling.variantRounds,
    ...(P.ceiling.variantBatch ? { variantBatch: P.ceiling.variantBatch } : {}),
    ...(P.ceiling.variantIntra ? { variantIntra: P.ceiling.variantIntra } : {}),
    ...(P.ceiling.variantSpin !== undefined ? { variantSpin: P.ceiling.variantSpin } : {}),
    cosineSamples: P.ceiling.cosineSamples,
    mixed: { range: P.mixedRange, texts: P.ceiling.mixedTexts, maxTokens: effectiveSettings({}).batching.maxTokens, rounds: P.ceiling.mixedRounds },
    log,
    checkAbort,
  });

  // The three servers start together (start-up is mostly I/O and session creation), then are driven one at a time.
  const dir = modelsFolder(d.root, 'models-bert', [BERT]);
  const hf = hfLayout(modelDir, BERT);
  const svcEnv = { POLYRAY_MODELS_DIR: dir, POLYRAY_SERVE_MODELS: BERT };
  const defs: { label: string; kind: ServerInfo['kind']; env: Record<string, string>; script?: string; description: string }[] = [
    { label: 'polyray', kind: 'polyray', env: svcEnv, description: 'Polyray, service defaults (dynamic batching on)' },
    {
      label: 'polyray naive',
      kind: 'polyray-naive',
      env: { ...svcEnv, POLYRAY_BATCH_MAX_ITEMS: '1' },
      description: 'Polyray with POLYRAY_BATCH_MAX_ITEMS=1 (batching off)',
    },
    ...(P.tunedMaxTokens
      ? [
          {
            label: `polyray maxTokens=${P.tunedMaxTokens}`,
            kind: 'polyray' as const,
            env: { ...svcEnv, POLYRAY_BATCH_MAX_TOKENS: String(P.tunedMaxTokens) },
            description: `Polyray with POLYRAY_BATCH_MAX_TOKENS=${P.tunedMaxTokens} (an alternative to the default; measured, not applied)`,
          },
        ]
      : []),
    {
      label: 'peer',
      kind: 'peer',
      env: { PEER_KIND: 'transformers', PEER_HF_DIR: hf, PEER_HF_ID: BERT, PEER_BATCH_MAX: '8' },
      script: 'bench/peer-server.ts',
      description: `transformers.js ${packageVersion(d.root, '@huggingface/transformers')} in a node:http server (bench/peer-server.ts)`,
    },
  ];
  let peerKind: 'transformers' | 'ort' = 'transformers';
  let peerNote =
    "transformers.js feature-extraction pipeline (its tokenizer + model, local files only), reading the graph's own pooled, normalised `embedding` output";
  const started = await Promise.allSettled(defs.map((x) => d.start(x.label, x.env, x.script)));
  const svcs = new Map<string, ServiceProcess>();
  started.forEach((s, i) => {
    if (s.status === 'fulfilled') svcs.set(defs[i]!.label, s.value);
    else errors.push(`${defs[i]!.label} did not start: ${String((s.reason as Error)?.message ?? s.reason).slice(0, 500)}`);
  });
  if (!svcs.has('peer')) {
    // Fallback: the raw ORT session behind the same minimal server, one run per request.
    peerKind = 'ort';
    peerNote = `transformers.js could not be started (${errors.at(-1) ?? '?'}); fallback: raw onnxruntime-node session + Polyray's WordPiece tokenizer behind the same node:http server`;
    defs[defs.length - 1]!.env = { PEER_KIND: 'ort', PEER_MODEL_DIR: modelDir, PEER_BATCH_MAX: '8' };
    defs[defs.length - 1]!.description = 'naive Node server: raw onnxruntime-node session, default options (bench/peer-server.ts PEER_KIND=ort)';
    try {
      svcs.set('peer', await d.start('peer (ort)', defs[defs.length - 1]!.env, 'bench/peer-server.ts'));
    } catch (e) {
      errors.push(`peer fallback did not start: ${(e as Error).message.slice(0, 500)}`);
    }
  }
  const servers: ServerInfo[] = [];
  const loads: LoadResult[] = [];
  let cosMin = NaN;
  let cosN = 0;
  const bestMode: Record<string, string> = {};
  try {
    const poly = svcs.get('polyray');
    const naive = svcs.get('polyray naive');
    const peer = svcs.get('peer');
    // Same vectors? (Polyray and the peer on the same texts.)
    if (poly && peer) {
      const texts = [corpus.text(16), corpus.text(128), corpus.text(40)];
      const [a, b] = await Promise.all([vectorsOf(poly.url, 'polyray', texts), vectorsOf(peer.url, 'peer', texts)]);
      const cs = a.map((v, i) => (b[i] ? cosine(v, b[i]) : NaN));
      cosMin = Math.min(...cs);
      cosN = cs.length;
      log(`  peer vs Polyray vectors: min cosine ${cosMin.toFixed(6)} over ${cosN} texts`);
    }
    const run = async (
      server: string,
      svc: ServiceProcess | undefined,
      target: (s: ServiceProcess) => Target,
      workload: number | 'mixed',
      n: number,
      expected: string,
      probe?: { target: Target; texts: string[]; expected: string },
    ): Promise<LoadResult | undefined> => {
      if (!svc?.alive) return undefined;
      const next = workload === 'mixed' ? () => corpus.mixed(P.mixedRange[0], P.mixedRange[1]) : () => corpus.text(workload);
      const before = server.startsWith('polyray') && svc ? await scrapeBatchMetrics(svc.url, BERT) : undefined;
      const r = await runLoad(
        {
          server,
          workload: workload === 'mixed' ? 'mixed' : `seq${workload}`,
          concurrency: n,
          warmupMs: P.warmup(workload, n),
          durationMs: P.duration(workload, n),
        },
        { target: target(svc), nextText: next, pid: svc.pid, expected, checkAbort, ...(probe ? { probe: { ...probe, ratePerS: P.probeRatePerS } } : {}) },
      );
      const after = before ? await scrapeBatchMetrics(svc.url, BERT) : undefined;
      if (before && after && after.sizeCount > before.sizeCount) {
        const count = after.sizeCount - before.sizeCount;
        r.batches = { count, meanSize: (after.sizeSum - before.sizeSum) / count, meanRunMs: ((after.secondsSum - before.secondsSum) * 1000) / count };
      }
      loads.push(r);
      logLoad(log, r);
      return r;
    };
    const polyT = (s: ServiceProcess): Target => polyrayTarget(s.url);
    const single = (s: ServiceProcess): Target => peerTarget(s.url, '/embed');
    const batched = (s: ServiceProcess): Target => peerTarget(s.url, '/embed-batched');
    log(`issue 7: cache misses, ${BERT}`);
    for (const seq of P.seqs) {
      for (const n of P.concurrency) {
        await run('polyray', poly, polyT, seq, n, 'COMPUTED');
        await run('polyray naive', naive, polyT, seq, n, 'COMPUTED');
        await run('peer, 1 call/request', peer, single, seq, n, 'COMPUTED');
        if (P.peerBatchedConcurrency.includes(n)) await run('peer, micro-batched', peer, batched, seq, n, 'COMPUTED');
      }
    }
    // The peer's best mode per workload, from the highest-N rows measured in both modes.
    const peerBest = (workload: string): Target => {
      const rows = loads.filter((l) => l.workload === workload && l.server.startsWith('peer'));
      const nMax = Math.max(...rows.filter((l) => l.server === 'peer, micro-batched').map((l) => l.concurrency), -1);
      const b = rows.find((l) => l.server === 'peer, micro-batched' && l.concurrency === nMax);
      const s = rows.find((l) => l.server === 'peer, 1 call/request' && l.concurrency === nMax);
      const useBatched = !!b && (!s || b.itemsPerS >= s.itemsPerS);
      bestMode[workload] = useBatched ? 'micro-batched' : '1 call/request';
      return peer ? (useBatched ? batched(peer) : single(peer)) : ((async () => ({ ok: false, sources: [] })) as Target);
    };
    log('issue 7: mixed lengths');
    const nm = P.mixedConcurrency;
    const tunedLabel = `polyray maxTokens=${P.tunedMaxTokens ?? 0}`;
    const tuned = svcs.get(tunedLabel);
    await run('polyray', poly, polyT, 'mixed', nm, 'COMPUTED');
    await run(tunedLabel, tuned, polyT, 'mixed', nm, 'COMPUTED');
    await run(tunedLabel, tuned, polyT, Math.max(...P.seqs), nm, 'COMPUTED');
    await run('peer, 1 call/request', peer, single, 'mixed', nm, 'COMPUTED');
    await run('peer, micro-batched', peer, batched, 'mixed', nm, 'COMPUTED');
    log('issue 7: responsiveness (memory-hit probe under saturating misses)');
    const probeTexts = Array.from({ length: 32 }, () => corpus.text(16));
    if (poly) {
      const w = await polyrayTarget(poly.url)(probeTexts.slice(0, 16));
      const w2 = await polyrayTarget(poly.url)(probeTexts.slice(16));
      if (!w.ok || !w2.ok) errors.push(`warming the probe texts failed: ${w.error ?? w2.error}`);
    }
    const longest = Math.max(...P.seqs);
    const peerProbeTarget = peerBest(`seq${longest}`);
    await run(
      'polyray',
      poly,
      polyT,
      longest,
      P.probeConcurrency,
      'COMPUTED',
      poly ? { target: polyrayTarget(poly.url), texts: probeTexts, expected: 'MEMORY' } : undefined,
    );
    await run(
      `peer, ${bestMode[`seq${longest}`]}`,
      peer,
      bestMode[`seq${longest}`] === 'micro-batched' ? batched : single,
      longest,
      P.probeConcurrency,
      'COMPUTED',
      { target: peerProbeTarget, texts: probeTexts, expected: 'COMPUTED' },
    );
    peerBest('mixed');
    for (const s of P.seqs) if (!bestMode[`seq${s}`]) peerBest(`seq${s}`);
    for (const [label, svc] of svcs) {
      const def = defs.find((x) => x.label === label) ?? defs[defs.length - 1]!;
      if (!svc.alive) errors.push(`${label} exited during the run:\n${svc.tail().slice(-1500)}`);
      servers.push({ label, kind: def.kind, env: def.env, startupMs: svc.startupMs, peakRssMiB: peakRss(svc.pid).hwmMiB, description: def.description });
    }
  } finally {
    await Promise.all([...svcs.values()].map((s) => s.stop()));
  }
  const tl = ceiling.tokenLengths;
  return {
    model: BERT,
    ceiling,
    servers,
    loads,
    peer: {
      library: peerKind === 'transformers' ? '@huggingface/transformers' : 'onnxruntime-node',
      version: packageVersion(d.root, peerKind === 'transformers' ? '@huggingface/transformers' : 'onnxruntime-node'),
      kind: peerKind,
      note: peerNote,
      cosineVsPolyray: { min: cosMin, samples: cosN },
      bestMode,
    },
    corpus:
      `unique sentences of whole words of the BERT uncased vocabulary (Zipf over id order), built to a WordPiece length; measured with src/runtime/wordpiece.ts: ` +
      Object.entries(tl)
        .map(([k, v]) => `${k} ${v.min}–${v.max} (mean ${v.mean.toFixed(1)})`)
        .join(', ') +
      `; mixed: uniform ${P.mixedRange[0]}–${P.mixedRange[1]} tokens`,
    errors,
  };
}
