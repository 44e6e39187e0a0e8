/**
 * `npm run bench:hit` — the memory-hit path against its floor (issue 27), in one run: Polyray's `_entities`
 * (Post.embedding, text-glove, every text cached) beside bench/floor-server.ts, a bare node:http server that
 * answers the same request shape from a Map. Rows: 64 posts per call as base64, 64 posts as JSON floats,
 * one post per call; N closed-loop clients on keep-alive connections.
 *
 * Writes bench/hit-results.json and the "Hit path" section of bench/RESULTS.md (`npm run bench` keeps it).
 * A third server, Polyray with request-stream tracing off (POLYRAY_TRACE_SAMPLE_RATE=0), is loaded in the same
 * rounds: the bench's 256 texts are all heavy keys, so the default tracer records every lookup, and the
 * column shows what that costs.
 * Options: --quick, --out DIR, --cpu-prof DIR (profiles Polyray during the run), --shapes a,b (some rows only),
 * --no-floor (Polyray only), --no-untraced (no tracing-off server), --set KEY=VALUE (a service setting, repeatable).
 */
import path from 'node:path';
import { benchCli, describeSettings, publish } from './cli.ts';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { gitState, hostInfo } from './conditions.ts';
import { type Latency, postHttp, summarise } from './load.ts';
import { childEnv, cpuSnapshot, type CpuSnapshot, freePort, removeScratch, removeStaleScratch, SERVICE_SCRIPT, ServiceProcess } from './service.ts';
import { BertCorpus } from './transformer.ts';

const cli = benchCli();
const { root: ROOT, quick, out: OUT, log } = cli;
const PROFILE = cli.opt('--cpu-prof');
const SHAPES = (cli.opt('--shapes')?.split(',') ?? ['base64x64', 'floatsx64', 'base64x1']) as Shape[];
const FLOOR = !cli.has('--no-floor');
const UNTRACED = !cli.has('--no-untraced');
const CLIENTS = 16;
/** Rounds per server and shape (one with --quick). */
const ROUNDS = 3;

type Shape = 'base64x64' | 'floatsx64' | 'base64x1';
interface Row {
  server: 'polyray' | 'untraced' | 'floor';
  shape: Shape;
  vectorsPerS: number;
  /** The server process's CPU time (all threads) per vector served, µs. */
  cpuUsPerVector: number;
  latencyMs: Latency;
  errors: number;
}

const QUERY = {
  base64: 'query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "text-glove") { base64 } } } }',
  floats: 'query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "text-glove") { vector } } } }',
};

async function load(url: string, pid: number | undefined, shape: Shape, texts: readonly string[], ms: number): Promise<Omit<Row, 'server' | 'shape'>> {
  const posts = shape === 'base64x1' ? 1 : 64;
  const query = shape === 'floatsx64' ? QUERY.floats : QUERY.base64;
  const warm = quick ? 500 : 2000;
  const ws = performance.now() + warm;
  const we = ws + ms;
  const lat: number[] = [];
  let vectors = 0;
  let errors = 0;
  let k = 0;
  let cpuA: CpuSnapshot | undefined;
  let cpuB: CpuSnapshot | undefined;
  const marks = [setTimeout(() => (cpuA = cpuSnapshot(pid)), warm), setTimeout(() => (cpuB = cpuSnapshot(pid)), warm + ms)];
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
  for (const m of marks) clearTimeout(m);
  const cpuS = cpuA && cpuB ? cpuB.serviceAll - cpuA.serviceAll : Number.NaN;
  return { vectorsPerS: vectors / (ms / 1000), cpuUsPerVector: (cpuS * 1e6) / vectors, latencyMs: summarise(lat), errors };
}

