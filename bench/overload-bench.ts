/**
 * `npm run bench:overload` — overload bounded by time (issues 27, 28), in one run on one service
 * (text-bert-synthetic, defaults: POLYRAY_QUEUE_MAX_WAIT_MS 2 s): C closed-loop connections each sending 8 new
 * ~96-token texts per request, about ten times what the service computes, for the window; then the load
 * stops and one probe request measures when latency is back to normal.
 *
 * Rows: accepted requests' latency p50 / p99, refusals (OVERLOADED, with their Retry-After), and the
 * probe's latency 0.5, 1, 2 and 5 s after the load stopped. Writes bench/overload-results.json and the
 * "Overload" section of bench/RESULTS.md. Options: --quick, --out DIR.
 */
import path from 'node:path';
import { benchCli, publish } from './cli.ts';
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

interface Result {
  windowS: number;
  accepted: number;
  acceptedItemsPerS: number;
  latencyMs: Latency;
  refused: number;
  retryAfterMs: Latency;
  otherErrors: number;
  baselineMs: number;
  afterStopMs: { afterS: number; ms: number }[];
}

async function main(): Promise<void> {
  removeStaleScratch();
  const startedAt = new Date().toISOString();
  await buildModels({ modelsDir: path.join(ROOT, 'models'), only: [MODEL] });
  const corpus = await BertCorpus.load(path.join(ROOT, 'models', MODEL, 'tokenizer.json'));
  const port = await freePort();
  const svc = await ServiceProcess.start(ROOT, childEnv({ POLYRAY_SERVE_MODELS: MODEL }, port), port, 180_000, () => {});
  const url = `${svc.url}/v1/embeddings`;
  const one = async (): Promise<number> => {
    const s = performance.now();
    await postHttp(url, JSON.stringify({ model: MODEL, input: corpus.text(16), encoding_format: 'base64' }));
    return performance.now() - s;
  };
  try {
    for (let i = 0; i < 20; i++) await one();
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
        const body = JSON.stringify({ model: MODEL, input: Array.from({ length: 8 }, () => corpus.text(96)), encoding_format: 'base64' });
        const s = performance.now();
        const res = await postHttp(url, body, undefined, 120_000);
        const e = performance.now();
        if (res.status === 200) lat.push(e - s);
        else if (res.status === 429) {
          refused++;
          const ms = (JSON.parse(res.text) as { error?: { message?: string } }).error?.message?.match(/about (\d+) ms/)?.[1];
          if (ms) retry.push(Number(ms));
          await new Promise((r) => setTimeout(r, 100));
        } else other++;
      }
    };
    await Promise.all(Array.from({ length: CONNECTIONS }, () => client()));
    const stopped = performance.now();
    const afterStopMs: { afterS: number; ms: number }[] = [];
    for (const afterS of [0.5, 1, 2, 5]) {
      await new Promise((r) => setTimeout(r, Math.max(0, stopped + afterS * 1000 - performance.now())));
      afterStopMs.push({ afterS, ms: await one() });
    }
    const result: Result = {
      windowS: windowMs / 1000,
      accepted: lat.length,
      acceptedItemsPerS: (lat.length * 8) / (windowMs / 1000),
      latencyMs: summarise(lat),
      refused,
      retryAfterMs: summarise(retry),
      otherErrors: other,
      baselineMs,
      afterStopMs,
    };
    log(JSON.stringify(result));
    const host = hostInfo();
    const all = { startedAt, git: gitState(ROOT), cpu: host.cpuModel, cores: host.cores, quick, result };
    const f = (x: number): string => x.toFixed(0);
    const r = result;
    const section = [
      '## Overload (issues 27, 28): bounded by time, recovered at once',
      '',
      `Measured ${startedAt} by \`npm run bench:overload\`${quick ? ' --quick' : ''} on ${host.cpuModel}, ${host.cores} cores; source ${all.git}. One service ` +
        `(${MODEL}, defaults: POLYRAY_QUEUE_MAX_WAIT_MS 2000), the load generator on the same machine: ${CONNECTIONS} closed-loop connections, 8 new ~96-token ` +
        `texts per request, for ${r.windowS} s; a refused connection waits 100 ms and sends again. Then one ~16-token request at intervals after the load stops.`,
      '',
      '| accepted requests | accepted items/s | accepted p50 / p99 ms | refused (429) | their expected wait p50 / p99 ms | other errors |',
      '| ---: | ---: | ---: | ---: | ---: | ---: |',
      `| ${r.accepted} | ${r.acceptedItemsPerS.toFixed(1)} | ${f(r.latencyMs.p50)} / ${f(r.latencyMs.p99)} | ${r.refused} | ${f(r.retryAfterMs.p50)} / ${f(r.retryAfterMs.p99)} | ${r.otherErrors} |`,
      '',
      `One ~16-token request: ${r.baselineMs.toFixed(1)} ms before the load; after the load stopped: ${r.afterStopMs.map((x) => `${x.ms.toFixed(1)} ms at ${x.afterS} s`).join(', ')}.`,
    ].join('\n');
    publish(OUT, 'overload-results.json', all, 'overload', section);
  } finally {
    await svc.stop();
    removeScratch();
  }
}

await main();
