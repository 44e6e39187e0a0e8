/**
 * `npm run bench:overload` — overload bounded by time (issues 27, 28), in one run
 * (text-bert-synthetic, POLYRAY_QUEUE_MAX_WAIT_MS 2 s): C closed-loop connections each sending 8 new
 * ~96-token texts per request, about ten times what the service computes, for the window; then the load
 * stops and one probe request measures when latency is back to normal.
 *
 * Two services one after the other, the defaults and refusals answered at once (the baseline), and on each
 * two rows, one per client behaviour: polite clients wait 100 ms after a refusal, impatient ones send
 * again at once (a careless client's retry loop). Each row: accepted requests' latency p50 / p99, refusals
 * (OVERLOADED, with their Retry-After), and the probe's latency 0.5, 1, 2 and 5 s after the load stopped.
 * Writes bench/overload-results.json and the "Overload" section of bench/RESULTS.md. Options: --quick,
 * --out DIR, --set K=V (service settings, repeatable; for experiments), --only polite|impatient.
 */
import path from 'node:path';
import { benchCli, describeSettings, publish } from './cli.ts';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { gitState, hostInfo } from './conditions.ts';
import { type Latency, postHttp, summarise } from './load.ts';
import { childEnv, freePort, removeScratch, removeStaleScratch, ServiceProcess } from './service.ts';
import { BertCorpus } from './transformer.ts';

const cli = benchCli();
const { root: ROOT, quick, out: OUT, log } = cli;
const MODEL = BERT_MODELS.plain;
const CONNECTIONS = 48;

/** How the load's clients behave: how many, what each request carries, and what a refused client does. */
interface Phase {
  name: string;
  connections: number;
  textsPerRequest: number;
  tokensPerText: number;
  /** A refused connection waits this long before it sends again (0: at once, as a careless client does). */
  retryDelayMs: number;
}

const PHASES: Phase[] = [
  { name: 'polite', connections: CONNECTIONS, textsPerRequest: 8, tokensPerText: 96, retryDelayMs: 100 },
  // Clients that retry as soon as they are refused: before paced refusals this collapsed throughput to a fifth.
  { name: 'impatient', connections: CONNECTIONS, textsPerRequest: 8, tokensPerText: 96, retryDelayMs: 0 },
];

interface Result {
  phase: Phase;
  windowS: number;
  accepted: number;
  acceptedItemsPerS: number;
  latencyMs: Latency;
  refused: number;
  /** Refusals per second the service answered. */
  refusedPerS: number;
  retryAfterMs: Latency;
  otherErrors: number;
  baselineMs: number;
  afterStopMs: { afterS: number; ms: number }[];
}

/** The services compared in one run: the defaults, and refusals answered at once (the setting before pacing). */
const SERVICES: { label: string; env: Record<string, string> }[] = [
  { label: 'defaults (refusals paced 250 ms)', env: {} },
  { label: 'refusals at once (POLYRAY_QUEUE_REFUSAL_PACE_MS=0)', env: { POLYRAY_QUEUE_REFUSAL_PACE_MS: '0' } },
];

