/**
 * `npm run bench` — one run measures, for `text-glove`:
 *   1. the ceiling: raw onnxruntime-node `InferenceSession.run()` over batch sizes × intra-op threads;
 *   2. the real service (child process, HTTP GraphQL): cache-miss throughput and latency at N = 1, 16,
 *      64 concurrent clients, plus 16 inputs per request at N = 16;
 *   3. memory-hit throughput and latency at N = 1, 16, 64;
 *   4. (full mode) the service restarted with alternative settings, cache misses only, against the
 *      defaults rerun the same way;
 * and writes `RESULTS.md` and `results.json` (to `bench/` or `--out DIR`) and a table to stdout.
 * Progress goes to stderr.
 *
 * Options: --quick (short smoke run), --out DIR, --no-variants, --set KEY=VALUE (service environment
 * for the main run, repeatable), --help.
 *
 * Bounded: every phase has a fixed duration, and a watchdog ends the run (killing the service) if it
 * overruns. The service child is killed on normal exit, error, SIGINT and SIGTERM.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WordTokenizer } from '../src/runtime/tokenizer.ts';
import { measureCeiling, type CeilingSession } from './ceiling.ts';
import { gitState, hostInfo, loadAvg, packageVersion, type Conditions } from './conditions.ts';
import { SentenceSource } from './corpus.ts';
import { embed, mergeRounds, runPhase, type ClientKind, type PhaseRun } from './load.ts';
import { markdownReport, stdoutReport, type BenchResults, type ServiceRun, type ServiceSettings } from './report.ts';
import { phaseLabel } from './tables.ts';
import {
  childEnv,
  cpuSnapshot,
  peakRss,
  cpuUse,
  effectiveSettings,
  freePort,
  removeScratch,
  removeStaleScratch,
  ServiceProcess,
  pinSingleModel,
} from './service.ts';
import { measureGlobalHits } from './global-hit.ts';
import { keptSections } from './hf-report.ts';
import { runTransformerSection, type TransformerPlan, type TransformerResults } from './transformer-run.ts';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));

/** Writes RESULTS.md, keeping the sections `npm run bench:hf` and `bench:rest` wrote there (bench/hf-report.ts). */
function writeResults(file: string, markdown: string): void {
  const kept = keptSections(file);
  writeFileSync(file, kept ? `${markdown.trimEnd()}\n\n${kept}\n` : markdown);
}
const ROOT = path.resolve(BENCH_DIR, '..');
const MODEL = 'text-glove';

interface Args {
  /** Re-render RESULTS.md and the stdout tables from this results.json, measuring nothing. */
  render?: string;
  quick: boolean;
  allModels: boolean;
  out: string;
  variants: boolean;
  set: Record<string, string>;
  noTransformer: boolean;
  noRedis: boolean;
  redisUrl: string;
}

