/**
 * `npm run bench:mixed` — mixed-length cache misses (issue 27): Polyray at 64 closed-loop clients, one new
 * text of 8–256 tokens per request, against the raw bound measured in the same run on raw ONNX Runtime
 * `run()` with the same texts' kind: one text per run, and ideal length-sorted groups of ≤ 1024 padded
 * tokens (every text known in advance, sorted globally: the most any length bucketing can gain).
 *
 * Target (issue 27): Polyray ≥ 0.95× the raw length-sorted bound. Rows also give Polyray's batches (mean
 * items, run ms, fill = real ÷ padded tokens) from its /metrics over the window. Writes
 * bench/mixed-results.json and the "Mixed lengths" section of bench/RESULTS.md. Options: --quick,
 * --out DIR, --set K=V (service environment, repeatable; for experiments), --range LO,HI (token lengths),
 * --defaults-only (skip the service with the bound off).
 */
import path from 'node:path';
import { benchCli, describeSettings, publish } from './cli.ts';
import { gitState, hostInfo } from './conditions.ts';
import { summarise } from './load.ts';
import { childEnv, freePort, removeScratch, removeStaleScratch, ServiceProcess } from './service.ts';
import { BERT, BertCorpus, createSession, feedsOf, polyrayTarget, runLoad } from './transformer.ts';
import { buildModels } from '../src/models/build.ts';

const cli = benchCli();
const { root: ROOT, quick, out: OUT, log } = cli;
/** Token lengths drawn uniformly from this range; `--range LO,HI` for experiments (e.g. 128,128: uniform length). */
const RANGE = ((cli.opt('--range') ?? '8,256').split(',').map(Number) as [number, number]).slice(0, 2) as [number, number];
if (!(RANGE[0]! >= 8 && RANGE[1]! >= RANGE[0]! && RANGE[1]! <= 512)) throw new Error(`--range expects LO,HI within 8-512, received ${cli.opt('--range')}`);
const CLIENTS = 64;
const MAX_TOKENS = 1024;
const INTRA = 2;

const set = cli.settings;

/** The model's batch counters and admission correction, from one read of the service's /metrics. */
interface Snapshot {
  real: number;
  padded: number;
  batches: number;
  items: number;
  runSeconds: number;
  correction: number;
}

async function snapshot(url: string): Promise<Snapshot> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const read = (name: string, labels = ''): number =>
    Number(new RegExp(`^${name}\\{[^}]*model="${BERT}"[^}]*${labels}[^}]*\\} (\\S+)$`, 'm').exec(text)?.[1] ?? 'NaN');
  return {
    real: read('polyray_batch_tokens_total', 'kind="real"'),
    padded: read('polyray_batch_tokens_total', 'kind="padded"'),
    batches: read('polyray_batch_size_count'),
    items: read('polyray_batch_size_sum'),
    runSeconds: read('polyray_inference_batch_seconds_sum'),
    correction: read('polyray_queue_wait_correction'),
  };
}

