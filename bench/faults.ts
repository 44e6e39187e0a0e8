/**
 * `npm run test:faults` — the fault suite (issue 28): the fault tests in their long versions, on real
 * Redis, PostgreSQL and worker processes, each recording its figures; then the "Fault suite" section of
 * bench/RESULTS.md from those figures. Exits with the tests' status, so CI fails when a guarantee breaks.
 * Options: --quick (the short versions, as `npm test` runs them), --out DIR.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { benchCli, publish } from './cli.ts';
import { gitState, hostInfo } from './conditions.ts';

const FILES = [
  'test/worker-kills.test.ts',
  'test/worker-faults.test.ts',
  'test/overload.test.ts',
  'test/shutdown.test.ts',
  'test/redis-faults.test.ts',
  'test/ledger.test.ts',
  'test/ledger-cluster.test.ts',
  'test/usage-books.test.ts',
];

type Figures = Record<string, unknown>;

const cli = benchCli();
const figuresDir = mkdtempSync(path.join(tmpdir(), 'polyray-faults-'));
const startedAt = new Date().toISOString();
const run = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', ...FILES], {
  cwd: cli.root,
  stdio: 'inherit',
  env: { ...process.env, POLYRAY_FAULTS_LONG: cli.quick ? '0' : '1', POLYRAY_FAULTS_OUT: figuresDir },
});
const figures: Record<string, Figures> = {};
for (const f of readdirSync(figuresDir)) figures[path.basename(f, '.json')] = JSON.parse(readFileSync(path.join(figuresDir, f), 'utf8')) as Figures;
rmSync(figuresDir, { recursive: true, force: true });

const passed = run.status === 0;
const host = hostInfo();
const g = (name: string, key: string): string => {
  const v = figures[name]?.[key];
  return v === undefined ? 'n/a' : typeof v === 'number' ? String(v) : JSON.stringify(v);
};
const k = figures['worker-kills'];
const o = figures['overload'];
const rows = [
  '| fault | what the suite measured | guarantee |',
  '| --- | --- | --- |',
  `| a worker killed (SIGKILL) every ${g('worker-kills', 'killEveryMs')} ms for ${Number(k?.['runMs'] ?? 0) / 1000} s under load (text-bert-synthetic, 8 clients) | ${g('worker-kills', 'kills')} kills (${g('worker-kills', 'killsMidRun')} mid-run), ${g('worker-kills', 'requests')} requests, ${g('worker-kills', 'failedRequests')} failed (${JSON.stringify(k?.['failedByCode'] ?? {})}), ${g('worker-kills', 'itemsRequeued')} items requeued, none hung; ok/s ${g('worker-kills', 'okPerSecondBefore')} before, ${g('worker-kills', 'okPerSecond5to10sAfterLastKill')} 5–10 s after the last kill | the process survives; INFERENCE_FAILED requests ≤ items of killed batches, any other failure only OVERLOADED at admission (retryable, nothing run); ≥ 90 % throughput within 5 s |`,
  `| a replacement worker that cannot load its model | /readyz 503 after ${g('worker-cannot-load', 'readyz503AfterMs')} ms | FAILED and /readyz 503 within 2 s |`,
  `| ~10× overload for ${g('overload', 'windowS')} s (${g('overload', 'connections')} connections, 8 ~300-token texts each, plus callers quitting after 300 ms) | accepted ${g('overload', 'accepted')}: p50 ${g('overload', 'acceptedP50Ms')} / p99 ${g('overload', 'acceptedP99Ms')} ms (longest batch ≤ ${g('overload', 'longestBatchAtMostMs')} ms); refused ${g('overload', 'refused')} (p99 ${g('overload', 'refusedP99Ms')} ms); ${g('overload', 'itemsDroppedUnrun')} of ${g('overload', 'abandonedItems')} abandoned items dropped unrun; one request ${g('overload', 'baselineMs')} ms before, ${JSON.stringify((o?.['afterStopMs'] as { afterS: number; ms: number }[] | undefined)?.map((x) => `${x.ms} ms at ${x.afterS} s`) ?? [])} after | answered within the 2 s bound + the batch running at admission (+ tokenisation and HTTP under load); recovery ≤ 5 s |`,
  `| SIGTERM with a backlog past the grace period (800 ms) | exit ${g('sigterm', 'exitMsAfterSigterm')} ms after the signal; ${g('sigterm', 'queuedAtSignal')} queued answered SHUTTING_DOWN; booked ${g('sigterm', 'booked')} of ${g('sigterm', 'deliveredBefore')} delivered | what was delivered is booked once; nothing undelivered is billed |`,
  `| SIGKILL under load (8 clients, ledger flush 200 ms) | ${g('sigkill', 'delivered')} delivered, ${g('sigkill', 'booked')} booked, ${g('sigkill', 'lost')} lost (${g('sigkill', 'lostPercent')} % of a ${g('sigkill', 'runS')} s run; ${g('sigkill', 'deliveredInLast400Ms')} delivered in the last 400 ms) | loss ≤ one flush interval of usage |`,
  `| Redis hung 5 s | global tier used again ${g('redis-hang', 'globalTierBackAfterMs')} ms after Redis answered | within ~1 s |`,
];
const section = [
  '## Fault suite (issue 28): `npm run test:faults`',
  '',
  `Measured ${startedAt} by \`npm run test:faults\`${cli.quick ? ' --quick' : ''} on ${host.cpuModel}, ${host.cores} cores; source ${gitState(cli.root)}. ` +
    `Real worker processes, Redis and PostgreSQL servers of the tests' own; the load generators run on the same machine. The suite ${passed ? 'passed' : 'FAILED'} ` +
    `(${FILES.map((f) => path.basename(f)).join(', ')}); the Redis restart (standalone and one Cluster master) and PostgreSQL faults are in test/ledger.test.ts, test/ledger-cluster.test.ts and test/usage-books.test.ts, ` +
    'whose assertions are exact (the books equal what was charged), so they have no figure of their own here.',
  '',
  ...rows,
].join('\n');
publish(cli.out, 'faults-results.json', { startedAt, passed, figures }, 'faults', section);
process.exitCode = run.status ?? 1;
