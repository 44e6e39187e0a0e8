/**
 * Test images, generated (no binary fixtures needed), and a local HTTP or HTTPS server that serves them the
 * way hostile or broken image hosts do: wrong content types, redirects, endless bodies, stalls.
 */
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { deflateSync } from 'node:zlib';
import sharp from 'sharp';

/** A w×h image whose pixels follow a seeded pattern (distinct seeds give distinct images). */
export async function patternImage(w: number, h: number, seed: number, format: 'png' | 'jpeg' | 'webp' | 'gif' = 'png'): Promise<Buffer> {
  const raw = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = (y * w + x) * 3;
      raw[o] = (x * (seed + 3) + y * seed) & 0xff;
      raw[o + 1] = (Math.floor(x / 16) * 40 + seed * 17) & 0xff;
      raw[o + 2] = (Math.floor(y / 16) * 60 + seed * 29) & 0xff;
    }
  }
  const img = sharp(raw, { raw: { width: w, height: h, channels: 3 } });
  return (
    format === 'png' ? img.png() : format === 'jpeg' ? img.jpeg({ quality: 92 }) : format === 'webp' ? img.webp({ lossless: true }) : img.gif()
  ).toBuffer();
}

/** A solid-colour image. */
export function solidImage(w: number, h: number, rgb: [number, number, number], format: 'png' | 'jpeg' = 'png'): Promise<Buffer> {
  const img = sharp({ create: { width: w, height: h, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } });
  return (format === 'png' ? img.png() : img.jpeg()).toBuffer();
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf: Buffer): number {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

/**
 * A decompression bomb: a valid PNG header claiming `w`×`h` pixels with a tiny IDAT (a few rows of
 * zeros). Decoding it fully would need w·h·3 bytes; the header alone says it is too big.
 */
export function pngBomb(w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const rows = Buffer.alloc(4 * (1 + w * 3)); // four rows of filter byte 0 and black pixels
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(rows)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

export type Route = (req: http.IncomingMessage, res: http.ServerResponse) => void;

export interface ImageServer {
  /** `http://127.0.0.1:<port>`, or `https://…` when started with `tls` */
  url: string;
  port: number;
  /** Requests per path. */
  hits: Map<string, number>;
  stop(): Promise<void>;
}

export interface ImageServerOptions {
  /** Serve HTTPS with this certificate and key (PEM; see helpers/tls.ts). Default: plain HTTP. */
  tls?: { cert: string; key: string };
}

/** Serves `routes` on 127.0.0.1 (an ephemeral port); unknown paths are 404. */
export async function startImageServer(routes: Record<string, Route>, options: ImageServerOptions = {}): Promise<ImageServer> {
  const hits = new Map<string, number>();
  const sockets = new Set<import('node:net').Socket>();
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0]!;
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const route = routes[path];
    if (route) route(req, res);
    else res.writeHead(404).end();
  };
  const server = options.tls ? https.createServer({ cert: options.tls.cert, key: options.tls.key }, handler) : http.createServer(handler);
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    port,
    hits,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A route that answers `body` with a given content type (default: a wrong one, to prove it is ignored). */
export function serve(body: Buffer, contentType = 'text/plain'): Route {
  return (_req, res) => {
    res.writeHead(200, { 'content-type': contentType, 'content-length': body.length });
    res.end(body);
  };
}
