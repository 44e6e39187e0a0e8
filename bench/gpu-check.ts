/**
 * GPU check (driven by bench/gpu-check.sh): for each execution provider asked for (cpu always first),
 *   1. creates a raw onnxruntime-node session for `text-bert-synthetic` with that provider ONLY (no
 *      fallback, so a failure is reported, not hidden), with ORT profiling on, and reads the profile to
 *      count on which provider every graph node ran;
 *   2. measures the ceiling: `run()` at batch sizes × seq 16 / 128;
 *   3. starts the service with `POLYRAY_PROVIDERS=<provider>,cpu`, reads `Query.models.executionProvider`
 *      (what actually runs), and drives cache misses through HTTP GraphQL (seq 128, N = 1 and 64).
 * Writes `gpu-check.json` and `gpu-check.md` to --out. Exits 0 when the CPU part ran, whatever the GPU
 * providers did (their errors are in the files); 1 only if the CPU part itself failed.
 *
 * usage: tsx bench/gpu-check.ts --out DIR [--providers cpu,cuda,webgpu] [--quick]
 */
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { hostInfo, packageVersion } from './conditions.ts';
import { childEnv, freePort, modelsFolder, peakRss, removeScratch, ServiceProcess } from './service.ts';
import { BERT, BertCorpus, feedsOf, polyrayTarget, runLoad, type LoadResult } from './transformer.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const arg = (k: string): string | undefined => {
  const i = argv.indexOf(k);
  return i >= 0 ? argv[i + 1] : undefined;
};
const OUT = path.resolve(arg('--out') ?? process.env.OUT ?? path.join(ROOT, 'bench', 'out', 'gpu'));
const QUICK = argv.includes('--quick');
const providers = ['cpu', ...(arg('--providers') ?? 'cpu').split(',').filter((p) => p && p !== 'cpu')];
const log = (s: string): void => void process.stderr.write(`${s}\n`);

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  removeScratch();
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130));

interface ProviderResult {
  provider: string;
  sessionOk: boolean;
  sessionError?: string;
  sessionCreateMs?: number;
  /** Graph nodes by the provider ORT's profile says they ran on. */
  nodePlacement?: Record<string, number>;
  ceiling: { seq: number; batch: number; itemsPerS: number; runMsP50: number }[];
  /** Max |a−b| and min cosine of this provider's vectors against the CPU provider's. */
  vsCpu?: { maxAbsDiff: number; minCosine: number };
  service?: ServiceResult;
  /** The same service with batching off (POLYRAY_BATCH_MAX_ITEMS=1): the naive baseline of the GPU target. */
  naive?: ServiceResult;
}

interface ServiceResult {
  executionProvider: string;
  state: string;
  startupMs: number;
  peakRssMiB: number;
  loads: LoadResult[];
  error?: string;
  logTail?: string;
}

function placement(profileFile: string): Record<string, number> {
  const events = JSON.parse(readFileSync(profileFile, 'utf8')) as { cat?: string; name?: string; args?: { provider?: string; op_name?: string } }[];
  const seen = new Map<string, string>();
  for (const e of events)
    if (e.cat === 'Node' && e.args?.provider && e.name) seen.set(e.name.replace(/_kernel_time$|_fence_(before|after)$/, ''), e.args.provider);
  const out: Record<string, number> = {};
  for (const p of seen.values()) out[p] = (out[p] ?? 0) + 1;
  return out;
}