async function main(): Promise<void> {
  removeStaleScratch();
  const startedAt = new Date().toISOString();
  const modelsDir = path.join(ROOT, 'models');
  await buildModels({ modelsDir, only: [BERT] });
  const corpus = await BertCorpus.load(path.join(modelsDir, BERT, 'tokenizer.json'));

  // Raw bound: the same kind of texts on one session with the service's thread setting.
  const texts = quick ? 96 : 192;
  const rounds = quick ? 1 : 3;
  const encs = Array.from({ length: texts }, () => corpus.tokenizer.encode(corpus.mixed(RANGE[0], RANGE[1])));
  const sorted = [...encs].sort((a, b) => a.ids.length - b.ids.length);
  const groups: (typeof encs)[] = [];
  let cur: typeof encs = [];
  for (const e of sorted) {
    if (cur.length > 0 && e.ids.length * (cur.length + 1) > MAX_TOKENS) {
      groups.push(cur);
      cur = [];
    }
    cur.push(e);
  }
  if (cur.length > 0) groups.push(cur);
  const strategies = [
    { name: 'one text per run', groups: encs.map((e) => [e]) },
    { name: `length-sorted groups, ≤ ${MAX_TOKENS} padded tokens`, groups },
  ];
  const session = await createSession(path.join(modelsDir, BERT, 'model.onnx'), INTRA, true);
  const raw = new Map<string, number[]>();
  try {
    await session.run(feedsOf([encs[0]!]), ['embedding']);
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < strategies.length; i++) {
        const st = strategies[(i + r) % strategies.length]!;
        const feeds = st.groups.map((g) => feedsOf(g));
        const t0 = performance.now();
        for (const f of feeds) await session.run(f, ['embedding']);
        raw.set(st.name, [...(raw.get(st.name) ?? []), encs.length / ((performance.now() - t0) / 1000)]);
      }
    }
  } finally {
    await session.release();
  }
  const rawRows = strategies.map((st) => ({ strategy: st.name, itemsPerS: summarise(raw.get(st.name)!).p50, runs: st.groups.length }));
  for (const r of rawRows) log(`raw ${r.strategy}: ${r.itemsPerS.toFixed(1)} items/s`);
  const bound = rawRows[1]!.itemsPerS;

  // Polyray: 64 closed-loop clients of one new mixed-length text each, on the defaults and with the
  // admission bound off (this load sits at the 2 s bound on 2 cores: the refusals show what it costs).
  const services: { label: string; env: Record<string, string> }[] = [
    { label: 'defaults', env: {} },
    { label: 'admission bound off (POLYRAY_QUEUE_MAX_WAIT_MS=0)', env: { POLYRAY_QUEUE_MAX_WAIT_MS: '0' } },
  ];
  const warmupMs = quick ? 3000 : 5000;
  const durationMs = quick ? 8000 : 20_000;
  const rows: {
    label: string;
    load: Awaited<ReturnType<typeof runLoad>>;
    fill: number;
    batches: { count: number; meanSize: number; meanRunMs: number } | undefined;
    busy: number;
    ratio: number;
  }[] = [];
  try {
    for (const service of cli.has('--defaults-only') ? services.slice(0, 1) : services) {
      const port = await freePort();
      const svc = await ServiceProcess.start(ROOT, childEnv({ POLYRAY_SERVE_MODELS: BERT, ...service.env, ...set }, port), port, 180_000, () => {});
      try {
        const target = polyrayTarget(svc.url);
        for (let i = 0; i < 8; i++) await target([corpus.mixed(RANGE[0], RANGE[1])]);
        let b: Snapshot | undefined;
        const mark = setTimeout(() => void snapshot(svc.url).then((s) => (b = s)), warmupMs);
        const load = await runLoad(
          { server: 'polyray', workload: 'mixed', concurrency: CLIENTS, warmupMs, durationMs },
          { target, nextText: () => corpus.mixed(RANGE[0], RANGE[1]), pid: svc.pid, expected: 'COMPUTED', checkAbort: () => undefined },
        );
        clearTimeout(mark);
        const a = await snapshot(svc.url);
        const correction = a.correction;
        const fill = b ? (a.real - b.real) / (a.padded - b.padded) : Number.NaN;
        const count = b ? a.batches - b.batches : 0;
        const batches =
          b && count > 0 ? { count, meanSize: (a.items - b.items) / count, meanRunMs: ((a.runSeconds - b.runSeconds) * 1000) / count } : undefined;
        const busy = batches ? (batches.count * batches.meanRunMs) / durationMs : Number.NaN;
        const row = { label: service.label, load, fill, batches, busy, ratio: load.itemsPerS / bound, correction };
        log(
          JSON.stringify({
            label: row.label,
            itemsPerS: load.itemsPerS,
            errors: load.errors,
            fill,
            batches,
            busy,
            ratio: row.ratio,
            correction,
            cpu: load.cpu,
          }),
        );
        rows.push(row);
      } finally {
        await svc.stop();
      }
    }
  } finally {
    removeScratch();
  }
  const host = hostInfo();
  const all = { startedAt, git: gitState(ROOT), cpu: host.cpuModel, cores: host.cores, quick, set, raw: rawRows, polyray: rows };
  const extra = describeSettings(set);
  const pct = (x: number): string => `${(x * 100).toFixed(0)} %`;
  const c2 = (x: number | undefined): string => (x === undefined ? '–' : x.toFixed(2));
  const section = [
    '## Mixed lengths (issue 27): Polyray against the raw length-sorted bound',
    '',
    `Measured ${startedAt} by \`npm run bench:mixed\`${quick ? ' --quick' : ''} on ${host.cpuModel}, ${host.cores} cores; source ${all.git}. ` +
      `Raw bound: ${texts} texts of ${RANGE[0]}–${RANGE[1]} tokens (uniform) on one ONNX Runtime session in the bench process (intra ${INTRA}, spinning), ${rounds} interleaved round(s), median. ` +
      `Polyray (${BERT}${extra}): ${CLIENTS} closed-loop clients, one new text of the same kind per request (all cache misses), ${durationMs / 1000} s after ${warmupMs / 1000} s of warm-up, ` +
      'two services one after the other; the load generator on the same machine. Refused requests (OVERLOADED at the admission bound) count as errors and their clients send again.',
    '',
    '| | items/s | of the length-sorted bound | errors | p50 / p99 ms | batches: mean items / run ms | fill (real ÷ padded tokens) | worker busy | cores: rest of the machine (the worker process) / service main thread / service other threads / load generator |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rawRows.map(
      (r) =>
        `| raw, ${r.strategy} | ${r.itemsPerS.toFixed(1)} | ${(r.itemsPerS / bound).toFixed(2)}× | – | – | ${(texts / r.runs).toFixed(1)} / – | – | – | – |`,
    ),
    ...rows.map(
      (r) =>
        `| Polyray, ${r.label} | ${r.load.itemsPerS.toFixed(1)} | **${r.ratio.toFixed(2)}×** | ${r.load.errors} | ${r.load.latencyMs.p50.toFixed(0)} / ${r.load.latencyMs.p99.toFixed(0)} | ` +
        `${r.batches ? `${r.batches.meanSize.toFixed(1)} / ${r.batches.meanRunMs.toFixed(1)}` : '–'} | ${pct(r.fill)} | ${pct(r.busy)} | ` +
        `${c2(r.load.cpu?.others)} / ${c2(r.load.cpu?.serviceMainThread)} / ${c2(r.load.cpu?.serviceOtherThreads)} / ${c2(r.load.cpu?.bench)} |`,
    ),
    '',
    `Target ≥ 0.95× (defaults): ${rows[0] && rows[0].ratio >= 0.95 ? 'met' : '**not met**'}.`,
  ].join('\n');
  publish(OUT, 'mixed-results.json', all, 'mixed-lengths', section);
}

await main();
