/**
 * Streaming trace readers: a JSONL file, a folder of rotated JSONL files, or a Redis Stream
 * (`redis://host:port[/db]?stream=KEY`). Records are yielded one at a time (files line by line, the
 * stream in XRANGE pages), so a trace of any length is never held in memory whole.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { createRedisClient } from '../redis/client.ts';
import { toTraceRecord, type TraceRecord } from './trace.ts';
import { traceFiles } from './writers.ts';

export interface ReadProgress {
  /** Units done and total: bytes for files, entries for a stream. */
  done: number;
  total: number;
}

export interface ReadOptions {
  onProgress?: (p: ReadProgress) => void;
  /** Stream key when the URL names none. */
  defaultStreamKey?: string;
  /** XRANGE page size. Default 5000. */
  pageSize?: number;
}

export interface TraceSource {
  /** What is being read, for messages. */
  describe: string;
  /** Lines / entries that were not trace records. */
  skipped: number;
  records(): AsyncGenerator<TraceRecord>;
}

export async function openTrace(location: string, options: ReadOptions = {}): Promise<TraceSource> {
  if (/^rediss?:\/\//.test(location)) return redisSource(location, options);
  const st = await stat(location);
  const files = st.isDirectory() ? await traceFiles(location) : [location];
  if (files.length === 0) throw new Error(`no trace files (trace-*.jsonl) in ${location}`);
  return fileSource(files, options);
}

async function fileSource(files: string[], options: ReadOptions): Promise<TraceSource> {
  const sizes = await Promise.all(files.map(async (f) => (await stat(f)).size));
  const total = sizes.reduce((a, b) => a + b, 0);
  const src: TraceSource = {
    describe: files.length === 1 ? files[0]! : `${files.length} files`,
    skipped: 0,
    async *records() {
      let before = 0;
      for (let i = 0; i < files.length; i++) {
        const stream = createReadStream(files[i]!, { highWaterMark: 1 << 20 });
        const lines = createInterface({ input: stream, crlfDelay: Infinity });
        let n = 0;
        for await (const line of lines) {
          if (line.length === 0) continue;
          const rec = parseLine(line);
          if (!rec) {
            src.skipped++;
            continue;
          }
          yield rec;
          if (options.onProgress && ++n % 4096 === 0) options.onProgress({ done: before + stream.bytesRead, total });
        }
        before += sizes[i]!;
        options.onProgress?.({ done: before, total });
      }
    },
  };
  return src;
}

/** Parses `redis://host:port/db?stream=KEY`; the stream parameter is removed from the URL ioredis sees. */
export function parseRedisTraceUrl(location: string, defaultKey: string | undefined): { url: string; key: string } {
  const u = new URL(location);
  const key = u.searchParams.get('stream') ?? u.searchParams.get('key') ?? defaultKey;
  if (!key) throw new Error(`name the stream: ${u.protocol}//${u.host}/?stream=KEY`);
  u.searchParams.delete('stream');
  u.searchParams.delete('key');
  return { url: u.toString(), key };
}

async function redisSource(location: string, options: ReadOptions): Promise<TraceSource> {
  const { url, key } = parseRedisTraceUrl(location, options.defaultStreamKey);
  const pageSize = options.pageSize ?? 5000;
  const src: TraceSource = {
    describe: `stream ${key}`,
    skipped: 0,
    async *records() {
      const redis = createRedisClient({ url }, { lazyConnect: true });
      redis.on('error', () => undefined);
      try {
        await redis.connect();
        const total = await redis.xlen(key);
        let start = '-';
        let done = 0;
        for (;;) {
          const page = await redis.xrange(key, start, '+', 'COUNT', pageSize);
          if (page.length === 0) break;
          for (const [, fields] of page) {
            const o: Record<string, string> = {};
            for (let i = 0; i + 1 < fields.length; i += 2) o[fields[i]!] = fields[i + 1]!;
            const lines = o['jsonl'];
            if (lines === undefined) {
              // One record per entry, as writers before batched entries wrote them.
              const rec = toTraceRecord(o);
              if (rec) yield rec;
              else src.skipped++;
              continue;
            }
            for (const line of lines.split('\n')) {
              if (line.length === 0) continue;
              const rec = parseLine(line);
              if (rec) yield rec;
              else src.skipped++;
            }
          }
          done += page.length;
          options.onProgress?.({ done, total: Math.max(total, done) });
          start = `(${page[page.length - 1]![0]}`;
          if (page.length < pageSize) break;
        }
      } finally {
        redis.disconnect();
      }
    },
  };
  return src;
}

/** Writes records as JSONL lines (used by `simulate --save-trace`). */
export function toJsonl(r: TraceRecord): string {
  return `${JSON.stringify(r)}\n`;
}

/** One JSONL line as a record; undefined when it is not one. */
function parseLine(line: string): TraceRecord | undefined {
  try {
    return toTraceRecord(JSON.parse(line) as Record<string, unknown>);
  } catch {
    return undefined;
  }
}
