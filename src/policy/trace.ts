/**
 * Trace sampling of the request stream (MultiRay's feedback loop, step one).
 *
 * The pipeline (src/service/pipeline.ts) hands every assembled call's results to a `TraceSink` in one synchronous call.
 * The `Tracer` (the sink the server installs) keeps the keys whose hash falls in the sample (see
 * `hash.ts`: by key, not by request, so a sampled key is always sampled), turns them into `TraceRecord`s
 * and
 *   - pushes each into a bounded in-memory ring (the live window the policy controller simulates), and
 *   - appends it to a bounded buffer that a timer flushes in batches to the `TraceWriter`s (a capped
 *     Redis Stream, rotated JSONL files). A full buffer drops the record and counts it; a failing
 *     writer counts an error. Nothing here can block, slow down beyond a hash per item, or fail a request.
 *
 * The record never holds input text or the cache key in clear: only a hash of the cache key.
 */
import type { Logger } from '../log.ts';
import type { Source, TracedResult, TraceSink } from '../service/types.ts';
import { hash53, hashHex, inSample } from './hash.ts';

/** One sampled lookup: one distinct key of one pipeline call. */
export interface TraceRecord {
  /** Time, ms since the epoch. */
  t: number;
  /** Hash of the cache key (14 hex characters). */
  k: string;
  /** Length of the cache key in characters (the memory tier's entry size depends on it). */
  kl: number;
  /** Client id, when the request had one. */
  c?: string;
  /** Model name. */
  m: string;
  /** Vector bytes (full-precision float32 vector as cached). */
  b: number;
  /** Tokens computed for it (0 for hits and joined computations). */
  tok: number;
  /** Measured inference time charged to it, ms (0 for hits and joined computations). */
  ms: number;
  /** Tier that answered. */
  src: Source;
  /** Sample rate in force when it was written. */
  r: number;
  /** Inputs of the call that had this key, when more than one. */
  n?: number;
  /** Hash of the end user the caller named (OpenAI's `user`), 14 hex characters; never the id itself. */
  u?: string;
}

/** A durable destination of trace records (Redis Stream, JSONL files). */
export interface TraceWriter {
  readonly name: string;
  write(batch: readonly TraceRecord[]): Promise<void>;
  close(): Promise<void>;
}

const SOURCES: readonly Source[] = ['MEMORY', 'GLOBAL', 'COMPUTED'];

/** Validates a parsed record (from JSONL or a Redis Stream entry); undefined when it is not one. */
export function toTraceRecord(o: Record<string, unknown>): TraceRecord | undefined {
  const num = (v: unknown): number => (typeof v === 'number' ? v : typeof v === 'string' && v !== '' ? Number(v) : NaN);
  const t = num(o['t']);
  const kl = num(o['kl']);
  const b = num(o['b']);
  const tok = num(o['tok']);
  const ms = num(o['ms']);
  const r = num(o['r']);
  const k = o['k'];
  const m = o['m'];
  const src = o['src'];
  if (!Number.isFinite(t) || typeof k !== 'string' || typeof m !== 'string' || !Number.isFinite(b) || b < 0) return undefined;
  if (!(SOURCES as readonly unknown[]).includes(src)) return undefined;
  const rec: TraceRecord = {
    t,
    k,
    kl: Number.isFinite(kl) && kl >= 0 ? kl : 0,
    m,
    b,
    tok: Number.isFinite(tok) && tok >= 0 ? tok : 0,
    ms: Number.isFinite(ms) && ms >= 0 ? ms : 0,
    src: src as Source,
    r: Number.isFinite(r) && r > 0 && r <= 1 ? r : 1,
  };
  const c = o['c'];
  if (typeof c === 'string' && c !== '') rec.c = c;
  const n = num(o['n']);
  if (Number.isFinite(n) && n > 1) rec.n = Math.floor(n);
  return rec;
}

/** Fixed-capacity ring: pushes overwrite the oldest. */
export class Ring<T> {
  readonly #items: (T | undefined)[];
  #next = 0;
  #size = 0;