async function serviceRun(provider: string, label: string, extra: Record<string, string>, ns: number[], corpus: BertCorpus): Promise<ServiceResult> {
  const port = await freePort();
  const dir = modelsFolder(ROOT, `models-gpu-${provider}-${label}`, [BERT]);
  const env = childEnv(
    { POLYRAY_MODELS_DIR: dir, POLYRAY_SERVE_MODELS: BERT, POLYRAY_PROVIDERS: provider === 'cpu' ? 'cpu' : `${provider},cpu`, LOG_LEVEL: 'info', ...extra },
    port,
  );
  let svc: ServiceProcess | undefined;
  try {
    log(
      `[${provider}] ${label} POLYRAY_PROVIDERS=${env.POLYRAY_PROVIDERS}${Object.entries(extra)
        .map(([k, v]) => ` ${k}=${v}`)
        .join('')}`,
    );
    svc = await ServiceProcess.start(ROOT, env, port, 120_000, (c) => {
      children.add(c);
      c.once('exit', () => children.delete(c));
    });
    const m = (await (
      await fetch(`${svc.url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ query: '{ models { name state executionProvider } }' }),
      })
    ).json()) as {
      data?: { models?: { name: string; state: string; executionProvider: string }[] };
    };
    const me = m.data?.models?.find((x) => x.name === BERT);
    const res: ServiceResult = {
      executionProvider: me?.executionProvider ?? '?',
      state: me?.state ?? '?',
      startupMs: Math.round(svc.startupMs),
      peakRssMiB: NaN,
      loads: [],
    };
    log(`[${provider}] ${label} reports executionProvider=${res.executionProvider} state=${res.state}`);
    for (const n of ns) {
      const l = await runLoad(
        { server: `polyray ${label} ${provider}`, workload: 'seq128', concurrency: n, warmupMs: QUICK ? 800 : 2000, durationMs: QUICK ? 1500 : 5000 },
        { target: polyrayTarget(svc.url), nextText: () => corpus.text(128), pid: svc.pid, expected: 'COMPUTED', checkAbort: () => {} },
      );
      res.loads.push(l);
      log(
        `[${provider}] ${label} seq128 N=${n}: ${l.itemsPerS.toFixed(1)} items/s p50 ${l.latencyMs.p50.toFixed(1)} ms p99 ${l.latencyMs.p99.toFixed(1)} ms errors ${l.errors}${l.firstError ? ` (${l.firstError})` : ''}`,
      );
    }
    res.peakRssMiB = peakRss(svc.pid).hwmMiB;
    res.logTail = svc
      .tail()
      .split('\n')
      .filter((x) => /provider|fallback|cuda|webgpu|maxTokensPerBatch/i.test(x))
      .slice(-10)
      .join('\n');
    return res;
  } catch (e) {
    const error = (e as Error).message.slice(0, 1500);
    log(`[${provider}] ${label} failed: ${error}`);
    return { executionProvider: '?', state: 'FAILED TO START', startupMs: NaN, peakRssMiB: NaN, loads: [], error };
  } finally {
    await svc?.stop();
  }
}

/**
 * The issue's GPU targets, per provider: the batched service at the highest N ≥ 5× the naive service at the
 * same N, and ≥ 0.85× the best raw seq-128 ceiling of that provider. Shown for CPU too, for comparison.
 */
function verdicts(r: ProviderResult): string[] {
  const top = (x: ServiceResult | undefined): LoadResult | undefined =>
    x?.loads.reduce<LoadResult | undefined>((a, l) => (!a || l.concurrency > a.concurrency ? l : a), undefined);
  const s = top(r.service);
  const nv = r.naive?.loads.find((l) => l.concurrency === s?.concurrency);
  const c128 = r.ceiling.filter((c) => c.seq === 128).map((c) => c.itemsPerS);
  const ceil = c128.length ? Math.max(...c128) : NaN;
  if (!s) return [`| ${r.provider} | – | – | no service figures |`];
  const onIt = r.service?.executionProvider === r.provider;
  const vsNaive = nv ? s.itemsPerS / nv.itemsPerS : NaN;
  const vsCeil = s.itemsPerS / ceil;
  const mark = (ok: boolean): string => (r.provider === 'cpu' ? '– (CPU, for comparison)' : !onIt ? 'n/a (not on this provider)' : ok ? 'yes' : '**no**');
  return [
    `| ${r.provider} | service ≥ 5× naive (seq128 N=${s.concurrency}) | ${mark(vsNaive >= 5)} | ${s.itemsPerS.toFixed(1)} vs ${nv ? nv.itemsPerS.toFixed(1) : '–'} items/s = ×${vsNaive.toFixed(2)} |`,
    `| ${r.provider} | service ≥ 0.85× raw ceiling (seq128) | ${mark(vsCeil >= 0.85)} | ${s.itemsPerS.toFixed(1)} vs ${Number.isFinite(ceil) ? ceil.toFixed(1) : '–'} items/s = ×${vsCeil.toFixed(2)} |`,
  ];
}

async function main(): Promise<number> {
  mkdirSync(OUT, { recursive: true });
  const t0 = performance.now();
  const corpus = await BertCorpus.load(path.join(ROOT, 'models', BERT, 'tokenizer.json'));
  const modelPath = path.join(ROOT, 'models', BERT, 'model.onnx');
  const seqs = [16, 128];
  const batches = QUICK ? [1, 8] : [1, 8, 32, 64];
  const pool = new Map(seqs.map((s) => [s, Array.from({ length: 64 }, () => corpus.tokenizer.encode(corpus.text(s)))]));
  const sample = [corpus.text(16), corpus.text(128), corpus.text(60)].map((t) => corpus.tokenizer.encode(t));
  const results: ProviderResult[] = [];
  let cpuVectors: Float32Array[] | undefined;
  const intra = Math.max(1, os.availableParallelism());

  for (const provider of providers) {
    const r: ProviderResult = { provider, sessionOk: false, ceiling: [] };
    results.push(r);
    log(`[${provider}] session (profiling on)`);
    let session: ort.InferenceSession | undefined;
    const profDir = path.join(OUT, `profile-${provider}`);
    rmSync(profDir, { recursive: true, force: true });
    mkdirSync(profDir, { recursive: true });
    try {
      const c0 = performance.now();
      session = await ort.InferenceSession.create(modelPath, {
        executionProviders: [provider as 'cpu'],
        intraOpNumThreads: intra,
        graphOptimizationLevel: 'all',
        enableProfiling: true,
        profileFilePrefix: path.join(profDir, 'ort'),
      });
      r.sessionCreateMs = Math.round(performance.now() - c0);
      r.sessionOk = true;
    } catch (e) {
      r.sessionError = (e as Error).message.slice(0, 800);
      log(`[${provider}] session failed: ${r.sessionError}`);
    }
    if (session) {
      try {
        const vecs: Float32Array[] = [];
        for (const e of sample) vecs.push(new Float32Array((await session.run(feedsOf([e]), ['embedding'])).embedding!.data as Float32Array));
        session.endProfiling();
        const prof = readdirSync(profDir).find((f) => f.endsWith('.json'));
        if (prof) r.nodePlacement = placement(path.join(profDir, prof));
        log(`[${provider}] node placement: ${JSON.stringify(r.nodePlacement)}`);
        if (provider === 'cpu') cpuVectors = vecs;
        else if (cpuVectors) {
          let maxAbs = 0;
          let minCos = 1;
          vecs.forEach((v, i) => {
            const c = cpuVectors![i]!;
            let d = 0;
            for (let j = 0; j < v.length; j++) {
              maxAbs = Math.max(maxAbs, Math.abs(v[j]! - c[j]!));
              d += v[j]! * c[j]!;
            }
            minCos = Math.min(minCos, d);
          });
          r.vsCpu = { maxAbsDiff: maxAbs, minCosine: minCos };
        }
      } catch (e) {
        r.sessionError = `profiled run failed: ${(e as Error).message.slice(0, 500)}`;
      }
      await session.release();
      // Timing session without profiling.
      const s2 = await ort.InferenceSession.create(modelPath, {
        executionProviders: [provider as 'cpu'],
        intraOpNumThreads: intra,
        graphOptimizationLevel: 'all',
      });
      try {
        for (const seq of seqs)
          for (const b of batches) {
            const encs = pool.get(seq)!;
            const f = [feedsOf(encs.slice(0, b)), feedsOf(encs.slice(b % 64 === 0 ? 0 : b, (b % 64 === 0 ? 0 : b) + b))];
            for (let i = 0; i < 2; i++) await s2.run(f[i % 2]!, ['embedding']);
            const times: number[] = [];
            const c = performance.now();
            while (times.length < 3 || performance.now() - c < (QUICK ? 300 : 800)) {
              const a = performance.now();
              await s2.run(f[times.length % 2]!, ['embedding']);
              times.push(performance.now() - a);
            }
            times.sort((x, y) => x - y);
            const row = { seq, batch: b, itemsPerS: (times.length * b * 1000) / (performance.now() - c), runMsP50: times[Math.floor((times.length - 1) / 2)]! };
            r.ceiling.push(row);
            log(`[${provider}] ceiling seq=${seq} batch=${b}: ${row.itemsPerS.toFixed(1)} items/s (run p50 ${row.runMsP50.toFixed(2)} ms)`);
          }
      } finally {
        await s2.release();
      }
    }

    // The service with this provider first (it falls back to CPU by itself and reports what runs), then
    // the same service with batching off: the naive baseline.
    r.service = await serviceRun(provider, 'service', {}, QUICK ? [16] : [1, 64], corpus);
    r.naive = await serviceRun(provider, 'naive', { POLYRAY_BATCH_MAX_ITEMS: '1' }, QUICK ? [16] : [64], corpus);
  }

  const doc = {
    schema: 'polyray-gpu-check/1',
    at: new Date().toISOString(),
    wallSeconds: (performance.now() - t0) / 1000,
    host: hostInfo(),
    node: process.version,
    onnxruntimeNode: packageVersion(ROOT, 'onnxruntime-node'),
    providersAsked: providers,
    results,
  };
  writeFileSync(path.join(OUT, 'gpu-check.json'), `${JSON.stringify(doc, null, 2)}\n`);
  const md = [
    `# GPU check — ${doc.at}`,
    '',
    `${doc.host.cpuModel}, ${doc.host.cores} cores; Node ${doc.node}; onnxruntime-node ${doc.onnxruntimeNode}; model ${BERT}.`,
    '',
    '| provider | raw session | node placement (profile) | vs CPU (min cosine) | service executionProvider | seq | batch | raw items/s | run p50 ms |',
    '| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |',
    ...results.flatMap((r) =>
      (r.ceiling.length ? r.ceiling : [{ seq: NaN, batch: NaN, itemsPerS: NaN, runMsP50: NaN }]).map(
        (c) =>
          `| ${r.provider} | ${r.sessionOk ? `ok (${r.sessionCreateMs} ms)` : `FAILED: ${(r.sessionError ?? '').replaceAll('|', '/').slice(0, 200)}`} | ${JSON.stringify(r.nodePlacement ?? {})} | ${r.vsCpu ? r.vsCpu.minCosine.toFixed(6) : '–'} | ${r.service?.executionProvider ?? '–'} | ${c.seq} | ${c.batch} | ${c.itemsPerS.toFixed(1)} | ${c.runMsP50.toFixed(2)} |`,
      ),
    ),
    '',
    '| service (POLYRAY_PROVIDERS) | reports | load | items/s | p50 ms | p99 ms | errors | peak RSS MiB |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |',
    ...results.flatMap((r) =>
      (['service', 'naive'] as const).flatMap((kind) => {
        const sv = r[kind];
        return (sv?.loads ?? []).map(
          (l) =>
            `| ${r.provider === 'cpu' ? 'cpu' : `${r.provider},cpu`}${kind === 'naive' ? ' (naive: batching off)' : ''} | ${sv!.executionProvider} | ${l.workload} N=${l.concurrency} | ${l.itemsPerS.toFixed(1)} | ${l.latencyMs.p50.toFixed(1)} | ${l.latencyMs.p99.toFixed(1)} | ${l.errors} | ${sv!.peakRssMiB.toFixed(0)} |`,
        );
      }),
    ),
    ...results.filter((r) => r.service?.error).map((r) => `\nService with ${r.provider} failed: ${r.service!.error}`),
    '',
    '| provider | target | met? | numbers |',
    '| --- | --- | --- | --- |',
    ...results.flatMap(verdicts),
    '',
  ].join('\n');
  writeFileSync(path.join(OUT, 'gpu-check.md'), md);
  log(`wrote ${path.join(OUT, 'gpu-check.json')} and gpu-check.md (${doc.wallSeconds.toFixed(0)} s)`);
  const cpu = results[0]!;
  return cpu.sessionOk && cpu.ceiling.length > 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    log(`gpu-check failed: ${(e as Error).stack ?? String(e)}`);
    process.exit(1);
  },
);
