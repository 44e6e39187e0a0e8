/**
 * A Polyray replica in a child process (`node dist/main.js`, as `npm start` runs it), for tests that measure what
 * another client sees while this test process does heavy work of its own: an in-process server would share
 * the test's event loop, and the test's own JSON building or busy-waiting would show up as server latency.
 *
 * A probe runs in a process of its own, likewise (a worker thread would share this process's heap
 * activity and GC helper threads with the test): it asks for one cached embedding at a fixed interval and
 * records latencies between `start()` and `stop()`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ensureBuilt } from '../../scripts/ensure-build.mjs';
import { freePort } from './redis-server.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface ChildServer {
  url: string;
  process: ChildProcess;
  stop(): Promise<void>;
  /** The Prometheus text of /metrics, read with `headers`. */
  metrics(headers: Record<string, string>): Promise<string>;
  /** The last 4,000 characters the process wrote (stdout and stderr), for assertion messages. */
  log(): string;
}

/**
 * Starts the compiled service (dist/, built first when src/ changed) with `env` (plus HOST, PORT, LOG_LEVEL)
 * and resolves once /readyz answers 200. Compiled, as deployed: through tsx, every Error's stack would also
 * read the source maps (tsx turns them on), and the first refusal of a kind cost tens of milliseconds that a
 * deployed replica never pays, which is what the latency these tests measure would then show.
 */
export async function startChildServer(env: Record<string, string>, timeoutMs = 120_000): Promise<ChildServer> {
  ensureBuilt(ROOT, () => {});
  const port = await freePort();
  const child = spawn(process.execPath, ['dist/main.js'], {
    cwd: ROOT,
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
// steady client, whose connection and code paths stay warm, as the suite means to measure. It asks with
// node:http on kept-alive connections rather than fetch: it shares the two cores with what it measures, and
// fetch (undici's streams and promises) took several times the CPU per request that the probe itself
// then added to the latencies it reported.
const PROBE_SOURCE = `
const http = require('node:http');
const { url, body, headers, everyMs } = JSON.parse(process.env.PROBE_CONFIG);
const agent = new http.Agent({ keepAlive: true });
const payload = Buffer.from(body);
const ask = (done) => {
  const req = http.request(url, { method: 'POST', agent, headers: { ...headers, 'content-length': payload.length } }, (res) => {
    const parts = [];
    res.on('data', (c) => parts.push(c));
    res.on('end', () => done(null, res.statusCode, Buffer.concat(parts).toString()));
  });
  req.on('error', (e) => done(e));
  req.end(payload);
};
let on = false, latencies = [], errors = 0, firstError;
setInterval(() => {
  const counted = on;
  const t0 = performance.now();
  ask((e, status, text) => {
    const t1 = performance.now();
    if (!counted || !on) return;
    if (e) { errors++; firstError ??= String(e); return; }
    let j; try { j = JSON.parse(text); } catch { j = {}; }
    const ok = status === 200 && !j.errors && j.data && j.data.embed && j.data.embed[0].source === 'MEMORY';
    if (!ok) { errors++; firstError ??= text.slice(0, 300); }
    else latencies.push(t1 - t0);
  });
}, everyMs);
process.on('message', (m) => {
  if (m === 'start') { on = true; latencies = []; errors = 0; firstError = undefined; }
  if (m === 'stop') { on = false; process.send({ latencies, errors, firstError }); }
  if (m === 'close') process.exit(0);
});
// Warm up (connection, JIT) before saying ready: the first requests of a fresh process are slow.
(async () => {
  for (let k = 0; k < 20; k++) await new Promise((r) => ask(r));
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
