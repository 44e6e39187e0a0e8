/**
 * Model folder helpers shared by builders: a cross-process build lock, atomic directory publish,
 * and the `build-info.json` sidecar that makes builds idempotent.
 *
 * Owns: how a model folder appears in the models directory. Readers (the service, tests) must never
 * see a half-written folder, and two processes building the same model at once (e.g. test files
 * run in parallel by `node --test`) must not both spend a minute and 1.5 GB doing it.
 *
 * The sidecar, not the manifest, records how a folder was built: the manifest format belongs to
 * the runtime (`src/runtime/manifest.ts`) and stays free of builder bookkeeping.
 */

import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, open, readFile, readdir, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function errorCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : undefined;
}

/** True when a process with this pid exists (EPERM: it exists but belongs to someone else). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errorCode(e) === 'EPERM';
  }
}

export interface LockOptions {
  /** Give up waiting for another holder after this long. Default 15 minutes. */
  timeoutMs?: number;
  /** A lock file older than this is considered abandoned even if its pid is alive (pid reuse). Default 1 hour. */
  staleMs?: number;
  /** Called once when the lock is held by someone else and we start waiting. */
  onWait?: () => void;
}

/**
 * Runs `fn` while holding an exclusive lock file (created with O_EXCL, holding our pid). A lock
 * left by a dead process, or older than `staleMs`, is taken over.
 */
