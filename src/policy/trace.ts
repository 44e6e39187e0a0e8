/**
 * Trace sampling of the request stream (MultiRay's feedback loop, step one).
 *
 * The pipeline (src/service/pipeline.ts) hands every assembled call's results to a `TraceSink` in one synchronous call.
 * The `Tracer` (the sink the server installs) keeps the keys its `Sampler` picks (sampler.ts: by key
 * hash, so a sampled key is always sampled, plus the heaviest keys at rate 1; each record carries its
 * rate), turns them into `TraceRecord`s and
 *   - pushes each into a bounded in-memory ring (the live window the policy controller simulates), and
 *   - appends it to a bounded buffer that a timer flushes in batches to the `TraceWriter`s (a capped
 *     Redis Stream, rotated JSONL files). A full buffer drops the record and counts it; a failing
 *     writer counts an error. Nothing here can block, slow down beyond a hash per item, or fail a request.
 *
 * It also counts every input it sees by the tier that answered (sampled or not), with checkpoints along the
 * window, so the policy can show the measured rate of all keys over the same records it simulates.
 *
 * What counts as what (the same in the measured and the simulated figures): an input answered by a
 * computation another call started (single-flight) is `JOINED`; a repeat of a key within one call is one
 * record with `n` > 1 whose extra copies are `JOINED` too — neither looked the tiers up itself, and the
 * simulator, replaying in order, finds both in memory. An entry a computation stored beside the one it was
 * asked for (an image's feature) is a fill record (`f: 1`): the tiers hold it, nobody read it.
 *
 * The record never holds input text or the cache key in clear: only a hash of the cache key.
 */
import type { Logger } from '../log.ts';
import type { Source, TracedResult, TraceSink } from '../service/types.ts';
import { hash53, hashHex } from './hash.ts';
import { Sampler, type SamplerOptions } from './sampler.ts';

/** The tier that answered, or `JOINED`: answered without a tier lookup of its own (a single-flight join, a repeat within a call). */
export type TraceSource = Source | 'JOINED';

export const TRACE_SOURCES: readonly TraceSource[] = ['MEMORY', 'GLOBAL', 'COMPUTED', 'JOINED'];

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
  /** Tier that answered (`COMPUTED` for a fill). */
  src: TraceSource;
  /** Rate at which this record was sampled: the hash-sample rate, or 1 for a heavy key. It stands for 1/r keys. */
  r: number;
  /** 1: a fill — an entry stored beside a computed one, not looked up (it holds tier memory, counts no item). */
  f?: 1;
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
  if (!(TRACE_SOURCES as readonly unknown[]).includes(src)) return undefined;
  const rec: TraceRecord = {
    t,
    k,
    kl: Number.isFinite(kl) && kl >= 0 ? kl : 0,
    m,
    b,
    tok: Number.isFinite(tok) && tok >= 0 ? tok : 0,
    ms: Number.isFinite(ms) && ms >= 0 ? ms : 0,
    src: src as TraceSource,
    r: Number.isFinite(r) && r > 0 && r <= 1 ? r : 1,
  };
  const c = o['c'];
  if (typeof c === 'string' && c !== '') rec.c = c;
  const n = num(o['n']);
  if (Number.isFinite(n) && n > 1) rec.n = Math.floor(n);
  if (num(o['f']) === 1) rec.f = 1;
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
  /** Fraction of keys sampled by hash, 0..1. */
  sampleRate: number;
  /** Seed of the key hash (a different salt samples different keys). Default 0x5eed. */
  salt?: number;
  /** Heavy-key tracing (sampler.ts); default `DEFAULT_SAMPLER`, `heavyShare: 0` = plain hash sampling. */
  sampler?: Omit<SamplerOptions, 'rate'>;
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
  /** Keys traced at rate 1 now because they are heavy. */
  heavyKeys: number;
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

/** Items of every input the tracer saw, by what answered it, from a checkpoint to now. */
export interface MeasuredWindow {
  /** Time of the checkpoint (ms since the epoch). */
  sinceT: number;
  /** Inputs seen since then. */
  items: number;
  /** Items by what answered them (`JOINED`: joins and repeats within a call). */
  bySource: Record<TraceSource, number>;
}

interface Checkpoint {
  /** Records pushed to the window before it. */
  seq: number;
  t: number;
  totals: Record<TraceSource, number>;
}

/** Checkpoints per window length: the measured figure covers the window to within 1 % of its records. */
const CHECKPOINTS_PER_WINDOW = 100;

const emptyTotals = (): Record<TraceSource, number> => ({ MEMORY: 0, GLOBAL: 0, COMPUTED: 0, JOINED: 0 });

export class Tracer implements TraceSink {
  readonly window: Ring<TraceRecord> | undefined;
  readonly #o: Required<Omit<TracerOptions, 'now' | 'sampler'>> & { now: () => number };
  readonly #sampler: Sampler;
  #buffer: TraceRecord[] = [];
  #flushing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #lastErrorLog = 0;
  readonly #stats = { observed: 0, sampled: 0, dropped: 0, written: 0, errors: 0 };
  /** Every input seen, by source (cumulative), and checkpoints of it along the window. */
  readonly #totals = emptyTotals();
  readonly #checkpoints = new Ring<Checkpoint>(CHECKPOINTS_PER_WINDOW + 8);
  readonly #checkpointEvery: number;
  #seq = 0;

