/**
 * `polyray models pull <org/name> [--revision R] [--variant fp32|int8|fp16]`: downloads a model repository
 * from a Hugging Face Hub endpoint (`HF_ENDPOINT`, a mirror behind a firewall; `HF_TOKEN` for gated or
 * private repositories) into the models directory, where the next start serves it as it is
 * (src/runtime/hf-folder.ts).
 *
 * Owns: choosing the files (configs, tokenizer, pooling modules and the one ONNX graph of the variant
 * asked for, with its external data; not the PyTorch, TensorFlow or other ONNX weights), downloading each
 * resumably (a `.part` file continued with a Range request after a dropped connection, also across runs),
 * verifying each against the hub's checksum (sha256 of LFS files, git blob sha1 of the others), and
 * publishing the folder only once every file is verified and the folder is one Polyray can serve.
 * The listing and the file metadata come from the official `@huggingface/hub` client.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileDownloadInfo, type ListFileEntry, listFiles } from '@huggingface/hub';
import { isFile, pathExists } from '../files.ts';
import { readHfFolder } from '../runtime/hf-folder.ts';
import type { BuildProgress } from './progress.ts';

export type Variant = 'fp32' | 'int8' | 'fp16';

export interface PullOptions {
  /** `org/name` on the hub. */
  repo: string;
  /** Branch, tag or commit. Default main. */
  revision?: string | undefined;
  /** Which ONNX export to take. Default fp32. */
  variant?: Variant | undefined;
  /** Folder name in the models directory. Default: the repository's name, lower-cased. */
  name?: string | undefined;
  modelsDir: string;
  hubUrl: string;
  token?: string | undefined;
  /** Attempts per file before giving up (each resumes where the last stopped). Default 5. */
  attempts?: number;
  fetch?: typeof fetch;
  onProgress?: (p: BuildProgress & { model?: string }) => void;
  out: (line: string) => void;
}

const REPO_RE = /^[A-Za-z0-9][\w.-]{0,95}\/[A-Za-z0-9][\w.-]{0,95}$/;
const VARIANT_FILES: Record<Variant, string[]> = {
  fp32: ['onnx/model.onnx', 'model.onnx'],
  int8: ['onnx/model_quantized.onnx', 'onnx/model_int8.onnx', 'model_quantized.onnx'],
  fp16: ['onnx/model_fp16.onnx', 'model_fp16.onnx'],
};
/** Weights in other formats, and folders of other runtimes: never needed here. */
const SKIP = /(\.(safetensors|bin|h5|msgpack|ckpt|pt|pth|ot|gguf|mlmodel|tflite)$)|(^(openvino|coreml|tf|flax|rust)[/_])/;

class PullError extends Error {
  override name = 'PullError';
}

export async function pullModel(o: PullOptions): Promise<{ dir: string; files: number; bytes: number }> {
  if (!REPO_RE.test(o.repo)) throw new PullError(`repository must be "org/name", received "${o.repo.slice(0, 100)}"`);
  const variant = o.variant ?? 'fp32';
  const revision = o.revision ?? 'main';
  const name = o.name ?? o.repo.split('/')[1]!.toLowerCase();
  const target = path.join(o.modelsDir, name);
  if (await pathExists(target)) throw new PullError(`${target} already exists: remove it, or pull under another --name`);
  const hub: HubTarget = {
    repo: o.repo,
    revision,
    hubUrl: o.hubUrl.replace(/\/+$/, ''),
    ...(o.token ? { accessToken: o.token } : {}),
    ...(o.fetch ? { fetch: o.fetch } : {}),
  };

  let entries: ListFileEntry[];
  try {
    entries = [];
    for await (const e of listFiles({ ...hub, recursive: true })) if (e.type === 'file') entries.push(e);
  } catch (e) {
    throw new PullError(explain(e, `repository ${o.repo} (revision ${revision}) at ${hub.hubUrl}`, o.token));
  }
  const files = choose(entries, variant, o.repo);

  // Staging beside the target (dot-named: the registry ignores it), kept on failure so a rerun resumes.
  const staging = path.join(o.modelsDir, `.pull-${name}`);
  let bytes = 0;
  for (const [i, entry] of files.entries()) {
    const dest = path.join(staging, entry.path);
    if (!path.resolve(dest).startsWith(path.resolve(staging) + path.sep))
      throw new PullError(`the hub listed a path outside the folder: ${entry.path.slice(0, 100)}`);
    await mkdir(path.dirname(dest), { recursive: true });
    if (!(await verified(dest, entry))) await download(o, hub, entry, dest, `${i + 1}/${files.length} ${entry.path}`);
    bytes += entry.lfs?.size ?? entry.size;
  }
  try {
    await readHfFolder(staging, name, { cpuVariant: variant === 'int8' ? 'int8' : 'fp32', provider: variant === 'fp16' ? 'cuda' : 'cpu' });
  } catch (e) {
    throw new PullError(`downloaded ${o.repo}, but Polyray cannot serve it: ${(e as Error).message} (files kept in ${staging})`);
  }
  await rename(staging, target);
  o.out(`pulled ${o.repo}@${revision} (${variant}): ${files.length} files, ${(bytes / 1048576).toFixed(1)} MiB, verified → ${target}\n`);
  return { dir: target, files: files.length, bytes };
}