export async function withLock<T>(lockPath: string, fn: () => Promise<T>, options: LockOptions = {}): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 15 * 60_000;
  const staleMs = options.staleMs ?? 60 * 60_000;
  const deadline = Date.now() + timeoutMs;
  let warned = false;
  await mkdir(path.dirname(lockPath), { recursive: true });
  for (;;) {
    try {
      const fh = await open(lockPath, 'wx');
      try {
        await fh.writeFile(JSON.stringify({ pid: process.pid, since: new Date().toISOString() }));
      } finally {
        await fh.close();
      }
      break;
    } catch (e) {
      if (errorCode(e) !== 'EEXIST') throw e;
    }
    if (await isStale(lockPath, staleMs)) {
      // Only one of several waiters wins the unlink; the others get ENOENT and simply retry.
      await unlink(lockPath).catch(() => undefined);
      continue;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for lock ${lockPath}`);
    if (!warned) {
      warned = true;
      options.onWait?.();
    }
    await sleep(250);
  }
  try {
    return await fn();
  } finally {
    await unlink(lockPath).catch(() => undefined);
  }
}

async function isStale(lockPath: string, staleMs: number): Promise<boolean> {
  try {
    const [text, st] = await Promise.all([readFile(lockPath, 'utf8'), stat(lockPath)]);
    if (Date.now() - st.mtimeMs > staleMs) return true;
    if (text === '') return Date.now() - st.mtimeMs > 5_000; // holder is between open and write
    const pid = (JSON.parse(text) as { pid?: unknown }).pid;
    return typeof pid !== 'number' || !processAlive(pid);
  } catch (e) {
    if (errorCode(e) === 'ENOENT') return false; // released meanwhile: retry the open
    return true; // unreadable/corrupt lock file
  }
}

/**
 * Publishes a directory atomically: `fill` writes into a fresh temp directory next to the target
 * (same filesystem, so rename is atomic), then the temp directory replaces `parent/name`.
 *
 * rename(2) cannot replace a non-empty directory, so an existing target is first moved aside and
 * deleted after the swap; readers can briefly see no folder, never a partial one. Temp folders are
 * dot-named, which the model registry skips.
 *
 * Call it while holding the model's lock (`withLock`): it deletes temp folders that an earlier,
 * killed build of the same model left behind.
 */
export async function publishDirectory(parent: string, name: string, fill: (tmpDir: string) => Promise<void>): Promise<void> {
  await mkdir(parent, { recursive: true });
  for (const entry of await readdir(parent)) {
    if (entry.startsWith(`.${name}.tmp-`) || entry.startsWith(`.${name}.old-`)) {
      await rm(path.join(parent, entry), { recursive: true, force: true });
    }
  }
  const target = path.join(parent, name);
  const tmp = await mkdtemp(path.join(parent, `.${name}.tmp-`));
  try {
    await chmod(tmp, 0o755); // mkdtemp makes it 0700; the service may run as another user
    await fill(tmp);
    const aside = path.join(parent, `.${name}.old-${randomBytes(4).toString('hex')}`);
    let movedAside = false;
    try {
      await rename(target, aside);
      movedAside = true;
    } catch (e) {
      if (errorCode(e) !== 'ENOENT') throw e;
    }
    try {
      await rename(tmp, target);
    } catch (e) {
      if (movedAside) await rename(aside, target).catch(() => undefined); // put the old build back
      throw e;
    }
    if (movedAside) await rm(aside, { recursive: true, force: true });
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// build-info.json
// ---------------------------------------------------------------------------------------------

export const BUILD_INFO_FILE = 'build-info.json';
export const MANIFEST_FILE = 'manifest.json';

/** What a builder records next to the manifest, to decide later whether a rebuild is needed. */
export interface BuildInfo {
  model: string;
  /** Builder id and its version constant: a new builder version means a rebuild. */
  builder: string;
  builderVersion: string;
  /** The package the weights came from; a new package version means a rebuild. */
  source: { package: string; version: string };
  /** Equals the manifest's `version`. */
  version: string;
  builtAt: string;
  buildMs: number;
  /** Byte size of every file the builder wrote (a cheap check that nothing was truncated). */
  files: Record<string, number>;
}

/** What a caller expects of an existing build. */
export interface BuildExpectation {
  builder: string;
  builderVersion: string;
  source: { package: string; version: string };
}

/**
 * Publishes a built model folder atomically: writes `files` (name → contents, the manifest among them),
 * then `build-info.json` last — its presence marks the folder complete (see `currentBuild`).
 */
export async function publishModel(
  parent: string,
  name: string,
  files: Record<string, Uint8Array | string>,
  record: { expect: BuildExpectation; version: string; started: number },
): Promise<void> {
  await publishDirectory(parent, name, async (tmp) => {
    const sizes: Record<string, number> = {};
    for (const [file, contents] of Object.entries(files)) {
      await writeFile(path.join(tmp, file), contents);
      sizes[file] = typeof contents === 'string' ? Buffer.byteLength(contents) : contents.byteLength;
    }
    const info: BuildInfo = {
      model: name,
      ...record.expect,
      version: record.version,
      builtAt: new Date().toISOString(),
      buildMs: Date.now() - record.started,
      files: sizes,
    };
    await writeFile(
      path.join(tmp, BUILD_INFO_FILE),
      `${JSON.stringify(info, null, 2)}
`,
    );
  });
}

/**
 * The build info of `dir` when that folder is a complete build matching `expect`: the sidecar
 * matches, the manifest exists and carries the same version, and every recorded file has its
 * recorded size. Anything else (missing, stale, corrupt) returns undefined, i.e. "build it".
 */
export async function currentBuild(dir: string, expect: BuildExpectation): Promise<BuildInfo | undefined> {
  try {
    const info = JSON.parse(await readFile(path.join(dir, BUILD_INFO_FILE), 'utf8')) as BuildInfo;
    if (
      info.builder !== expect.builder ||
      info.builderVersion !== expect.builderVersion ||
      info.source?.package !== expect.source.package ||
      info.source?.version !== expect.source.version
    ) {
      return undefined;
    }
    const manifest = JSON.parse(await readFile(path.join(dir, MANIFEST_FILE), 'utf8')) as { version?: unknown };
    if (manifest.version !== info.version) return undefined;
    for (const [file, size] of Object.entries(info.files ?? {})) {
      if ((await stat(path.join(dir, file))).size !== size) return undefined;
    }
    return info;
  } catch {
    return undefined;
  }
}
