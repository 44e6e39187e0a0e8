/**
 * The service under test as a child process (`node dist/main.js`, as `npm start` runs it), on a free loopback
 * port, plus CPU accounting from /proc for it, for this process and for the whole machine. The child
 * also preloads `orphan-guard.mjs`, which stops it when this process dies (even by SIGKILL).
 *
 * The child's environment is this process's minus every variable the service's config reads
 * (POLYRAY_*, REDIS_*, HOST, PORT, LOG_LEVEL, NODE_ENV), plus the bench's own settings, so a
 * developer's shell cannot silently change what is measured. Effective settings are computed with
 * the service's own `loadConfig` on that same environment.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ensureBuilt } from '../scripts/ensure-build.mjs';
import { loadConfig, type PolyrayConfig } from '../src/config/index.ts';

/** Asks the kernel for a free loopback port (bind port 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port > 0 ? resolve(port) : reject(new Error('could not get a free port'))));
    });
  });
}

const CONFIG_ENV = /^(POLYRAY_|REDIS_)|^(HOST|PORT|LOG_LEVEL|NODE_ENV)$/;

/**
 * Where the services write what they write by default under the working tree (request-trace files:
 * `.cache/traces` by default): a folder of the bench's own, removed at the end, so a run leaves nothing
 * in the repository while the service still does the same work.
 */
export const SCRATCH_DIR = mkdtempSync(path.join(os.tmpdir(), `polyray-bench-${process.pid}-`));

/** Removes scratch folders left by bench processes that no longer exist (killed before cleaning up). */
export function removeStaleScratch(): void {
  for (const name of readdirSync(os.tmpdir())) {
    const m = /^polyray-bench-(\d+)-/.exec(name);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') rmSync(path.join(os.tmpdir(), name), { recursive: true, force: true });
    }
  }
}

export function removeScratch(): void {
  rmSync(SCRATCH_DIR, { recursive: true, force: true });
}

let modelsDir: string | undefined;

/**
 * Makes every service load only `model`: a models folder in the scratch folder holding one real
 * directory of symlinks to the project's built files (the registry skips symlinked directories).
 * Returns the folder. Without this, services load every model of `models/`.
 */
export function pinSingleModel(root: string, model: string): string {
  const src = path.join(root, 'models', model);
  const dir = path.join(SCRATCH_DIR, 'models');
  mkdirSync(path.join(dir, model), { recursive: true });
  for (const f of readdirSync(src)) symlinkSync(path.join(src, f), path.join(dir, model, f));
  modelsDir = dir;
  return dir;
}

/**
 * A models folder of its own (in the scratch folder) holding `models`, each a real directory of symlinks
 * to the project's built files; unlike `pinSingleModel` it does not change the default folder of
 * `childEnv`: pass it as `POLYRAY_MODELS_DIR`.
 */
export function modelsFolder(root: string, name: string, models: string[]): string {
  const dir = path.join(SCRATCH_DIR, name);
  for (const model of models) {
    const src = path.join(root, 'models', model);
    mkdirSync(path.join(dir, model), { recursive: true });
    for (const f of readdirSync(src)) symlinkSync(path.join(src, f), path.join(dir, model, f));
  }
  return dir;
}

/** Peak resident set size (VmHWM) and current RSS of a process, in MiB; NaN when unreadable. */
export function peakRss(pid: number | undefined): { hwmMiB: number; rssMiB: number } {
  try {
    const s = readFileSync(`/proc/${String(pid)}/status`, 'utf8');
    const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
    return { hwmMiB: kb('VmHWM') / 1024, rssMiB: kb('VmRSS') / 1024 };
  } catch {
    return { hwmMiB: NaN, rssMiB: NaN };
  }
}

/**
 * The service as `npm start` and the container run it: the compiled dist/ on plain node (built first when
 * src/ changed). Through tsx, every named closure made per request also pays esbuild's `__name` call: one
 * post per request cost ~27 % more CPU that way in bench:hit.
 */
export const SERVICE_SCRIPT = 'dist/main.js';

export function childEnv(overrides: Record<string, string>, port: number): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !CONFIG_ENV.test(k)) env[k] = v;
  return {
    ...env,
    NODE_ENV: 'production',
    // The bench measures the service, not authentication: production without a clients file, on purpose.
    POLYRAY_ALLOW_ANONYMOUS: 'true',
    HOST: '127.0.0.1',
    PORT: String(port),
    LOG_LEVEL: 'warn',
    POLYRAY_BUILD_MISSING: 'false',
    POLYRAY_TRACE_DIR: path.join(SCRATCH_DIR, `traces-${port}`),
    ...(modelsDir ? { POLYRAY_MODELS_DIR: modelsDir } : {}),
    ...overrides,
  };
}

/** The settings the child will run with, as the service itself computes them. */
export function effectiveSettings(env: Record<string, string>): PolyrayConfig {
  return loadConfig(env);
}

let clkTck = 0;
function ticksPerSecond(): number {
  if (clkTck > 0) return clkTck;
  try {
    clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    clkTck = 100;
  }
  return clkTck;
}

/** utime + stime in seconds from a /proc/.../stat file, or NaN. */
function statCpuSeconds(file: string): number {
  try {
    const s = readFileSync(file, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // After "pid (comm) ": state is field 3 → index 0; utime is field 14 → index 11, stime 15 → 12.
    return (Number(f[11]) + Number(f[12])) / ticksPerSecond();
  } catch {
    return NaN;
  }
}

/** Busy and total CPU seconds of the whole machine (all cores), from /proc/stat. */
export function machineCpuSeconds(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const total = v.reduce((a, b) => a + b, 0);
    const idle = (v[3] ?? 0) + (v[4] ?? 0); // idle + iowait
    return { busy: (total - idle) / ticksPerSecond(), total: total / ticksPerSecond() };
  } catch {
    return { busy: NaN, total: NaN };
  }
}

