/**
 * A Polyray replica in a child process (`node --import tsx src/main.ts`), for tests that measure what
 * another client sees while this test process does heavy work of its own: an in-process server would share
 * the test's event loop, and the test's own JSON building or busy-waiting would show up as server latency.
 *
 * A probe runs in a process of its own, likewise (a worker thread would share this process's heap
 * activity and GC helper threads with the test): it asks for one cached embedding at a fixed interval and
 * records latencies between `start()` and `stop()`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { freePort } from './redis-server.ts';

export interface ChildServer {
  url: string;
  process: ChildProcess;
  stop(): Promise<void>;
  /** The Prometheus text of /metrics, read with `headers`. */
  metrics(headers: Record<string, string>): Promise<string>;
  /** The last 4,000 characters the process wrote (stdout and stderr), for assertion messages. */
  log(): string;
}

/** Starts src/main.ts with `env` (plus HOST, PORT, LOG_LEVEL) and resolves once /readyz answers 200. */
export async function startChildServer(env: Record<string, string>, timeoutMs = 120_000): Promise<ChildServer> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', ...env, HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const keep = (b: Buffer): void => {
    log = (log + b.toString()).slice(-4000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited during start-up:\n${log}`);
    try {
      if ((await fetch(`${url}/readyz`)).status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`server not ready after ${timeoutMs} ms:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    process: child,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 8000);
        await exited;
        clearTimeout(t);
      }
    },
    metrics: async (headers) => (await fetch(`${url}/metrics`, { headers })).text(),
    log: () => log,
  };
}

export interface Probe {
  start(): void;
  /** Stops measuring; resolves with the latencies (ms) of the answers received meanwhile and the errors. */
  stop(): Promise<{ latencies: number[]; errors: number; firstError?: string }>;
  close(): Promise<void>;
}

// The probe asks all the time, also between the cases it measures (their answers are not counted): a
// steady client, whose connection and code paths stay warm, as the suite means to measure.
const PROBE_SOURCE = `
const { url, body, headers, everyMs } = JSON.parse(process.env.PROBE_CONFIG);
const parentPort = { on: (e, f) => process.on(e, f), postMessage: (m) => process.send(m) };
let on = false, latencies = [], errors = 0, firstError;
setInterval(() => {
  const counted = on;
  const t0 = performance.now();
  fetch(url, { method: 'POST', headers, body }).then(async (res) => {
    const j = await res.json();
    const ok = res.status === 200 && !j.errors && j.data && j.data.embed && j.data.embed[0].source === 'MEMORY';
    if (!counted || !on) return;
    if (!ok) { errors++; firstError ??= JSON.stringify(j).slice(0, 300); }
    else latencies.push(performance.now() - t0);
  }, (e) => { if (counted && on) { errors++; firstError ??= String(e); } });
}, everyMs);
parentPort.on('message', (m) => {
  if (m === 'start') { on = true; latencies = []; errors = 0; firstError = undefined; }
  if (m === 'stop') { on = false; parentPort.postMessage({ latencies, errors, firstError }); }
  if (m === 'close') process.exit(0);
});
// Warm up (connection, JIT) before saying ready: the first requests of a fresh process are slow.
(async () => {
  for (let k = 0; k < 20; k++) await fetch(url, { method: 'POST', headers, body }).then((r) => r.arrayBuffer());
  process.send('ready');
})();
`;

/** A probe of `server` asking for `text` (already cached) with `model`, every `everyMs`, as the client `headers` name; resolves once it is warm. */
export async function startProbe(server: { url: string }, model: string, text: string, headers: Record<string, string>, everyMs = 25): Promise<Probe> {
  const body = JSON.stringify({ query: `{ embed(model: "${model}", inputs: [{ text: ${JSON.stringify(text)} }]) { source } }` });
  const config = { url: `${server.url}/graphql`, body, headers: { 'content-type': 'application/json', ...headers }, everyMs };
  const child = spawn(process.execPath, ['-e', PROBE_SOURCE], {
    env: { PATH: process.env['PATH'] ?? '', PROBE_CONFIG: JSON.stringify(config) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ready = new Promise<void>((r) => child.once('message', () => r()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await ready;
  return {
    start: () => void ready.then(() => child.send('start')),
    stop: async () => {
      await ready;
      return new Promise((resolve) => {
        child.once('message', resolve as (m: unknown) => void);
        child.send('stop');
      });
    },
    close: async () => {
      if (child.exitCode === null) child.send('close');
      await exited;
    },
  };
}
