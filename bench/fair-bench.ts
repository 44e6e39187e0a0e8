/**
 * `npm run bench:fair` — fair serving (issue 27) in one run, on one service (text-bert-synthetic, cache
 * misses): a victim client's latency alone, beside a flooding client (fair: the flood under its own key),
 * beside the same flood under the victim's own key (what FIFO gives: one client, one queue), and beside a
 * flood sent as `x-polyray-priority: batch`.
 *
 * Victim: one closed-loop connection, one new ~16-token text per request. Flood: F closed-loop connections,
 * each sending 16 new ~64-token texts per request. Writes bench/fair-results.json and the "Fair serving"
 * section of bench/RESULTS.md (`npm run bench` keeps it). Options: --quick, --out DIR.
 */
import path from 'node:path';
import { benchCli, publish } from './cli.ts';
import { addClient } from '../src/accounting/clients.ts';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { gitState, hostInfo } from './conditions.ts';
import { type Latency, postHttp, summarise } from './load.ts';
import { childEnv, freePort, removeScratch, removeStaleScratch, SCRATCH_DIR, ServiceProcess } from './service.ts';
import { BertCorpus } from './transformer.ts';

const cli = benchCli();
const { root: ROOT, quick, out: OUT, log } = cli;
const MODEL = BERT_MODELS.plain;
const FLOOD_CONNECTIONS = 8;

type Scenario = 'alone' | 'fair' | 'fifo' | 'batch';
interface Row {
  scenario: Scenario;
  victim: Latency;
  victimPerS: number;
  floodItemsPerS: number;
  errors: number;
}

async function run(url: string, scenario: Scenario, keys: { victim: string; flood: string }, corpus: BertCorpus, ms: number): Promise<Row> {
  const warm = quick ? 1000 : 3000;
  const t0 = performance.now();
  const ws = t0 + warm;
  const we = ws + ms;
  const lat: number[] = [];
  let flooded = 0;
  let errors = 0;
  const embeddings = `${url}/v1/embeddings`;
  const victim = async (): Promise<void> => {
    const key = scenario === 'fifo' ? keys.flood : keys.victim;
    while (performance.now() < we) {
      const body = JSON.stringify({ model: MODEL, input: corpus.text(16), encoding_format: 'base64' });
      const s = performance.now();
      const res = await postHttp(embeddings, body, undefined, 60_000, { authorization: `Bearer ${key}` });
      const e = performance.now();
      if (res.status !== 200) errors++;
      else if (s >= ws && e <= we) lat.push(e - s);
    }
  };
  let stop = false;
  const flood = async (): Promise<void> => {
    const headers: Record<string, string> = { authorization: `Bearer ${keys.flood}`, ...(scenario === 'batch' ? { 'x-polyray-priority': 'batch' } : {}) };
    while (!stop) {
      const body = JSON.stringify({ model: MODEL, input: Array.from({ length: 16 }, () => corpus.text(64)), encoding_format: 'base64' });
      const res = await postHttp(embeddings, body, undefined, 120_000, headers);
      const e = performance.now();
      if (res.status !== 200) errors++;
      else if (e >= ws && e <= we) flooded += 16;
    }
  };
  const floods = scenario === 'alone' ? [] : Array.from({ length: FLOOD_CONNECTIONS }, () => flood());
  await victim();
  stop = true;
  await Promise.all(floods);
  return { scenario, victim: summarise(lat), victimPerS: lat.length / (ms / 1000), floodItemsPerS: flooded / (ms / 1000), errors };
}

export function renderFairSection(r: { startedAt: string; git: string; cpu: string; cores: number; quick: boolean; rows: Row[] }): string {
  const f1 = (x: number): string => x.toFixed(1);
  const label: Record<Scenario, string> = {
    alone: 'victim alone',
    fair: 'beside a flood, fair (flood under its own key)',
    fifo: 'beside a flood, FIFO (flood under the victim key)',
    batch: 'beside a flood sent as `batch`',
  };
  const alone = r.rows.find((x) => x.scenario === 'alone');
  return [
    '## Fair serving (issue 27): a victim client beside a flooding one',
    '',
    `Measured ${r.startedAt} by \`npm run bench:fair\`${r.quick ? ' --quick' : ''} on ${r.cpu}, ${r.cores} cores; source ${r.git}. One service ` +
      `(${MODEL}, defaults), the load generator on the same machine, all cache misses through \`/v1/embeddings\`. Victim: one closed-loop ` +
      `connection, one new ~16-token text per request. Flood: ${FLOOD_CONNECTIONS} closed-loop connections, 16 new ~64-token texts per request. ` +
      'FIFO is measured by sending the victim under the flood key: one client, one FIFO.',
    '',
    '| scenario | victim p50 ms | victim p99 ms | p99 vs alone | victim req/s | flood items/s | errors |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...r.rows.map(
      (x) =>
        `| ${label[x.scenario]} | ${f1(x.victim.p50)} | ${f1(x.victim.p99)} | ${alone && alone.victim.p99 > 0 ? `×${(x.victim.p99 / alone.victim.p99).toFixed(2)}` : '—'} | ${f1(x.victimPerS)} | ${f1(x.floodItemsPerS)} | ${x.errors} |`,
    ),
  ].join('\n');
}

async function main(): Promise<void> {
  removeStaleScratch();
  const startedAt = new Date().toISOString();
  await buildModels({ modelsDir: path.join(ROOT, 'models'), only: [MODEL] });
  const clients = path.join(SCRATCH_DIR, 'fair-clients.json');
  const keys = {
    victim: (await addClient(clients, { id: 'victim', rate: 1e9, burst: 1e12 })).key,
    flood: (await addClient(clients, { id: 'flood', rate: 1e9, burst: 1e12 })).key,
  };
  const port = await freePort();
  const svc = await ServiceProcess.start(ROOT, childEnv({ POLYRAY_SERVE_MODELS: MODEL, POLYRAY_CLIENTS_FILE: clients }, port), port, 180_000, () => {});
  try {
    const corpus = await BertCorpus.load(path.join(ROOT, 'models', MODEL, 'tokenizer.json'));
    const ms = quick ? 4000 : 12_000;
    const rows: Row[] = [];
    for (const scenario of ['alone', 'fair', 'fifo', 'batch'] as const) {
      const row = await run(svc.url, scenario, keys, corpus, ms);
      rows.push(row);
      log(
        `  ${scenario}: victim p50 ${row.victim.p50.toFixed(1)} ms, p99 ${row.victim.p99.toFixed(1)} ms; flood ${row.floodItemsPerS.toFixed(1)} items/s; ${row.errors} errors`,
      );
    }
    const host = hostInfo();
    const result = { startedAt, git: gitState(ROOT), cpu: host.cpuModel, cores: host.cores, quick, rows };
    publish(OUT, 'fair-results.json', result, 'fair-serving', renderFairSection(result));
  } finally {
    await svc.stop();
    removeScratch();
  }
}

await main();