export interface CpuSnapshot {
  at: number;
  bench: number;
  serviceMain: number;
  serviceAll: number;
  /** CPU seconds of each live service thread other than the main one, by thread id. */
  serviceThreads: Map<string, number>;
  machineBusy: number;
}

/** CPU use between two snapshots, in cores (1.0 = one core fully busy). */
export interface CpuUse {
  bench: number;
  serviceMainThread: number;
  serviceOtherThreads: number;
  /** The busiest single non-main service thread (e.g. the inference worker, or a spinning ORT thread). */
  serviceBusiestOtherThread: number;
  /** Everything busy on the machine (all processes, both ours and other tenants'). */
  machine: number;
  /** machine − bench − service: other processes on this shared box. */
  others: number;
}

function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      if (tid === String(pid)) continue;
      const v = statCpuSeconds(`/proc/${pid}/task/${tid}/stat`);
      if (Number.isFinite(v)) out.set(tid, v);
    }
  } catch {
    // the process is gone
  }
  return out;
}

export function cpuSnapshot(servicePid: number | undefined): CpuSnapshot {
  const u = process.cpuUsage();
  return {
    at: performance.now(),
    bench: (u.user + u.system) / 1e6,
    serviceMain: servicePid ? statCpuSeconds(`/proc/${servicePid}/task/${servicePid}/stat`) : NaN,
    serviceAll: servicePid ? statCpuSeconds(`/proc/${servicePid}/stat`) : NaN,
    serviceThreads: servicePid ? threadCpu(servicePid) : new Map(),
    machineBusy: machineCpuSeconds().busy,
  };
}

export function cpuUse(a: CpuSnapshot, b: CpuSnapshot): CpuUse {
  const wall = (b.at - a.at) / 1000;
  const bench = (b.bench - a.bench) / wall;
  const main = (b.serviceMain - a.serviceMain) / wall;
  const all = (b.serviceAll - a.serviceAll) / wall;
  const machine = (b.machineBusy - a.machineBusy) / wall;
  let busiest = 0;
  for (const [tid, v] of b.serviceThreads) busiest = Math.max(busiest, (v - (a.serviceThreads.get(tid) ?? 0)) / wall);
  return {
    bench,
    serviceMainThread: main,
    serviceOtherThreads: all - main,
    serviceBusiestOtherThread: busiest,
    machine,
    others: Math.max(0, machine - bench - all),
  };
}

export class ServiceProcess {
  readonly url: string;
  readonly port: number;
  readonly child: ChildProcess;
  /** Spawn to /readyz 200. */
  startupMs = 0;
  readonly #tail: string[];
  #exited: Promise<number | null>;
  #alive = true;

  // biome-ignore lint/style/useConsistentMemberAccessibility: a constructor has no #private form; instances come from the static factory
  private constructor(child: ChildProcess, port: number, tail: string[], exited: Promise<number | null>) {
    this.child = child;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.#tail = tail;
    this.#exited = exited.then((c) => {
      this.#alive = false;
      return c;
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get alive(): boolean {
    return this.#alive;
  }

  /** Last lines the child wrote (stdout and stderr), for error messages. */
  tail(): string {
    return this.#tail.join('');
  }

  /**
   * Spawns the service and resolves once `/readyz` answers 200. Rejects (after killing the child) if
   * the child exits or is not ready within `timeoutMs`. `register` is called with the child at once,
   * so an abort during start-up can kill it too.
   */
  static async start(
    root: string,
    env: Record<string, string>,
    port: number,
    timeoutMs: number,
    register: (c: ChildProcess) => void,
    script = SERVICE_SCRIPT,
    nodeArgs: readonly string[] = [],
  ): Promise<ServiceProcess> {
    if (script === SERVICE_SCRIPT) ensureBuilt(root, () => {});
    const t0 = performance.now();
    const guard = new URL('./orphan-guard.mjs', import.meta.url).href;
    // Compiled JavaScript runs on plain node, as `npm start` runs it; TypeScript through tsx.
    const loader = script.endsWith('.ts') ? ['--import', 'tsx'] : [];
    const child = spawn(process.execPath, [...nodeArgs, ...loader, '--import', guard, script], { cwd: root, env, stdio: ['pipe', 'pipe', 'pipe'] });
    register(child);
    const tail: string[] = [];
    const keep = (d: Buffer): void => {
      tail.push(d.toString('utf8'));
      while (tail.length > 40) tail.shift();
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    let exitCode: number | null | undefined;
    const exited = new Promise<number | null>((resolve) => {
      child.once('exit', (code, signal) => {
        exitCode = code ?? (signal ? -1 : null);
        resolve(exitCode);
      });
      child.once('error', (e) => {
        keep(Buffer.from(`spawn error: ${e.message}\n`));
        exitCode = -1;
        resolve(-1);
      });
    });
    const svc = new ServiceProcess(child, port, tail, exited);
    const deadline = t0 + timeoutMs;
    while (performance.now() < deadline) {
      if (exitCode !== undefined) throw new Error(`service exited during start-up (code ${String(exitCode)}):\n${tail.join('')}`);
      try {
        const res = await fetch(`${svc.url}/readyz`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        if (res.status === 200) {
          svc.startupMs = performance.now() - t0;
          return svc;
        }
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    await svc.stop();
    throw new Error(`service not ready after ${timeoutMs} ms:\n${tail.join('')}`);
  }

  /** SIGTERM (the service drains), then SIGKILL after `graceMs`. Resolves when the child is gone. */
  async stop(graceMs = 8000): Promise<void> {
    if (!this.#alive || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.#exited;
    clearTimeout(timer);
  }
}
