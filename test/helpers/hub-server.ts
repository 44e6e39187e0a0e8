/**
 * A local stand-in for the Hugging Face Hub, serving model repositories from folders in the hub's URL
 * layout and headers, for `polyray models pull` tests (there is no network here):
 *   GET /api/models/<org>/<name>/tree/<rev>?recursive=true   the file listing (oid; lfs {oid: sha256, size})
 *   GET /<org>/<name>/resolve/<rev>/<path>                    the bytes, with Range (206, Content-Range), ETag
 * Faults on request: drop a download half-way once, serve corrupted bytes, require a token.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

export interface HubServerOptions {
  /** `org/name` → folder. */
  repos: Record<string, string>;
  /** Required bearer token, if any. */
  token?: string;
}

export interface HubServer {
  url: string;
  /** Range headers received, by path. */
  ranges: Record<string, string[]>;
  /** The next full download of this path stops half-way (the socket is destroyed). */
  dropOnce(file: string): void;
  /** Serve the next full download of this path with one byte changed (the listing keeps the true checksum). */
  corruptOnce(file: string): void;
  close(): Promise<void>;
}

const LFS = /\.(onnx|bin|safetensors)$/;

async function walk(dir: string, base = ''): Promise<string[]> {
  const out: string[] = [];
  for (const d of await readdir(path.join(dir, base), { withFileTypes: true })) {
    const rel = path.posix.join(base, d.name);
    if (d.isDirectory()) out.push(...(await walk(dir, rel)));
    else out.push(rel);
  }
  return out.sort();
}

export async function startHubServer(o: HubServerOptions): Promise<HubServer> {
  const drops = new Set<string>();
  const corrupted = new Set<string>();
  const ranges: Record<string, string[]> = {};
  const server = http.createServer((req, res) => {
    void (async () => {
      if (o.token && req.headers.authorization !== `Bearer ${o.token}`) {
        res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'Invalid credentials in Authorization header' }));
        return;
      }
      const url = new URL(req.url ?? '/', 'http://hub.test');
      const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(url.pathname);
      const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
      const repo = tree?.[1] ?? resolve?.[1];
      const dir = repo ? o.repos[repo] : undefined;
      if (!dir) {
        res.writeHead(404, { 'content-type': 'application/json', 'x-error-code': 'RepoNotFound' }).end(JSON.stringify({ error: 'Repository not found' }));
        return;
      }
      if (tree) {
        const entries = await Promise.all(
          (await walk(dir)).map(async (p) => {
            const bytes = await readFile(path.join(dir, p));
            const oid = createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex');
            const lfs = LFS.test(p) ? { oid: createHash('sha256').update(bytes).digest('hex'), size: bytes.length, pointerSize: 134 } : undefined;
            return { type: 'file', path: p, size: lfs ? 134 : bytes.length, oid, ...(lfs ? { lfs } : {}) };
          }),
        );
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(entries));
        return;
      }
      const file = decodeURIComponent(resolve![3]!);
      let bytes: Buffer;
      try {
        bytes = await readFile(path.join(dir, file));
      } catch {
        res.writeHead(404, { 'x-error-code': 'EntryNotFound' }).end('Entry not found');
        return;
      }
      const range0 = req.headers.range === 'bytes=0-0';
      if (corrupted.has(file) && !range0) {
        corrupted.delete(file);
        bytes = Buffer.from(bytes);
        bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff;
      }
      const range = req.headers.range;
      if (range) ranges[file] = [...(ranges[file] ?? []), range];
      const m = range ? /^bytes=(\d+)-(\d*)$/.exec(range) : null;
      const start = m ? Number(m[1]) : 0;
      const end = m?.[2] ? Number(m[2]) : bytes.length - 1;
      const body = bytes.subarray(start, end + 1);
      const headers = { etag: `"${createHash('sha256').update(bytes).digest('hex')}"`, 'content-length': String(body.length), 'accept-ranges': 'bytes' };
      res.writeHead(m ? 206 : 200, m ? { ...headers, 'content-range': `bytes ${start}-${end}/${bytes.length}` } : headers);
      if (drops.has(file) && body.length > 1) {
        drops.delete(file);
        res.write(body.subarray(0, body.length >> 1), () => res.destroy());
        return;
      }
      res.end(body);
    })();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    ranges,
    dropOnce: (f) => drops.add(f),
    corruptOnce: (f) => corrupted.add(f),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
