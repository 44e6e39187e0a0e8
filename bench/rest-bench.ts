/**
 * `npm run bench:rest` — the REST surfaces beside GraphQL in one run, on one service (text-glove):
 * cache-miss and memory-hit throughput and latency of `embed` (GraphQL), `POST /v1/embeddings` (OpenAI
 * shape, base64) and `POST /embed` (TEI shape), N closed-loop clients, one text per request.
 *
 * Writes bench/rest-results.json and the "REST surfaces" section of bench/RESULTS.md (between markers;
 * `npm run bench` keeps it). Options: --quick, --out DIR.
 */
import path from 'node:path';
import { benchCli, publish } from './cli.ts';
import { gitState, hostInfo } from './conditions.ts';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { BertCorpus } from './transformer.ts';
import { type Latency, postHttp, summarise } from './load.ts';
import { childEnv, freePort, removeScratch, removeStaleScratch, ServiceProcess } from './service.ts';

const cli = benchCli();
const { root: ROOT, quick, out: OUT, log } = cli;

type Surface = 'graphql' | 'openai' | 'tei';
interface Row {
  surface: Surface;
  kind: 'miss' | 'hit';
  concurrency: number;
  itemsPerS: number;
  latencyMs: Latency;
  errors: number;
}

function request(url: string, surface: Surface, text: string): { url: string; body: string } {
  switch (surface) {
    case 'graphql':
      return {
        url: `${url}/graphql`,
        body: JSON.stringify({ query: 'query($t: String!) { embed(model: "text-glove", inputs: [{ text: $t }]) { base64 } }', variables: { t: text } }),
      };
    case 'openai':
      return { url: `${url}/v1/embeddings`, body: JSON.stringify({ model: 'text-glove', input: text, encoding_format: 'base64' }) };
    case 'tei':
      return { url: `${url}/embed?model=text-glove`, body: JSON.stringify({ inputs: text }) };
    default: {
      const never: never = surface;
      throw new Error(String(never));
    }
  }
}

async function load(url: string, surface: Surface, kind: 'miss' | 'hit', n: number, next: () => string, ms: number): Promise<Row> {
  const warm = quick ? 500 : 1500;
  const t0 = performance.now();
  const ws = t0 + warm;
  const we = ws + ms;
  const lat: number[] = [];
  let done = 0;
  let errors = 0;
  const client = async (): Promise<void> => {
    while (performance.now() < we) {
      const r = request(url, surface, next());
      const s = performance.now();
      const res = await postHttp(r.url, r.body);
      const e = performance.now();
      if (e < ws || e > we) continue;
      if (res.status !== 200 || res.text.includes('"errors"')) {
        errors++;
        continue;
      }
      done++;
      lat.push(e - s);
    }
  };
  await Promise.all(Array.from({ length: n }, () => client()));
  return { surface, kind, concurrency: n, itemsPerS: done / (ms / 1000), latencyMs: summarise(lat), errors };
}

export function renderRestSection(r: { startedAt: string; git: string; cpu: string; cores: number; quick: boolean; rows: Row[] }): string {
  const f1 = (x: number): string => x.toFixed(1);
  const lines = [
    '## REST surfaces (issue 23): /v1/embeddings and /embed beside GraphQL',
    '',
    `Measured ${r.startedAt} by \`npm run bench:rest\`${r.quick ? ' --quick' : ''} on ${r.cpu}, ${r.cores} cores; source ${r.git}. One service ` +
      '(text-glove, defaults), the load generator on the same machine; one text per request, N closed-loop clients. Misses: every text new. ' +
      'Hits: 64 texts cached before the window, drawn in turn. GraphQL asks for `base64` (the text in a variable); /v1 for `encoding_format: "base64"`; /embed answers JSON floats.',
    '',
    '| surface | requests | N | items/s | p50 ms | p99 ms | errors |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: |',
    ...r.rows.map(
      (x) =>
        `| ${x.surface === 'graphql' ? 'GraphQL embed' : x.surface === 'openai' ? 'POST /v1/embeddings' : 'POST /embed (TEI)'} | ${x.kind === 'miss' ? 'cache misses' : 'memory hits'} | ${x.concurrency} | ${f1(x.itemsPerS)} | ${f1(x.latencyMs.p50)} | ${f1(x.latencyMs.p99)} | ${x.errors} |`,
    ),
  ];
  return lines.join('\n');
}

async function main(): Promise<void> {
  removeStaleScratch();
  const startedAt = new Date().toISOString();
  const port = await freePort();
  const svc = await ServiceProcess.start(ROOT, childEnv({ POLYRAY_SERVE_MODELS: 'text-glove' }, port), port, 180_000, () => {});
  try {
    // Sentences of BERT-vocabulary words (real English words, which GloVe knows too).
    await buildModels({ modelsDir: path.join(ROOT, 'models'), only: [BERT_MODELS.plain] });
    const corpus = await BertCorpus.load(path.join(ROOT, 'models', BERT_MODELS.plain, 'tokenizer.json'));
    const src = { next: (n: number) => corpus.text(n) };
    const cached = Array.from({ length: 64 }, () => src.next(12));
    for (const t of cached) await postHttp(`${svc.url}/v1/embeddings`, JSON.stringify({ model: 'text-glove', input: t }));
    let k = 0;
    const rows: Row[] = [];
    const ms = quick ? 2000 : 8000;
    for (const kind of ['hit', 'miss'] as const) {
      for (const surface of ['graphql', 'openai', 'tei'] as const) {
        for (const n of [1, 16]) {
          const next = kind === 'hit' ? () => cached[k++ % cached.length]! : () => src.next(12);
          const row = await load(svc.url, surface, kind, n, next, ms);
          rows.push(row);
          log(`  ${surface} ${kind} N=${n}: ${row.itemsPerS.toFixed(1)} items/s, p50 ${row.latencyMs.p50.toFixed(1)} ms, ${row.errors} errors`);
        }
      }
    }
    const host = hostInfo();
    const result = { startedAt, git: gitState(ROOT), cpu: host.cpuModel, cores: host.cores, quick, rows };
    publish(OUT, 'rest-results.json', result, 'rest-surfaces', renderRestSection(result));
  } finally {
    await svc.stop();
    removeScratch();
  }
}

await main();