function usage(): string {
  return `usage: npm run bench -- [--quick] [--out DIR] [--no-variants] [--set KEY=VALUE ...]
  --quick         smoke run: short phases, fewer batch sizes, no variants (< 60 s)
  --out DIR       where RESULTS.md and results.json go (default: bench/, or bench/out/quick/ with --quick)
  --no-variants   skip the alternative-settings runs (full mode runs them by default)
  --all-models    services load every model of models/ (default: text-glove only, the model measured)
  --render FILE   measure nothing: rewrite RESULTS.md (in --out, default: FILE's folder) from a results.json
  --set KEY=VAL   extra service environment for the main run, e.g. --set POLYRAY_BATCH_MAX_WAIT_US=0
  --no-transformer  skip the issue-7 section (text-bert-synthetic: ceiling, naive baseline, peer, mixed, probe, memory)
  --no-redis      skip the GLOBAL-hit row (issue 3)
  --redis URL     Redis for the GLOBAL-hit row (default: $REDIS_URL or redis://127.0.0.1:6379; keys under a unique prefix, deleted after)`;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    quick: false,
    allModels: false,
    out: '',
    variants: true,
    set: {},
    noTransformer: false,
    noRedis: false,
    redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
  };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${x} needs a value\n${usage()}`);
      return v;
    };
    if (x === '--quick') a.quick = true;
    else if (x === '--no-variants') a.variants = false;
    else if (x === '--all-models') a.allModels = true;
    else if (x === '--no-transformer') a.noTransformer = true;
    else if (x === '--no-redis') a.noRedis = true;
    else if (x === '--redis') a.redisUrl = value();
    else if (x === '--render') a.render = path.resolve(value());
    else if (x === '--out') a.out = path.resolve(value());
    else if (x.startsWith('--out=')) a.out = path.resolve(x.slice(6));
    else if (x === '--set' || x.startsWith('--set=')) {
      const kv = x === '--set' ? value() : x.slice(6);
      const eq = kv.indexOf('=');
      if (eq < 1) throw new Error(`--set expects KEY=VALUE, received "${kv}"`);
      a.set[kv.slice(0, eq)] = kv.slice(eq + 1);
    } else if (x === '--help' || x === '-h') {
      console.log(usage());
      process.exit(0);
    } else throw new Error(`unknown option ${x}\n${usage()}`);
  }
  if (a.quick) a.variants = false;
  if (a.render && !a.out) a.out = path.dirname(a.render);
  // A smoke run must not overwrite the figures of the last full run.
  if (!a.out) a.out = a.quick ? path.join(BENCH_DIR, 'out', 'quick') : BENCH_DIR;
  return a;
}

// ---------- plan ----------

interface Plan {
  ceiling: { batchSizes: number[]; sessions: CeilingSession[]; cellMs: number; rounds: number; warmupMs: number; hostItems: number; poolSize?: number };
  missConcurrency: number[];
  batched: { concurrency: number; inputs: number };
  memoryConcurrency: number[];
  memorySet: number;
  warmupMs: number;
  durationMs: number;
  variantPhases: { concurrency: number; inputs: number }[];
  variantRounds: number;
  variantWarmupMs: number;
  variantDurationMs: number;
  watchdogMs: number;
  /** Issue 7 (text-bert-synthetic); undefined = skipped. */
  transformer?: TransformerPlan;
  /** Issue 3: GLOBAL hits (needs Redis). */
  globalHit?: { concurrency: number; warmTexts: number; warmupMs: number; durationMs: number };
}

const CEILING_SESSIONS: CeilingSession[] = [
  { label: 'intra=1', intraOpThreads: 1, noSpin: false },
  { label: 'intra=2', intraOpThreads: 2, noSpin: false },
  { label: 'intra=2 no-spin', intraOpThreads: 2, noSpin: true },
];

function plan(quick: boolean): Plan {
  return quick
    ? {
        ceiling: { batchSizes: [1, 32, 256], sessions: CEILING_SESSIONS, cellMs: 200, rounds: 1, warmupMs: 40, hostItems: 5000 },
        missConcurrency: [1, 16, 64],
        batched: { concurrency: 16, inputs: 16 },
        memoryConcurrency: [1, 16, 64],
        memorySet: 1024,
        warmupMs: 250,
        durationMs: 1500,
        variantPhases: [],
        variantRounds: 0,
        variantWarmupMs: 0,
        variantDurationMs: 0,
        watchdogMs: 150_000,
        transformer: {
          ceiling: {
            seqs: [16, 128],
            batchSizes: [1, 4],
            threads: [{ intra: 2, spin: true }],
            cellMs: 120,
            minRuns: 1,
            variantRounds: 1,
            cosineSamples: 8,
            mixedTexts: 48,
            mixedRounds: 1,
          },
          seqs: [16],
          concurrency: [16],
          peerBatchedConcurrency: [16],
          mixedConcurrency: 16,
          mixedRange: [8, 256],
          probeConcurrency: 16,
          probeRatePerS: 10,
          warmup: (seq) => (seq === 16 ? 400 : 800),
          duration: (seq) => (seq === 16 ? 1000 : 1500),
          tunedMaxTokens: 2048,
        },
        globalHit: { concurrency: 16, warmTexts: 1000, warmupMs: 150, durationMs: 500 },
      }
    : {
        ceiling: { batchSizes: [1, 8, 32, 64, 128, 256], sessions: CEILING_SESSIONS, cellMs: 600, rounds: 3, warmupMs: 40, hostItems: 20000, poolSize: 8192 },
        missConcurrency: [1, 16, 64],
        batched: { concurrency: 16, inputs: 16 },
        memoryConcurrency: [1, 16, 64],
        memorySet: 1024,
        warmupMs: 500,
        durationMs: 3500,
        variantPhases: [
          { concurrency: 1, inputs: 1 },
          { concurrency: 64, inputs: 1 },
        ],
        variantRounds: 2,
        variantWarmupMs: 250,
        variantDurationMs: 1000,
        watchdogMs: 480_000,
        transformer: {
          ceiling: {
            seqs: [16, 128],
            batchSizes: [1, 4, 8, 16, 32],
            threads: [
              { intra: 1, spin: false },
              { intra: 2, spin: false },
              { intra: 2, spin: true },
            ],
            cellMs: 500,
            minRuns: 2,
            variantRounds: 3,
            variantBatch: 8,
            variantIntra: 2,
            variantSpin: true,
            cosineSamples: 32,
            mixedTexts: 192,
            mixedRounds: 3,
          },
          seqs: [16, 128],
          concurrency: [1, 16, 64],
          peerBatchedConcurrency: [16, 64],
          mixedConcurrency: 64,
          mixedRange: [8, 256],
          probeConcurrency: 64,
          probeRatePerS: 40,
          // seq 128 at N=64 answers in seconds: the warm-up must cover the first full queue.
          warmup: (seq, n) => (seq === 16 || n === 1 ? 1000 : n >= 64 ? 3000 : 1500),
          duration: (seq, n) => (seq === 16 || n === 1 ? 3000 : 4500),
          tunedMaxTokens: 2048,
        },
        globalHit: { concurrency: 16, warmTexts: 16384, warmupMs: 300, durationMs: 3000 },
      };
}

/**
 * Alternatives measured (never applied) in full mode, all running at once and driven in interleaved
 * rounds; `default (repeat)` is the baseline they are compared with. `default, http client` is the
 * same service process driven by the cheaper node:http client.
 */
const VARIANTS: { label: string; env: Record<string, string>; client: ClientKind }[] = [
  { label: 'default (repeat)', env: {}, client: 'fetch' },
  { label: 'default, http client', env: {}, client: 'http' },
  // POLYRAY_BATCH_MAX_WAIT_US now defaults to 0: the old default (2000) is the alternative.
  { label: 'maxWait=2000', env: { POLYRAY_BATCH_MAX_WAIT_US: '2000' }, client: 'fetch' },
  { label: 'intra=1', env: { POLYRAY_INTRA_OP_THREADS: '1' }, client: 'fetch' },
  { label: 'intra=1 maxWait=500', env: { POLYRAY_INTRA_OP_THREADS: '1', POLYRAY_BATCH_MAX_WAIT_US: '500' }, client: 'fetch' },
  { label: 'workers=2 intra=1', env: { POLYRAY_WORKERS: '2', POLYRAY_INTRA_OP_THREADS: '1' }, client: 'fetch' },
];

// ---------- lifecycle: the child is killed whatever happens ----------

const children = new Set<ChildProcess>();
let aborted: string | undefined;

function checkAbort(): void {
  if (aborted) throw new Error(`aborted: ${aborted}`);
}

const running = (c: ChildProcess): boolean => c.exitCode === null && c.signalCode === null;

function killChildrenNow(): void {
  for (const c of children) if (running(c)) c.kill('SIGKILL');
}

function abort(reason: string, code: number): void {
  if (aborted) return;
  aborted = reason;
  log(`\n${reason}: stopping the service and exiting`);
  const live = [...children].filter(running);
  if (live.length === 0) process.exit(code);
  let left = live.length;
  for (const c of live) {
    c.once('exit', () => --left === 0 && process.exit(code));
    c.kill('SIGTERM');
  }
  setTimeout(() => {
    killChildrenNow();
    process.exit(code);
  }, 3000).unref();
}

process.on('exit', () => {
  killChildrenNow();
  removeScratch();
});
process.on('SIGINT', () => abort('SIGINT', 130));
process.on('SIGTERM', () => abort('SIGTERM', 143));

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

// ---------- service runs ----------

function settingsOf(env: Record<string, string>): ServiceSettings {
  const c = effectiveSettings(env);
  return {
    workers: c.inference.workers,
    intraOpThreads: c.inference.intraOpThreads,
    batchMaxItems: c.batching.maxItems,
    batchMaxTokens: c.batching.maxTokens,
    batchMaxWaitUs: c.batching.maxWaitUs,
    memoryCacheMb: c.cache.memory.maxBytes / 2 ** 20,
    nodeEnv: c.env,
  };
}

async function startService(label: string, overrides: Record<string, string>, script?: string): Promise<ServiceProcess> {
  checkAbort();
  const port = await freePort();
  log(
    `service [${label}] starting on 127.0.0.1:${port} (${
      Object.entries(overrides)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ') || 'defaults'
    })${script ? ` ${script}` : ''}`,
  );
  const svc = await ServiceProcess.start(
    ROOT,
    childEnv(overrides, port),
    port,
    90_000,
    (c) => {
      children.add(c);
      c.once('exit', () => children.delete(c));
    },
    script,
  );
  log(`  [${label}] ready in ${Math.round(svc.startupMs)} ms (pid ${String(svc.pid)})`);
  return svc;
}

async function withService(
  label: string,
  overrides: Record<string, string>,
  body: (svc: ServiceProcess, run: ServiceRun) => Promise<void>,
): Promise<ServiceRun> {
  const run: ServiceRun = { label, overrides, settings: settingsOf(childEnv(overrides, 0)), client: 'fetch', startupMs: NaN, phases: [] };
  const svc = await startService(label, overrides);
  try {
    run.startupMs = svc.startupMs;
    await body(svc, run);
    if (!svc.alive) throw new Error(`service exited during the run:\n${svc.tail()}`);
    run.peakRssMiB = peakRss(svc.pid).hwmMiB;
  } finally {
    await svc.stop();
  }
  return run;
}

function logPhase(label: string, p: PhaseRun['result']): void {
  log(
    `  ${label} ${phaseLabel(p).padEnd(22)} ${Math.round(p.itemsPerS).toLocaleString('en-US').padStart(8)} items/s  ${Math.round(p.reqPerS).toLocaleString('en-US').padStart(7)} req/s  ` +
      `p50 ${p.latencyMs.p50.toFixed(2)} ms  p99 ${p.latencyMs.p99.toFixed(2)} ms  errors ${p.errors}${p.unexpectedSource ? `  UNEXPECTED SOURCES ${p.unexpectedSource}` : ''}` +
      `${p.firstError ? `  (${p.firstError})` : ''}`,
  );
}

// ---------- main ----------

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.render) {
    const results = JSON.parse(readFileSync(args.render, 'utf8')) as BenchResults;
    if (results.schema !== 'polyray-bench/1') throw new Error(`${args.render} is not a polyray-bench/1 results file`);
    mkdirSync(args.out, { recursive: true });
    writeResults(path.join(args.out, 'RESULTS.md'), markdownReport(results));
    console.log(stdoutReport(results));
    log(`\nwrote ${path.join(args.out, 'RESULTS.md')} from ${args.render} (figures of ${results.conditions.startedAt})`);
    return;
  }
  const P = plan(args.quick);
  const watchdog = setTimeout(() => abort(`watchdog: the bench exceeded ${P.watchdogMs / 1000} s`, 2), P.watchdogMs);
  watchdog.unref();
  const t0 = performance.now();

  const modelDir = path.join(ROOT, 'models', MODEL);
  const manifestPath = path.join(modelDir, 'manifest.json');
  if (!existsSync(manifestPath)) throw new Error(`${manifestPath} is missing: run \`npm run models:build\` first`);
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as {
    name: string;
    version: string;
    dimensions: number;
    file: string;
    tokenizer: { file: string; lowercase: boolean };
  };
  const modelPath = path.join(modelDir, manifest.file);
  const vocabPath = path.join(modelDir, manifest.tokenizer.file);
  const base64Length = 4 * Math.ceil((manifest.dimensions * 4) / 3);

  const conditions: Conditions = {
    startedAt: new Date().toISOString(),
    mode: args.quick ? 'quick' : 'full',
    host: hostInfo(),
    nodeVersion: process.version,
    onnxruntimeNodeVersion: packageVersion(ROOT, 'onnxruntime-node'),
    model: { name: manifest.name, version: manifest.version, dimensions: manifest.dimensions, onnxBytes: statSync(modelPath).size },
    loadAvgBefore: loadAvg(),
    client: `Node ${process.version} global fetch (bundled undici, keep-alive), closed loop, in the bench process${existsSync(path.join(ROOT, 'node_modules', 'undici')) ? '' : ' (no undici package installed)'}`,
    corpus: `sentences of 8–40 tokens (uniform), Zipf-distributed words from the model vocabulary, unique by construction (bench/corpus.ts)`,
    git: gitState(ROOT),
    modelsLoaded: args.allModels
      ? `every model of models/ (${readdirSync(path.join(ROOT, 'models'), { withFileTypes: true })
          .filter((d) => d.isDirectory() && !d.name.startsWith('.'))
          .map((d) => d.name)
          .join(', ')})`
      : `${MODEL} only (a temporary models folder of symlinks to models/${MODEL}; --all-models loads them all)`,
    serviceEnv: `NODE_ENV=production POLYRAY_ALLOW_ANONYMOUS=true HOST=127.0.0.1 LOG_LEVEL=warn POLYRAY_BUILD_MISSING=false POLYRAY_TRACE_DIR=<temporary folder, removed after>${args.allModels ? '' : ' POLYRAY_MODELS_DIR=<temporary folder>'} (everything else: service defaults; inherited POLYRAY_*/REDIS_* variables are dropped)`,
  };
  log(`polyray bench (${conditions.mode}) — ${conditions.host.cpuModel}, ${conditions.host.cores} cores, load ${conditions.loadAvgBefore.join(' ')}`);
  // How busy is the machine without us? One second of /proc/stat before anything starts.
  {
    const a = cpuSnapshot(undefined);
    await new Promise((r) => setTimeout(r, 1000));
    const u = cpuUse(a, cpuSnapshot(undefined));
    conditions.othersCoresBefore = Math.round(Math.max(0, u.machine - u.bench) * 100) / 100;
    if (conditions.othersCoresBefore > 0.3) {
      log(
        `  warning: other processes are using ${conditions.othersCoresBefore} of ${conditions.host.availableParallelism} cores; every figure will be depressed (see the *others* columns)`,
      );
    }
  }

  removeStaleScratch();
  if (!args.allModels) pinSingleModel(ROOT, MODEL);
  const tokenizer = await WordTokenizer.load(vocabPath, { lowercase: manifest.tokenizer.lowercase });
  const corpus = await SentenceSource.fromVocab(vocabPath);

  // 1. Ceiling (nothing else of ours running).
  log('ceiling: raw InferenceSession.run()');
  const ceiling = await measureCeiling({ modelPath, tokenizer, corpus, ...P.ceiling, log, checkAbort });
  log(
    `  ceiling = ${Math.round(ceiling.best.itemsPerS).toLocaleString('en-US')} items/s (batch ${ceiling.best.batchSize}, intra ${ceiling.best.intraOpThreads})`,
  );

  const missTexts = (n: number): string[] => corpus.take(n);

  // 2./3. The service with its defaults (plus --set).
  const main = await withService('main', args.set, async (svc, run) => {
    // Sanity: a new text is COMPUTED, then MEMORY.
    const probe = corpus.take(1);
    const first = await embed(svc.url, probe, base64Length);
    const second = await embed(svc.url, probe, base64Length);
    if (!first.ok || first.sources[0] !== 'COMPUTED' || !second.ok || second.sources[0] !== 'MEMORY') {
      throw new Error(`sanity check failed: first ${JSON.stringify(first)}, second ${JSON.stringify(second)}`);
    }
    const ctx = { url: svc.url, servicePid: svc.pid, base64Length, checkAbort };
    for (const n of P.missConcurrency) {
      const { result: p } = await runPhase(
        { id: `miss-c${n}`, kind: 'miss', concurrency: n, inputsPerRequest: 1, warmupMs: P.warmupMs, durationMs: P.durationMs, client: 'fetch' },
        { ...ctx, nextTexts: missTexts },
      );
      run.phases.push(p);
      logPhase('main', p);
    }
    {
      const { concurrency: n, inputs } = P.batched;
      const { result: p } = await runPhase(
        {
          id: `miss-c${n}-x${inputs}`,
          kind: 'miss',
          concurrency: n,
          inputsPerRequest: inputs,
          warmupMs: P.warmupMs,
          durationMs: P.durationMs,
          client: 'fetch',
        },
        { ...ctx, nextTexts: missTexts },
      );
      run.phases.push(p);
      logPhase('main', p);
    }
    // Memory hits: warm a fixed set (checking it was computed), then cycle through it.
    const hot = corpus.take(P.memorySet);
    for (let i = 0; i < hot.length; i += 64) {
      const r = await embed(svc.url, hot.slice(i, i + 64), base64Length);
      if (!r.ok || r.sources.some((s) => s !== 'COMPUTED')) throw new Error(`warming the memory set failed: ${JSON.stringify(r).slice(0, 300)}`);
    }
    let next = 0;
    const hotTexts = (n: number): string[] => Array.from({ length: n }, () => hot[next++ % hot.length]!);
    for (const n of P.memoryConcurrency) {
      const { result: p } = await runPhase(
        {
          id: `mem-c${n}`,
          kind: 'memory',
          concurrency: n,
          inputsPerRequest: 1,
          warmupMs: Math.min(P.warmupMs, 500),
          durationMs: P.durationMs,
          client: 'fetch',
        },
        { ...ctx, nextTexts: hotTexts },
      );
      run.phases.push(p);
      logPhase('main', p);
    }
  });

  // 4. Variants (measured, never applied): every variant's service runs at once (idle ones cost no CPU),
  // and the variants are driven in interleaved rounds with a rotating order, so the drift of this shared
  // machine spreads over all of them alike instead of favouring whichever ran in a quiet minute.
  const variants: ServiceRun[] = [];
  if (args.variants && P.variantRounds > 0) {
    const envKeys = [...new Set(VARIANTS.map((v) => JSON.stringify(v.env)))];
    const started = await Promise.allSettled(
      envKeys.map((k) => startService(VARIANTS.find((v) => JSON.stringify(v.env) === k)!.label, JSON.parse(k) as Record<string, string>)),
    );
    const services = new Map<string, ServiceProcess>();
    started.forEach((s, i) => {
      if (s.status === 'fulfilled') services.set(envKeys[i]!, s.value);
    });
    try {
      checkAbort();
      const live = VARIANTS.map((v) => ({ v, svc: services.get(JSON.stringify(v.env)), runs: new Map<string, PhaseRun[]>() }));
      for (let round = 0; round < P.variantRounds; round++) {
        for (const { concurrency: n, inputs } of P.variantPhases) {
          const id = inputs > 1 ? `miss-c${n}-x${inputs}` : `miss-c${n}`;
          for (let i = 0; i < live.length; i++) {
            const x = live[(i + round) % live.length]!;
            if (!x.svc?.alive) continue;
            const pr = await runPhase(
              { id, kind: 'miss', concurrency: n, inputsPerRequest: inputs, warmupMs: P.variantWarmupMs, durationMs: P.variantDurationMs, client: x.v.client },
              { url: x.svc.url, servicePid: x.svc.pid, base64Length, checkAbort, nextTexts: missTexts },
            );
            x.runs.set(id, [...(x.runs.get(id) ?? []), pr]);
            logPhase(`r${round + 1} ${x.v.label.padEnd(20)}`, pr.result);
          }
        }
      }
      live.forEach(({ v, svc, runs }, i) => {
        const failure = started[envKeys.indexOf(JSON.stringify(v.env))]!;
        const run: ServiceRun = {
          label: v.label,
          overrides: v.env,
          settings: settingsOf(childEnv(v.env, 0)),
          client: v.client,
          startupMs: svc?.startupMs ?? NaN,
          phases: [...runs.values()].map(mergeRounds),
        };
        if (failure.status === 'rejected') run.error = String((failure.reason as Error)?.message ?? failure.reason).slice(0, 2000);
        else if (!svc?.alive) run.error = `service exited during the variant runs:\n${svc?.tail() ?? ''}`.slice(0, 2000);
        variants[i] = run;
      });
    } finally {
      await Promise.all([...services.values()].map((s) => s.stop()));
    }
  }

  // 5. Issue 3: GLOBAL (Redis) hits, text-glove.
  const globalHit =
    P.globalHit && !args.noRedis
      ? await measureGlobalHits({
          redisUrl: args.redisUrl,
          warmTexts: corpus.take(P.globalHit.warmTexts),
          missTexts,
          concurrency: P.globalHit.concurrency,
          warmupMs: P.globalHit.warmupMs,
          durationMs: P.globalHit.durationMs,
          base64Length,
          start: (label, env) => startService(label, env),
          log,
          logPhase,
          checkAbort,
        })
      : undefined;

  // 6. Issue 7: the transformer encoder, the naive baseline, the peer.
  let transformer: TransformerResults | undefined;
  if (P.transformer && !args.noTransformer) {
    try {
      transformer = await runTransformerSection({ root: ROOT, plan: P.transformer, start: startService, log, checkAbort });
    } catch (e) {
      if (aborted) throw e;
      log(`issue-7 section failed: ${(e as Error).stack ?? String(e)}`);
      transformer = undefined;
      conditions.transformerError = String((e as Error).message).slice(0, 2000);
    }
  }

  conditions.finishedAt = new Date().toISOString();
  conditions.wallSeconds = (performance.now() - t0) / 1000;
  conditions.loadAvgAfter = loadAvg();
  const results: BenchResults = {
    schema: 'polyray-bench/1',
    conditions,
    ceiling,
    main,
    variants,
    ...(globalHit ? { globalHit } : {}),
    ...(transformer ? { transformer } : {}),
  };

  mkdirSync(args.out, { recursive: true });
  writeFileSync(path.join(args.out, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  writeResults(path.join(args.out, 'RESULTS.md'), markdownReport(results));
  console.log(stdoutReport(results));
  log(`\nwrote ${path.join(args.out, 'RESULTS.md')} and results.json (${conditions.wallSeconds.toFixed(0)} s)`);
  clearTimeout(watchdog);
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    if (!aborted) log(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    killChildrenNow();
    process.exit(aborted ? process.exitCode || 1 : 1);
  },
);