async function main(): Promise<void> {
  removeStaleScratch();
  const startedAt = new Date().toISOString();
  // --set K=V: service settings added to every service, for experiments (published figures use none).
  const extra = cli.settings;
  await buildModels({ modelsDir: path.join(ROOT, 'models'), only: [MODEL] });
  const corpus = await BertCorpus.load(path.join(ROOT, 'models', MODEL, 'tokenizer.json'));
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  const only = cli.opt('--only');
  const rows: { service: string; result: Result }[] = [];
  try {
    for (const service of SERVICES) {
      const port = await freePort();
      const svc = await ServiceProcess.start(ROOT, childEnv({ POLYRAY_SERVE_MODELS: MODEL, ...service.env, ...extra }, port), port, 180_000, () => {});
      try {
        const url = `${svc.url}/v1/embeddings`;
        const one = async (): Promise<number> => {
          const s = performance.now();
          await postHttp(url, JSON.stringify({ model: MODEL, input: corpus.text(16), encoding_format: 'base64' }));
          return performance.now() - s;
        };
        for (let i = 0; i < 20; i++) await one();
        for (const phase of PHASES) if (!only || phase.name === only) rows.push({ service: service.label, result: await run(phase, url, one) });
      } finally {
        await svc.stop();
      }
    }
  } finally {
    removeScratch();
  }

  async function run(phase: Phase, url: string, one: () => Promise<number>): Promise<Result> {
    const base: number[] = [];
    for (let i = 0; i < 30; i++) base.push(await one());
    const baselineMs = summarise(base).p50;
    const windowMs = quick ? 6000 : 20_000;
    const end = performance.now() + windowMs;
    const lat: number[] = [];
    const retry: number[] = [];
    let refused = 0;
    let other = 0;
    const client = async (): Promise<void> => {
      while (performance.now() < end) {
        const input = Array.from({ length: phase.textsPerRequest }, () => corpus.text(phase.tokensPerText));
        const body = JSON.stringify({ model: MODEL, input, encoding_format: 'base64' });
        const s = performance.now();
        const res = await postHttp(url, body, undefined, 120_000);
        const e = performance.now();
        if (res.status === 200) lat.push(e - s);
        else if (res.status === 429) {
          refused++;
          const ms = (JSON.parse(res.text) as { error?: { message?: string } }).error?.message?.match(/about (\d+) ms/)?.[1];
          if (ms) retry.push(Number(ms));
          if (phase.retryDelayMs > 0) await sleep(phase.retryDelayMs);
        } else other++;
      }
    };
    await Promise.all(Array.from({ length: phase.connections }, () => client()));
    const stopped = performance.now();
    const afterStopMs: { afterS: number; ms: number }[] = [];
    for (const afterS of [0.5, 1, 2, 5]) {
      await sleep(Math.max(0, stopped + afterS * 1000 - performance.now()));
      afterStopMs.push({ afterS, ms: await one() });
    }
    const result: Result = {
      phase,
      windowS: windowMs / 1000,
      accepted: lat.length,
      acceptedItemsPerS: (lat.length * phase.textsPerRequest) / (windowMs / 1000),
      latencyMs: summarise(lat),
      refused,
      refusedPerS: refused / (windowMs / 1000),
      retryAfterMs: summarise(retry),
      otherErrors: other,
      baselineMs,
      afterStopMs,
    };
    log(JSON.stringify(result));
    return result;
  }

  const host = hostInfo();
  const all = { startedAt, git: gitState(ROOT), cpu: host.cpuModel, cores: host.cores, quick, env: extra, rows };
  const f = (x: number): string => x.toFixed(0);
  const settings = describeSettings(extra);
  const section = [
    '## Overload (issues 27, 28): bounded by time, recovered at once',
    '',
    `Measured ${startedAt} by \`npm run bench:overload\`${quick ? ' --quick' : ''} on ${host.cpuModel}, ${host.cores} cores; source ${all.git}. Two services ` +
      `one after the other (${MODEL}, POLYRAY_QUEUE_MAX_WAIT_MS 2000${settings}): the defaults, and refusals answered at once as before paced refusals. ` +
      `The load generator on the same machine, about ten times what the service computes, for ${rows[0]?.result.windowS ?? 0} s per row: *polite*, ` +
      `${PHASES[0]!.connections} closed-loop connections of 8 new ~96-token texts per request, a refused connection waits 100 ms and sends again; ` +
      '*impatient*, the same but a refused connection sends again at once. After each row, one ~16-token request at intervals after the load stopped.',
    '',
    '| service | clients | accepted requests | accepted items/s | accepted p50 / p99 ms | refused (429) | refusals/s | their expected wait p50 / p99 ms | other errors | one request 0.5 / 1 / 2 / 5 s after the load, ms |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      ({ service, result: r }) =>
        `| ${service} | ${r.phase.name} | ${r.accepted} | ${r.acceptedItemsPerS.toFixed(1)} | ${f(r.latencyMs.p50)} / ${f(r.latencyMs.p99)} | ${r.refused} | ` +
        `${r.refusedPerS.toFixed(0)} | ${f(r.retryAfterMs.p50)} / ${f(r.retryAfterMs.p99)} | ${r.otherErrors} | ${r.afterStopMs.map((x) => x.ms.toFixed(1)).join(' / ')} |`,
    ),
    '',
    `One ~16-token request before each row's load: ${rows.map((r) => `${r.result.baselineMs.toFixed(1)} ms`).join(', ')}.`,
  ].join('\n');
  publish(OUT, 'overload-results.json', all, 'overload', section);
}

await main();
