/**
 * What every section bench shares (bench/rest-bench.ts, fair-bench.ts, hit-bench.ts, overload-bench.ts,
 * mixed-bench.ts): its options (`--quick`, `--out DIR`, `--set KEY=VALUE`, others by name) and how it
 * publishes a run — the JSON of the result, its section of RESULTS.md (between markers, which `npm run
 * bench` keeps) and the section on stdout.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSection } from './hf-report.ts';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));

export interface BenchCli {
  /** The repository root. */
  root: string;
  quick: boolean;
  /** Where results go: `--out DIR`, bench/out/quick with --quick, else bench/. */
  out: string;
  /** The value after `--name`, if given. */
  opt(name: string): string | undefined;
  has(flag: string): boolean;
  /** Service environment for experiments: every `--set KEY=VALUE` (repeatable), as `npm run bench` takes it. */
  settings: Record<string, string>;
  log(line: string): void;
}

export function benchCli(argv: readonly string[] = process.argv.slice(2)): BenchCli {
  const opt = (name: string): string | undefined => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
  const quick = argv.includes('--quick');
  const out = opt('--out');
  const settings: Record<string, string> = {};
  argv.forEach((x, i) => {
    if (x !== '--set') return;
    const kv = argv[i + 1] ?? '';
    const eq = kv.indexOf('=');
    if (eq < 1) throw new Error(`--set expects KEY=VALUE, received "${kv}"`);
    settings[kv.slice(0, eq)] = kv.slice(eq + 1);
  });
  return {
    root: path.resolve(BENCH_DIR, '..'),
    quick,
    out: out ? path.resolve(out) : quick ? path.join(BENCH_DIR, 'out', 'quick') : BENCH_DIR,
    opt,
    has: (flag) => argv.includes(flag),
    settings,
    log: (line) => void process.stderr.write(`${line}\n`),
  };
}

/** `, plus K=V, …` for a section's conditions when a run had `--set` settings; empty without. */
export function describeSettings(settings: Record<string, string>): string {
  const kv = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
  return kv.length > 0 ? `, plus ${kv.join(', ')}` : '';
}

/** Writes `result` as `<out>/<json>`, `section` into `<out>/RESULTS.md` under `name`, and prints it. */
export function publish(out: string, json: string, result: unknown, name: string, section: string): void {
  mkdirSync(out, { recursive: true });
  writeFileSync(path.join(out, json), `${JSON.stringify(result, null, 2)}\n`);
  writeSection(path.join(out, 'RESULTS.md'), name, section);
  process.stdout.write(`${section}\n`);
}