  constructor(readonly capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) throw new TypeError(`Ring capacity must be a positive integer, received ${capacity}`);
    this.#items = new Array<T | undefined>(capacity);
  }

  push(x: T): void {
    this.#items[this.#next] = x;
    this.#next = (this.#next + 1) % this.capacity;
    if (this.#size < this.capacity) this.#size++;
  }

  get size(): number {
    return this.#size;
  }

  /** Oldest first. */
  toArray(): T[] {
    const out: T[] = new Array(this.#size);
    const start = (this.#next - this.#size + this.capacity) % this.capacity;
    for (let i = 0; i < this.#size; i++) out[i] = this.#items[(start + i) % this.capacity]!;
    return out;
  }

  clear(): void {
    this.#items.fill(undefined);
    this.#next = 0;
    this.#size = 0;
  }
}

export interface TracerOptions {
  /** Fraction of keys sampled, 0..1. */
  sampleRate: number;
  writers: TraceWriter[];
  /** Records kept for the live policy window. 0 = no window. */
  windowRecords: number;
  /** Records buffered for the writers; beyond it records are dropped (and counted). */
  bufferMax: number;
  /** Flush period. */
  flushMs: number;
  /** Records per writer call. Default 1000. */
  batchMax?: number;
  logger: Logger;
  /** Clock, ms since the epoch. Default Date.now. */
  now?: () => number;
}

export interface TracerStats {
  sampleRate: number;
  /** Distinct keys looked at (one per key per call). */
  observed: number;
  /** Records sampled. */
  sampled: number;
  /** Records dropped because the buffer was full. */
  dropped: number;
  /** Records handed to every writer successfully. */
  written: number;
  /** Writer calls that failed. */
  errors: number;
  buffered: number;
  writers: string[];
}

export class Tracer implements TraceSink {
  readonly window: Ring<TraceRecord> | undefined;
  readonly #o: Required<Omit<TracerOptions, 'now'>> & { now: () => number };
  #buffer: TraceRecord[] = [];
  #flushing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #lastErrorLog = 0;
  readonly #stats = { observed: 0, sampled: 0, dropped: 0, written: 0, errors: 0 };

  constructor(options: TracerOptions) {
    if (!(options.sampleRate >= 0 && options.sampleRate <= 1)) throw new TypeError(`Tracer sampleRate must be in [0, 1], received ${options.sampleRate}`);
    this.#o = { batchMax: 1000, now: Date.now, ...options };
    this.window = options.windowRecords > 0 ? new Ring<TraceRecord>(options.windowRecords) : undefined;
    if (this.#o.writers.length > 0 && options.sampleRate > 0) {
      this.#timer = setInterval(() => void this.flush(), Math.max(10, options.flushMs));
      this.#timer.unref();
    }
  }

  get sampleRate(): number {
    return this.#o.sampleRate;
  }

  observe(model: string, clientId: string | undefined, keys: readonly (string | undefined)[], results: readonly (TracedResult | Error)[], user?: string): void {
    const rate = this.#o.sampleRate;
    if (rate <= 0 || this.#closed) return;
    try {
      let t = 0;
      let seen: Map<string, TraceRecord> | undefined;
      for (let i = 0; i < results.length; i++) {
        const key = keys[i];
        const res = results[i];
        if (key === undefined || res === undefined || res instanceof Error) continue;
        const prev = seen?.get(key);
        if (prev) {
          if (prev !== DUMMY) prev.n = (prev.n ?? 1) + 1;
          continue;
        }
        if (seen === undefined && keys.length > 1) seen = new Map();
        this.#stats.observed++;
        const h = hash53(key);
        if (!inSample(h, rate)) {
          seen?.set(key, DUMMY);
          continue;
        }
        if (t === 0) t = this.#o.now();
        const rec: TraceRecord = {
          t,
          k: hashHex(h),
          kl: key.length,
          m: model,
          b: res.vector.byteLength,
          tok: res.tokens,
          ms: res.inferenceMs,
          src: res.source,
          r: rate,
        };
        if (clientId) rec.c = clientId;
        if (user) rec.u = hashHex(hash53(user));
        seen?.set(key, rec);
        this.#stats.sampled++;
        this.window?.push(rec);
        if (this.#o.writers.length > 0) {
          if (this.#buffer.length >= this.#o.bufferMax) this.#stats.dropped++;
          else this.#buffer.push(rec);
        }
      }
      if (this.#buffer.length >= this.#o.batchMax && !this.#flushing) setImmediate(() => void this.flush());
    } catch (e) {
      // Tracing must never fail a request.
      this.#logError('trace sampling failed', e);
    }
  }

  /** Writes what is buffered (one flush at a time; concurrent callers wait for the same one). */
  flush(): Promise<void> {
    if (this.#flushing) return this.#flushing;
    if (this.#buffer.length === 0) return Promise.resolve();
    this.#flushing = (async () => {
      try {
        while (this.#buffer.length > 0) {
          const batch = this.#buffer.splice(0, this.#o.batchMax);
          const settled = await Promise.allSettled(this.#o.writers.map((w) => w.write(batch)));
          let ok = true;
          settled.forEach((s, i) => {
            if (s.status === 'rejected') {
              ok = false;
              this.#stats.errors++;
              this.#logError(`trace writer ${this.#o.writers[i]!.name} failed`, s.reason);
            }
          });
          if (ok) this.#stats.written += batch.length;
        }
      } finally {
        this.#flushing = undefined;
      }
    })();
    return this.#flushing;
  }

  stats(): TracerStats {
    return { sampleRate: this.#o.sampleRate, ...this.#stats, buffered: this.#buffer.length, writers: this.#o.writers.map((w) => w.name) };
  }

  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.flush();
    this.#closed = true;
    await Promise.allSettled(this.#o.writers.map((w) => w.close()));
  }

  #logError(msg: string, e: unknown): void {
    const now = Date.now();
    if (now - this.#lastErrorLog < 60_000) return;
    this.#lastErrorLog = now;
    this.#o.logger.warn({ err: e instanceof Error ? e.message : String(e), dropped: this.#stats.dropped, errors: this.#stats.errors }, msg);
  }
}

/** Marker for keys of a call that were looked at and not sampled (so their repeats are skipped too). */
const DUMMY: TraceRecord = { t: 0, k: '', kl: 0, m: '', b: 0, tok: 0, ms: 0, src: 'MEMORY', r: 1 };
