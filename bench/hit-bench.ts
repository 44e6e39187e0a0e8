/**
 * `npm run bench:hit` — the memory-hit path against its floor (issue 27), in one run: Polyray's `_entities`
 * (Post.embedding, text-glove, every text cached) beside bench/floor-server.ts, a bare node:http server that
 * answers the same request shape from a Map. Rows: 64 posts per call as base64, 64 posts as JSON floats,
 * one post per call; N closed-loop clients on keep-alive connections.
 *
 * Writes bench/hit-results.json and the "Hit path" section of bench/RESULTS.md (`npm run bench` keeps it).
 * Options: --quick, --out DIR, --cpu-prof DIR (profiles Polyray during the run), --shapes a,b (some rows only),
 * --no-floor (Polyray only).
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
const PROFILE = cli.opt('--cpu-prof');
const SHAPES = (cli.opt('--shapes')?.split(',') ?? ['base64x64', 'floatsx64', 'base64x1']) as Shape[];
const FLOOR = !cli.has('--no-floor');
const CLIENTS = 16;

type Shape = 'base64x64' | 'floatsx64' | 'base64x1';
interface Row {
  server: 'polyray' | 'floor';
  shape: Shape;
  vectorsPerS: number;
  latencyMs: Latency;
  errors: number;
}

const QUERY = {
  base64: 'query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "text-glove") { base64 } } } }',
  floats: 'query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "text-glove") { vector } } } }',
};

async function load(url: string, shape: Shape, texts: readonly string[], ms: number): Promise<Omit<Row, 'server' | 'shape'>> {
  const posts = shape === 'base64x1' ? 1 : 64;
  const query = shape === 'floatsx64' ? QUERY.floats : QUERY.base64;
  const warm = quick ? 500 : 2000;
  const ws = performance.now() + warm;
  const we = ws + ms;
  const lat: number[] = [];
  let vectors = 0;
  let errors = 0;
  let k = 0;
  const client = async (): Promise<void> => {
    while (performance.now() < we) {
      const r = Array.from({ length: posts }, () => ({ __typename: 'Post', id: String(k), text: texts[k++ % texts.length]! }));
      const s = performance.now();
      const res = await postHttp(`${url}/graphql`, JSON.stringify({ query, variables: { r } }));
      const e = performance.now();
      if (e < ws || e > we) continue;
      if (res.status !== 200 || res.text.includes('"errors"')) {
        errors++;
        continue;
      }
      vectors += posts;
      lat.push(e - s);
    }
  };
  await Promise.all(Array.from({ length: CLIENTS }, () => client()));
  return { vectorsPerS: vectors / (ms / 1000), latencyMs: summarise(lat), errors };
}

export function renderHitSection(r: { startedAt: string; git: string; cpu: string; cores: number; quick: boolean; rows: Row[] }): string {
  const label: Record<Shape, string> = { base64x64: '64 posts, base64', floatsx64: '64 posts, JSON floats', base64x1: '1 post, base64' };
  const target: Record<Shape, number> = { base64x64: 0.5, floatsx64: 0.9, base64x1: 0.7 };
  const lines = [
    '## Hit path (issue 27): `_entities` memory hits against a bare node:http floor',
    '',
    `Measured ${r.startedAt} by \`npm run bench:hit\`${r.quick ? ' --quick' : ''} on ${r.cpu}, ${r.cores} cores; source ${r.git}. Polyray (text-glove, ` +
      `defaults, every text cached) and the floor (bench/floor-server.ts: node:http, JSON.parse, a Map, JSON.stringify) as child processes, one at a time; ${CLIENTS} ` +
      'closed-loop clients on keep-alive connections, the load generator on the same machine.',
    '',
    '| request | Polyray vectors/s | floor vectors/s | ratio | target | Polyray p50 / p99 ms | floor p50 / p99 ms |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const shape of ['base64x64', 'floatsx64', 'base64x1'] as const) {
    const p = r.rows.find((x) => x.server === 'polyray' && x.shape === shape);
    const f = r.rows.find((x) => x.server === 'floor' && x.shape === shape);
    if (!p || !f) continue;
    lines.push(
      `| ${label[shape]} | ${p.vectorsPerS.toFixed(0)} | ${f.vectorsPerS.toFixed(0)} | ${(p.vectorsPerS / f.vectorsPerS).toFixed(2)}× | ≥ ${target[shape]}× | ${p.latencyMs.p50.toFixed(1)} / ${p.latencyMs.p99.toFixed(1)} | ${f.latencyMs.p50.toFixed(1)} / ${f.latencyMs.p99.toFixed(1)} |`,
    );
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  removeStaleScratch();
  const startedAt = new Date().toISOString();
  await buildModels({ modelsDir: path.join(ROOT, 'models'), only: [BERT_MODELS.plain] });
  const corpus = await BertCorpus.load(path.join(ROOT, 'models', BERT_MODELS.plain, 'tokenizer.json'));
  const texts = Array.from({ length: 256 }, () => corpus.text(12));
  const ms = quick ? 3000 : 10_000;
  const rows: Row[] = [];

  const port = await freePort();
  const env = childEnv({ POLYRAY_SERVE_MODELS: 'text-glove' }, port);
  const profile = PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(PROFILE)}`] : [];
  const svc = await ServiceProcess.start(ROOT, env, port, 180_000, () => {}, 'src/main.ts', profile);
  const cached: Record<string, number[]> = {};
  try {
    // Fill the cache, and take the vectors for the floor.
    for (let i = 0; i < texts.length; i += 64) {
      const chunk = texts.slice(i, i + 64);
      const r = Array.from(chunk, (text, j) => ({ __typename: 'Post', id: String(i + j), text }));
      const res = await postHttp(`${svc.url}/graphql`, JSON.stringify({ query: QUERY.floats, variables: { r } }));
      const body = JSON.parse(res.text) as { data: { _entities: { embedding: { vector: number[] } }[] } };
      body.data._entities.forEach((e, j) => {
        cached[chunk[j]!] = e.embedding.vector;
      });
    }
    for (const shape of SHAPES) {
      const row = { server: 'polyray' as const, shape, ...(await load(svc.url, shape, texts, ms)) };
      rows.push(row);
      log(`  polyray ${shape}: ${row.vectorsPerS.toFixed(0)} vectors/s, p50 ${row.latencyMs.p50.toFixed(1)} ms, ${row.errors} errors`);
    }
  } finally {
    await svc.stop();
  }
  const floorPort = await freePort();
  const floor = await ServiceProcess.start(ROOT, { ...childEnv({}, floorPort) }, floorPort, 60_000, () => {}, 'bench/floor-server.ts');
  try {
    await fetch(`${floor.url}/vectors`, { method: 'PUT', body: JSON.stringify(cached) });
    for (const shape of FLOOR ? SHAPES : []) {
      const row = { server: 'floor' as const, shape, ...(await load(floor.url, shape, texts, ms)) };
      rows.push(row);
      log(`  floor ${shape}: ${row.vectorsPerS.toFixed(0)} vectors/s, p50 ${row.latencyMs.p50.toFixed(1)} ms, ${row.errors} errors`);
    }
  } finally {
    await floor.stop();
    removeScratch();
  }
  const host = hostInfo();
  const result = { startedAt, git: gitState(ROOT), cpu: host.cpuModel, cores: host.cores, quick, rows };
  publish(OUT, 'hit-results.json', result, 'hit-path', renderHitSection(result));
}

await main();
