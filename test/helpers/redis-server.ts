/**
 * Test helpers that run real `redis-server` processes on free loopback ports: a standalone server and a
 * 3-master Redis Cluster, with kill / restart for fault tests.
 *
 * Every process is started with persistence off (`--save "" --appendonly no`) in its own temp dir, bound
 * to 127.0.0.1 only. Processes are also killed on process exit, so a test that fails before its `after`
 * hook ran does not leave servers behind.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const HOST = '127.0.0.1';

export interface RedisServerHandle {
  readonly host: string;
  readonly port: number;
  /** `redis://127.0.0.1:<port>` */
  readonly url: string;
  /** Working directory (logs, cluster config). */
  readonly dir: string;
  /** Whether the process is currently running. */
  readonly running: boolean;
  /** Kills the process (SIGKILL by default) and waits until it has exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts the server again on the same port (after `kill`) and waits until it answers PING. */
  restart(): Promise<void>;
  /** Kills the process and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** Runs `redis-cli -p <port> <args...>` and returns its stdout (trimmed). */
  cli(...args: string[]): Promise<string>;
}

export interface StartRedisOptions {
  /** Extra `redis-server` arguments, e.g. `['--enable-debug-command', 'yes']`. */
  extraArgs?: string[];
  /** Port to use; a free one when absent. */
  port?: number;
  /** Directory to run in; a new temp dir (removed by `stop`) when absent. */
  dir?: string;
}

const live = new Set<ChildProcess>();
function killAll(): void {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.on('exit', killAll);
// 'exit' does not run when the process is ended by a signal (e.g. a runner's timeout): kill the servers,
// then let the signal take its default course.
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    killAll();
    process.kill(process.pid, sig);
  });
}

/** A TCP port nobody listens on right now (bind port 0 and release it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export async function redisCli(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await execFileAsync('redis-cli', ['-h', HOST, '-p', String(port), ...args], { timeout: 5000 });
  return stdout.trim();
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitUntil(what: string, deadlineMs: number, check: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function waitExit(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => p.once('exit', () => resolve()));
}

async function spawnServer(port: number, dir: string, extraArgs: string[]): Promise<ChildProcess> {
  const args = [
    '--port',
    String(port),
    '--bind',
    HOST,
    '--save',
    '',
    '--appendonly',
    'no',
    '--dir',
    dir,
    '--logfile',
    join(dir, `redis-${port}.log`),
    '--daemonize',
    'no',
    ...extraArgs,
  ];
  const proc = spawn('redis-server', args, { stdio: 'ignore' });
  live.add(proc);
  proc.once('exit', () => live.delete(proc));
  let exited = false;
  proc.once('exit', () => (exited = true));
  try {
    await waitUntil(`redis-server on port ${port}`, 5000, async () => {
      if (exited) throw new Error('exited');
      return (await redisCli(port, 'PING')) === 'PONG';
    });
  } catch (e) {
    proc.kill('SIGKILL');
    await waitExit(proc);
    const log = await readFile(join(dir, `redis-${port}.log`), 'utf8').catch(() => '');
    throw new Error(`redis-server on port ${port} did not start: ${(e as Error).message}\n${log.slice(-2000)}`);
  }
  if (exited) throw new Error(`redis-server on port ${port} exited`);
  return proc;
}

/** Starts a standalone redis-server on a free loopback port and waits until it answers PING. */
export async function startRedisServer(opts: StartRedisOptions = {}): Promise<RedisServerHandle> {
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'polyray-redis-')));
  const extraArgs = opts.extraArgs ?? [];
  let port = opts.port ?? 0;
  let proc: ChildProcess | undefined;
  // A port found free may be taken before redis binds it (other test processes): retry with a new one.
  for (let attempt = 0; ; attempt++) {
    if (opts.port === undefined) port = await freePort();
    try {
      proc = await spawnServer(port, dir, extraArgs);
      break;
    } catch (e) {
      if (opts.port !== undefined || attempt >= 4) {
        if (ownDir) await rm(dir, { recursive: true, force: true });
        throw e;
      }
    }
  }
  let stopped = false;
  const handle: RedisServerHandle = {
    host: HOST,
    port,
    url: `redis://${HOST}:${port}`,
    dir,
    get running() {
      return proc !== undefined && proc.exitCode === null && proc.signalCode === null;
    },
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (!proc) return;
      const p = proc;
      proc = undefined;
      if (p.exitCode === null && p.signalCode === null) p.kill(signal);
      await waitExit(p);
    },
    async restart() {
      if (stopped) throw new Error('server was stopped');
      await handle.kill();
      proc = await spawnServer(port, dir, extraArgs);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await handle.kill();
      if (ownDir) await rm(dir, { recursive: true, force: true });
    },
    cli: (...args: string[]) => redisCli(port, ...args),
  };
  return handle;
}

