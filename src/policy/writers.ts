/**
 * Durable trace writers: rotated JSONL files (the embedded default) and a capped Redis Stream.
 *
 * JSONL: one record per line in `trace-<epoch ms>-<pid>.jsonl` under the trace directory; a file is
 * closed when it passes `maxFileBytes` and the oldest files beyond `keepFiles` are deleted, so the
 * folder never holds more than about `keepFiles × maxFileBytes`.
 *
 * Redis: one stream entry per batch holding its JSONL lines (see `RedisStreamTraceWriter`), trimmed by
 * Redis to about `maxLen` records.
 */
import { createRedisClient, type RedisClient, type RedisTarget } from '../redis/client.ts';
import { mkdir, open, readdir, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { TraceBatch, TraceWriter } from './trace.ts';

export const TRACE_FILE_RE = /^trace-(\d+)-(\d+)(?:-(\d+))?\.jsonl$/;

export interface JsonlWriterOptions {
  dir: string;
  maxFileBytes: number;
  keepFiles: number;
}

export class JsonlTraceWriter implements TraceWriter {
  readonly name = 'jsonl';
  readonly #o: JsonlWriterOptions;
  #file: FileHandle | undefined;
  #bytes = 0;
  #seq = 0;
  #ready: Promise<void> | undefined;

  constructor(options: JsonlWriterOptions) {
    if (options.keepFiles < 1) throw new TypeError(`JSONL trace writer keepFiles must be >= 1, received ${options.keepFiles}`);
    this.#o = options;
  }

  async write(batch: TraceBatch): Promise<void> {
    if (batch.length === 0) return;
    this.#ready ??= mkdir(this.#o.dir, { recursive: true }).then(() => undefined);
    await this.#ready;
    const bytes = Buffer.from(batch.jsonl());
    if (!this.#file) await this.#openNext();
    await this.#file!.write(bytes);
    this.#bytes += bytes.length;
    if (this.#bytes >= this.#o.maxFileBytes) {
      await this.#file!.close();
      this.#file = undefined;
      await this.#prune();
    }
  }

  async #openNext(): Promise<void> {
    const name = `trace-${String(Date.now()).padStart(15, '0')}-${process.pid}-${String(this.#seq++).padStart(6, '0')}.jsonl`;
    this.#file = await open(path.join(this.#o.dir, name), 'a');
    this.#bytes = 0;
    await this.#prune();
  }

  async #prune(): Promise<void> {
    const files = (await traceFiles(this.#o.dir)).map((f) => path.basename(f));
    const excess = files.length - this.#o.keepFiles;
    for (let i = 0; i < excess; i++) await unlink(path.join(this.#o.dir, files[i]!)).catch(() => undefined);
  }

  async close(): Promise<void> {
    const f = this.#file;
    this.#file = undefined;
    await f?.close();
  }
}

/** Trace files of a directory, oldest first (by the time and sequence in their names). */
export async function traceFiles(dir: string): Promise<string[]> {
  const names = (await readdir(dir)).filter((f) => TRACE_FILE_RE.test(f)).sort();
  return names.map((f) => path.join(dir, f));
}

export interface RedisStreamWriterOptions {
  target: RedisTarget;
  key: string;
  /** Cap of the stream, in records (about: entries hold whole batches). */
  maxLen: number;
  /** Longest a batch may take before it counts as failed. Default 2000 ms. */
  timeoutMs?: number;
}

/**
 * One stream entry per batch: `XADD <key> MAXLEN <entries> * n <records> jsonl <JSON lines>`, the lines
 * those of the JSONL files. An entry per record cost Redis and the replica a command per traced lookup
 * (with heavy keys traced whole, most of the lookups of a busy replica): on the hit path of `bench:hit`
 * that was more than half of the CPU a vector took. The cap is kept in records: entries are trimmed to
 * `maxLen` divided by the mean records per entry so far. Readers (src/policy/read.ts) also accept the
 * older form, one entry per record with the record's fields.
 */
export class RedisStreamTraceWriter implements TraceWriter {
  readonly name = 'redis-stream';
  readonly #o: RedisStreamWriterOptions;
  readonly #redis: RedisClient;
  #entries = 0;
  #records = 0;

  constructor(options: RedisStreamWriterOptions) {
    this.#o = options;
    const timeoutMs = options.timeoutMs ?? 2000;
    this.#redis = createRedisClient(options.target, { connectTimeoutMs: timeoutMs, commandTimeoutMs: timeoutMs, lazyConnect: true });
    // Connection errors surface as failed writes (counted by the tracer); keep ioredis from logging them.
    this.#redis.on('error', () => undefined);
  }

  async write(batch: TraceBatch): Promise<void> {
    if (batch.length === 0) return;
    if (this.#redis.status === 'wait') await this.#redis.connect();
    this.#entries++;
    this.#records += batch.length;
    const perEntry = this.#records / this.#entries;
    const entries = Math.max(1, Math.ceil(this.#o.maxLen / perEntry));
    await this.#redis.xadd(this.#o.key, 'MAXLEN', entries, '*', 'n', String(batch.length), 'jsonl', batch.jsonl());
  }

  async close(): Promise<void> {
    this.#redis.disconnect();
  }
}