export function renderHitSection(r: {
  startedAt: string;
  git: string;
  cpu: string;
  cores: number;
  quick: boolean;
  settings: Record<string, string>;
  rows: Row[];
}): string {
  const label: Record<Shape, string> = { base64x64: '64 posts, base64', floatsx64: '64 posts, JSON floats', base64x1: '1 post, base64' };
  const target: Record<Shape, number> = { base64x64: 0.5, floatsx64: 0.9, base64x1: 0.7 };
  const lines = [
    '## Hit path (issue 27): `_entities` memory hits against a bare node:http floor',
    '',
    `Measured ${r.startedAt} by \`npm run bench:hit\`${r.quick ? ' --quick' : ''} on ${r.cpu}, ${r.cores} cores; source ${r.git}. Polyray (text-glove, ` +
      `defaults${describeSettings(r.settings)}, every text cached, compiled dist/ on plain node as \`npm start\` runs it) and the floor (bench/floor-server.ts: node:http, JSON.parse, a Map, JSON.stringify) as child processes, loaded one at a time; ${CLIENTS} ` +
      `closed-loop clients on keep-alive connections, the load generator on the same machine. ${r.quick ? 'One round' : `${ROUNDS} rounds of 6 s`} per server and request, alternating between the servers; each cell is the round of median throughput. ` +
      'CPU per vector: the server process (all threads) over the round, divided by the vectors it served. ' +
      "Polyray keeps each hot vector's reply text (base64 or JSON, POLYRAY_VECTOR_TEXT_MEMO_MB): every text here is hot, so after its first answer Polyray copies text the floor encodes on every answer (most of a JSON row's cost). " +
      (r.rows.some((x) => x.server === 'untraced')
        ? 'Last column: a third server, Polyray with request-stream tracing off (POLYRAY_TRACE_SAMPLE_RATE=0), loaded in the same rounds; the 256 texts are all heavy keys, so the default tracer records and writes every lookup.'
        : ''),
    '',
    '| request | Polyray vectors/s | floor vectors/s | ratio | target | CPU µs per vector, Polyray / floor | Polyray p50 / p99 ms | floor p50 / p99 ms | tracing off: vectors/s, ratio |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const shape of ['base64x64', 'floatsx64', 'base64x1'] as const) {
    const p = r.rows.find((x) => x.server === 'polyray' && x.shape === shape);
    const f = r.rows.find((x) => x.server === 'floor' && x.shape === shape);
    const u = r.rows.find((x) => x.server === 'untraced' && x.shape === shape);
    if (!p || !f) continue;
    const untraced = u ? `${u.vectorsPerS.toFixed(0)}, ${(u.vectorsPerS / f.vectorsPerS).toFixed(2)}×` : '—';
    lines.push(
      `| ${label[shape]} | ${p.vectorsPerS.toFixed(0)} | ${f.vectorsPerS.toFixed(0)} | ${(p.vectorsPerS / f.vectorsPerS).toFixed(2)}× | ≥ ${target[shape]}× | ${p.cpuUsPerVector.toFixed(2)} / ${f.cpuUsPerVector.toFixed(2)} | ${p.latencyMs.p50.toFixed(1)} / ${p.latencyMs.p99.toFixed(1)} | ${f.latencyMs.p50.toFixed(1)} / ${f.latencyMs.p99.toFixed(1)} | ${untraced} |`,
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
  // Rounds alternate between the two servers, so that a machine whose speed drifts (a shared VM) moves
  // both alike; each row is the round of median throughput.
  const ms = quick ? 3000 : 6000;
  const rounds = quick ? 1 : ROUNDS;
  const rows: Row[] = [];

  const port = await freePort();
  const env = childEnv({ POLYRAY_SERVE_MODELS: 'text-glove', ...cli.settings }, port);
  const profile = PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(PROFILE)}`] : [];
  const svc = await ServiceProcess.start(ROOT, env, port, 180_000, () => {}, SERVICE_SCRIPT, profile);
  let floor: ServiceProcess | undefined;
  let untraced: ServiceProcess | undefined;
  try {
    // Fill each Polyray's cache; Polyray's vectors go to the floor.
    const fill = async (url: string): Promise<Record<string, number[]>> => {
      const cached: Record<string, number[]> = {};
      for (let i = 0; i < texts.length; i += 64) {
        const chunk = texts.slice(i, i + 64);
        const r = Array.from(chunk, (text, j) => ({ __typename: 'Post', id: String(i + j), text }));
        const res = await postHttp(`${url}/graphql`, JSON.stringify({ query: QUERY.floats, variables: { r } }));
        const body = JSON.parse(res.text) as { data: { _entities: { embedding: { vector: number[] } }[] } };
        body.data._entities.forEach((e, j) => {
          cached[chunk[j]!] = e.embedding.vector;
        });
      }
      return cached;
    };
    const cached = await fill(svc.url);
    if (UNTRACED) {
      const untracedPort = await freePort();
      const untracedEnv = childEnv({ POLYRAY_SERVE_MODELS: 'text-glove', ...cli.settings, POLYRAY_TRACE_SAMPLE_RATE: '0' }, untracedPort);
      untraced = await ServiceProcess.start(ROOT, untracedEnv, untracedPort, 180_000, () => {}, SERVICE_SCRIPT);
      await fill(untraced.url);
    }
    if (FLOOR) {
      const floorPort = await freePort();
      floor = await ServiceProcess.start(ROOT, { ...childEnv({}, floorPort) }, floorPort, 60_000, () => {}, 'bench/floor-server.ts');
      await fetch(`${floor.url}/vectors`, { method: 'PUT', body: JSON.stringify(cached) });
    }
    const servers = [
      { server: 'polyray' as const, proc: svc },
      ...(untraced ? [{ server: 'untraced' as const, proc: untraced }] : []),
      ...(floor ? [{ server: 'floor' as const, proc: floor }] : []),
    ];
    for (const shape of SHAPES) {
      const runs = new Map<Row['server'], Omit<Row, 'server' | 'shape'>[]>();
      for (let round = 0; round < rounds; round++) {
        for (const { server, proc } of servers) {
          const run = await load(proc.url, proc.pid, shape, texts, ms);
          runs.set(server, [...(runs.get(server) ?? []), run]);
          log(
            `  ${server} ${shape} round ${round + 1}: ${run.vectorsPerS.toFixed(0)} vectors/s, ${run.cpuUsPerVector.toFixed(2)} µs CPU/vector, p50 ${run.latencyMs.p50.toFixed(1)} ms, ${run.errors} errors`,
          );
        }
      }
      for (const [server, list] of runs) {
        const sorted = [...list].sort((a, b) => a.vectorsPerS - b.vectorsPerS);
        rows.push({ server, shape, ...sorted[Math.floor(sorted.length / 2)]! });
      }
    }
  } finally {
    await svc.stop();
    await untraced?.stop();
    await floor?.stop();
    removeScratch();
  }
  const host = hostInfo();
  const result = { startedAt, git: gitState(ROOT), cpu: host.cpuModel, cores: host.cores, quick, settings: cli.settings, rows };
  publish(OUT, 'hit-results.json', result, 'hit-path', renderHitSection(result));
}

await main();