/** The files to fetch: everything small and useful, plus exactly one ONNX graph (and its external data). */
function choose(entries: readonly ListFileEntry[], variant: Variant, repo: string): ListFileEntry[] {
  const onnx = entries.filter((e) => e.path.endsWith('.onnx')).map((e) => e.path);
  const graph = VARIANT_FILES[variant].find((f) => onnx.includes(f));
  if (!graph)
    throw new PullError(`${repo} has no ${variant} ONNX export (${VARIANT_FILES[variant].join(' or ')}); its ONNX files: ${onnx.join(', ') || 'none'}`);
  return entries.filter((e) => {
    if (e.path.endsWith('.onnx')) return e.path === graph;
    if (/\.onnx[._]data$|\.onnx_data$/.test(e.path)) return e.path.startsWith(graph);
    return !SKIP.test(e.path);
  });
}

/** Where and as whom to ask the hub. */
interface HubTarget {
  repo: string;
  revision: string;
  hubUrl: string;
  accessToken?: string;
  fetch?: typeof fetch;
}

async function download(o: PullOptions, hub: HubTarget, entry: ListFileEntry, dest: string, label: string): Promise<void> {
  const info = await fileDownloadInfo({ ...hub, path: entry.path }).catch((e: unknown) => {
    throw new PullError(explain(e, `file ${entry.path} of ${o.repo}`, o.token));
  });
  if (!info) throw new PullError(`file ${entry.path} is listed but the hub does not serve it`);
  const part = `${dest}.part`;
  const attempts = o.attempts ?? 5;
  const doFetch = o.fetch ?? fetch;
  for (let attempt = 1; ; attempt++) {
    const have = (await stat(part).catch(() => undefined))?.size ?? 0;
    if (have > info.size) await rm(part);
    try {
      if (have < info.size) {
        const res = await doFetch(info.url, {
          headers: { ...(o.token ? { authorization: `Bearer ${o.token}` } : {}), ...(have > 0 ? { range: `bytes=${have}-` } : {}) },
        });
        if (!res.ok || !res.body) throw new PullError(`HTTP ${res.status} for ${entry.path}`);
        // 206: the rest of the file; 200: the server ignored the range, start over.
        const append = res.status === 206 && have > 0;
        let done = append ? have : 0;
        const counted = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>).on('data', (c: Buffer) => {
          done += c.length;
          o.onProgress?.({ model: o.repo, step: label, done, total: info.size });
        });
        await pipeline(counted, createWriteStream(part, { flags: append ? 'a' : 'w' }));
      }
      const size = (await stat(part)).size;
      if (size !== info.size) throw new PullError(`${entry.path}: got ${size} of ${info.size} bytes`);
      break;
    } catch (e) {
      if (attempt >= attempts) throw new PullError(`${entry.path}: download failed after ${attempts} attempts (${(e as Error).message}); rerun to resume`);
      o.out(`${entry.path}: connection lost at ${(await stat(part).catch(() => undefined))?.size ?? 0} bytes; resuming (attempt ${attempt + 1}/${attempts})\n`);
    }
  }
  const problem = await checksumProblem(part, entry);
  if (problem) {
    await rm(part, { force: true });
    throw new PullError(`${entry.path}: ${problem}; the file was discarded`);
  }
  await rename(part, dest);
}

/** True when `dest` is already there and matches the hub's checksum (a rerun skips it). */
async function verified(dest: string, entry: ListFileEntry): Promise<boolean> {
  if (!(await isFile(dest))) return false;
  return (await checksumProblem(dest, entry)) === undefined;
}

/** Why `file` does not match the hub's checksum for `entry`, or undefined when it does. */
async function checksumProblem(file: string, entry: ListFileEntry): Promise<string | undefined> {
  const size = (await stat(file)).size;
  if (entry.lfs) {
    const got = await digest(file, 'sha256');
    return got === entry.lfs.oid ? undefined : `sha256 ${got} does not match the hub's ${entry.lfs.oid}`;
  }
  if (!entry.oid) return undefined;
  // A git blob id: sha1("blob <size>\0" + content).
  const got = await digest(file, 'sha1', `blob ${size}\0`);
  return got === entry.oid ? undefined : `git blob id ${got} does not match the hub's ${entry.oid}`;
}

async function digest(file: string, algorithm: 'sha1' | 'sha256', prefix = ''): Promise<string> {
  const h = createHash(algorithm).update(prefix);
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** A hub error as a sentence: missing repository or file, missing or refused token, or the status. */
function explain(e: unknown, what: string, token: string | undefined): string {
  const status = (e as { statusCode?: number }).statusCode;
  if (status === 404) return `${what} not found`;
  if (status === 401 || status === 403)
    return `${what}: access refused (${status}); ${token ? 'the HF_TOKEN given is not allowed to read it' : 'set HF_TOKEN for a gated or private repository'}`;
  return `${what}: ${(e as Error).message.slice(0, 200)}`;
}