export interface RedisClusterHandle {
  /** Seed nodes, one per master. */
  readonly nodes: { host: string; port: number }[];
  readonly servers: RedisServerHandle[];
  /** Kills every process and removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

export interface StartRedisClusterOptions {
  /**
   * Extra `redis-server` arguments for every node, e.g. `['--cluster-require-full-coverage', 'no']` so
   * that the live masters keep serving their slots once the Cluster has marked a killed one failed.
   */
  extraArgs?: string[];
}

/**
 * Starts `masters` redis-servers in cluster mode, joins them with `redis-cli --cluster create` (no
 * replicas) and waits until every node reports `cluster_state:ok` with all 16384 slots assigned.
 */
export async function startRedisCluster(masters = 3, opts: StartRedisClusterOptions = {}): Promise<RedisClusterHandle> {
  const dir = await mkdtemp(join(tmpdir(), 'polyray-redis-cluster-'));
  const servers: RedisServerHandle[] = [];
  const stop = async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < masters; i++) {
      // The cluster bus needs a second port; name it explicitly (Redis >= 7) instead of relying on
      // port + 10000 being free. Two ports found free one after the other may coincide, or be taken by
      // another process before redis binds them: retry with new ones.
      for (let attempt = 1; ; attempt++) {
        const port = await freePort();
        let busPort = await freePort();
        while (busPort === port) busPort = await freePort();
        try {
          servers.push(
            await startRedisServer({
              dir,
              port,
              extraArgs: [
                '--cluster-enabled',
                'yes',
                '--cluster-config-file',
                join(dir, `nodes-${port}.conf`),
                '--cluster-node-timeout',
                '2000',
                '--cluster-port',
                String(busPort),
                ...(opts.extraArgs ?? []),
              ],
            }),
          );
          break;
        } catch (e) {
          if (attempt >= 5) throw e;
        }
      }
    }
    await execFileAsync('redis-cli', ['--cluster', 'create', ...servers.map((s) => `${HOST}:${s.port}`), '--cluster-replicas', '0', '--cluster-yes'], {
      timeout: 20000,
    });
    await waitUntil('cluster_state:ok on all nodes', 15000, async () => {
      for (const s of servers) {
        const info = await s.cli('CLUSTER', 'INFO');
        if (!info.includes('cluster_state:ok') || !info.includes('cluster_slots_assigned:16384') || !info.includes(`cluster_known_nodes:${masters}`)) {
          return false;
        }
      }
      return true;
    });
  } catch (e) {
    await stop();
    throw e;
  }
  return { nodes: servers.map((s) => ({ host: s.host, port: s.port })), servers, stop };
}

/** Parses `INFO` output into a map of field -> value. */
export function parseInfo(info: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of info.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out.set(line.slice(0, i), line.slice(i + 1));
  }
  return out;
}

/** Number of calls of `command` (lower case) according to `INFO commandstats`; 0 if never called. */
export function commandCalls(commandstats: string, command: string): number {
  const v = parseInfo(commandstats).get(`cmdstat_${command}`);
  const m = v && /calls=(\d+)/.exec(v);
  return m ? Number(m[1]) : 0;
}

/** Polls `check` every 10 ms until it returns true; throws after `timeoutMs`. */
export async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}
