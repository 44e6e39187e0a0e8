/**
 * What the machine and software were when the bench ran.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface Conditions {
  startedAt: string;
  finishedAt?: string;
  wallSeconds?: number;
  mode: 'full' | 'quick';
  host: { cpuModel: string; cores: number; availableParallelism: number; memTotalGiB: number; kernel: string };
  nodeVersion: string;
  onnxruntimeNodeVersion: string;
  model: { name: string; version: string; dimensions: number; onnxBytes: number };
  loadAvgBefore: number[];
  loadAvgAfter?: number[];
  /** CPU (cores) used by other processes during one second before the bench started. */
  othersCoresBefore?: number;
  client: string;
  corpus: string;
  /** The source the service ran from: other people edit it while benches run. */
  git: string;
  /** Which models the services load. */
  modelsLoaded: string;
  /** Environment the bench always gives the service (besides PORT and each run's overrides). */
  serviceEnv: string;
  /** Set when the issue-7 section failed as a whole. */
  transformerError?: string;
}

/** HEAD commit and how many files under src/ differ from it. */
export function gitState(root: string): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: root, encoding: 'utf8' }).split('\n').filter(Boolean).length;
    return `${head}${dirty ? ` + ${dirty} uncommitted change(s) under src/` : ' (src/ clean)'}`;
  } catch {
    return 'unknown (no git)';
  }
}

export function cpuModel(): string {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const m = /^model name\s*:\s*(.+)$/m.exec(info);
    if (m) return m[1]!.trim();
  } catch {
    // not Linux
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

export function packageVersion(root: string, name: string): string {
  try {
    const pkg = JSON.parse(readFileSync(path.join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'not installed';
  }
}

export function loadAvg(): number[] {
  return os.loadavg().map((x) => Math.round(x * 100) / 100);
}

export function hostInfo(): Conditions['host'] {
  return {
    cpuModel: cpuModel(),
    cores: os.cpus().length,
    availableParallelism: os.availableParallelism(),
    memTotalGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
  };
}