  constructor(options: TracerOptions) {
    if (!(options.sampleRate >= 0 && options.sampleRate <= 1)) throw new TypeError(`Tracer sampleRate must be in [0, 1], received ${options.sampleRate}`);
    const { sampler, ...rest } = options;
    this.#o = { batchMax: 1000, now: Date.now, salt: 0x5eed, ...rest };
    this.#sampler = new Sampler({ ...sampler, rate: options.sampleRate });
    this.window = options.windowRecords > 0 ? new Ring<TraceRecord>(options.windowRecords) : undefined;
    this.#checkpointEvery = Math.max(1, Math.ceil(options.windowRecords / CHECKPOINTS_PER_WINDOW));
    // Time of the start: that of the first record (the clock is not read outside observe).
    this.#checkpoints.push({ seq: 0, t: NaN, totals: emptyTotals() });
    if (this.#o.writers.length > 0 && options.sampleRate > 0) {
      this.#timer = setInterval(() => void this.flush(), Math.max(10, options.flushMs));
      this.#timer.unref();
    }
  }

  get sampleRate(): number {
    return this.#o.sampleRate;
  }

  observe(model: string, clientId: string | undefined, keys: readonly (string | undefined)[], results: readonly (TracedResult | Error)[], user?: string): void {
    const sampler = this.#sampler;
    if (sampler.rate <= 0 || this.#closed) return;
    try {
      const salt = this.#o.salt;
      let t = 0;
      let seen: Map<string, TraceRecord> | undefined;
      for (let i = 0; i < results.length; i++) {
        const key = keys[i];
        const res = results[i];
        if (key === undefined || res === undefined || res instanceof Error) continue;
        const prev = seen?.get(key);
        if (prev) {
          // A repeat within the call looked nothing up itself.
          this.#totals.JOINED++;
          if (prev !== DUMMY) prev.n = (prev.n ?? 1) + 1;
          continue;
        }
        if (seen === undefined && keys.length > 1) seen = new Map();
        this.#stats.observed++;
        const src: TraceSource = res.joined ? 'JOINED' : res.source;
        this.#totals[src]++;
        if (t === 0) t = this.#o.now();
        if (res.fills) for (const f of res.fills) this.#fill(model, f.key, f.bytes, t);
        const h = hash53(key, salt);
        const rate = sampler.decide(h);
        if (rate === 0) {
          seen?.set(key, DUMMY);
          continue;
        }
        const rec: TraceRecord = {
          t,
          k: hashHex(h),
          kl: key.length,
          m: model,
          b: res.vector.byteLength,
          tok: res.tokens,
          ms: res.inferenceMs,
          src,
          r: rate,
        };
        if (clientId) rec.c = clientId;
        if (user) rec.u = hashHex(hash53(user));
        seen?.set(key, rec);
        this.#push(rec);
      }
      if (this.#buffer.length >= this.#o.batchMax && !this.#flushing) setImmediate(() => void this.flush());
    } catch (e) {
      // Tracing must never fail a request.
      this.#logError('trace sampling failed', e);
    }
  }

  /** An entry stored beside a computed one: traced (as a fill) when its own key is sampled. */
  #fill(model: string, key: string, bytes: number, t: number): void {
    const h = hash53(key, this.#o.salt);
    const rate = this.#sampler.decide(h, 0);
    if (rate === 0) return;
    this.#push({ t, k: hashHex(h), kl: key.length, m: model, b: bytes, tok: 0, ms: 0, src: 'COMPUTED', r: rate, f: 1 });
  }

  #push(rec: TraceRecord): void {
    this.#stats.sampled++;
    if (this.window) {
      this.window.push(rec);
      if (++this.#seq % this.#checkpointEvery === 0) this.#checkpoints.push({ seq: this.#seq, t: rec.t, totals: { ...this.#totals } });
    }
    if (this.#o.writers.length > 0) {
      if (this.#buffer.length >= this.#o.bufferMax) this.#stats.dropped++;
      else this.#buffer.push(rec);
    }
  }

  /**
   * Inputs seen (all keys, sampled or not) since the checkpoint at or just before the oldest record of the
   * window: the measured figures over (to within 1 % of) the records the policy simulates.
   */
  measuredOverWindow(): MeasuredWindow {
    const start = this.#seq - (this.window?.size ?? 0);
    const points = this.#checkpoints.toArray();
    let from = points[0]!;
    for (const p of points) if (p.seq <= start) from = p;
    const bySource = emptyTotals();
    let items = 0;
    for (const s of TRACE_SOURCES) {
      bySource[s] = this.#totals[s] - from.totals[s];
      items += bySource[s];
    }
    return { sinceT: Number.isNaN(from.t) ? (this.window?.toArray()[0]?.t ?? 0) : from.t, items, bySource };
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
    return {
      sampleRate: this.#o.sampleRate,
      ...this.#stats,
      heavyKeys: this.#sampler.heavyKeys,
      buffered: this.#buffer.length,
      writers: this.#o.writers.map((w) => w.name),
    };
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
