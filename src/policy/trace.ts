/**
 * Trace sampling of the request stream (MultiRay's feedback loop, step one).
 *
 * The pipeline (src/service/pipeline.ts) hands every assembled call's results to a `TraceSink` in one synchronous call.
 * The `Tracer` (the sink the server installs) keeps the keys its `Sampler` picks (sampler.ts: by key
 * hash, so a sampled key is always sampled, plus the heaviest keys at rate 1; each record carries its
 * rate), turns them into `TraceRecord`s and
 *   - logs each in a bounded columnar log (`RecordLog`: typed arrays, no object per record) whose newest
 *     records are the live window the policy controller simulates, and
 *   - which a timer flushes in batches to the `TraceWriter`s (a capped Redis Stream, rotated JSONL files).
 *     When the writers fall a full buffer behind, the oldest record not yet written is dropped and
 *     counted; a failing writer counts an error. Nothing here can block, slow down beyond a hash per
 *     item, or fail a request.
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
import { grown } from '../typed-arrays.ts';
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

/**
 * Records handed to the writers in one call, read from the tracer's log in the form a writer asks for, each
 * form built once: objects (`records`), or the JSONL text (`jsonl`) written straight from the log's columns
 * without an object per record.
 */
export interface TraceBatch {
  readonly length: number;
  records(): readonly TraceRecord[];
  /** Each record as one line of JSON (as `JSON.stringify` writes it) ending in a newline. */
  jsonl(): string;
}

/** A durable destination of trace records (Redis Stream, JSONL files). */
export interface TraceWriter {
  readonly name: string;
  write(batch: TraceBatch): Promise<void>;
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

/** The live window of recent records, oldest first (what the policy controller simulates). */
export interface TraceWindow {
  readonly size: number;
  toArray(): TraceRecord[];
}

const SOURCE_INDEX: Record<TraceSource, number> = { MEMORY: 0, GLOBAL: 1, COMPUTED: 2, JOINED: 3 };

/** A number as `JSON.stringify` writes it. */
const json = (x: number): string => (Number.isFinite(x) ? String(x) : 'null');

/** Fields of a record as the tracer pushes it (the key and user as their 53-bit hashes). */
interface RecordFields {
  t: number;
  h: number;
  kl: number;
  model: string;
  b: number;
  tok: number;
  ms: number;
  src: TraceSource;
  r: number;
  client: string | undefined;
  fill: boolean;
  /** Hash of the end user, NaN for none. */
  user: number;
}

/**
 * Sampled records column by column: one slot per record in typed arrays, numbered by a sequence that only
 * grows, the newest `capacity` kept. Tracing a lookup allocates nothing that outlives the call: with heavy
 * keys traced at rate 1, a busy replica records tens of thousands of lookups a second, and as objects held
 * for seconds (the window, the writers' buffer) they cost the garbage collector more than the tracing
 * itself. Records become objects only when read: the window once per policy interval, the writers per batch.
 * The columns start small and double up to `capacity`, so a large configured window costs memory only once
 * it fills.
 */
class RecordLog {
  readonly capacity: number;
  /** Records ever pushed; the next record's sequence number. */
  seq = 0;
  #t = new Float64Array(0);
  #h = new Float64Array(0);
  #kl = new Uint32Array(0);
  #m = new Uint32Array(0);
  #b = new Uint32Array(0);
  #tok = new Uint32Array(0);
  #ms = new Float64Array(0);
  #src = new Uint8Array(0);
  #r = new Float64Array(0);
  /** Client index + 1 (0 = none). */
  #c = new Uint32Array(0);
  #n = new Uint32Array(0);
  #f = new Uint8Array(0);
  #u = new Float64Array(0);
  /** Model and client names, by index (both bounded: served models, configured clients). */
  readonly #names: string[] = [];
  /** The same names as JSON strings, for the JSONL text. */
  readonly #namesJson: string[] = [];
  readonly #nameIndex = new Map<string, number>();

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  push(x: RecordFields): number {
    const seq = this.seq++;
    const i = seq % this.capacity;
    if (i >= this.#t.length) this.#grow();
    this.#t[i] = x.t;
    this.#h[i] = x.h;
    this.#kl[i] = x.kl;
    this.#m[i] = this.#name(x.model);
    this.#b[i] = x.b;
    this.#tok[i] = x.tok;
    this.#ms[i] = x.ms;
    this.#src[i] = SOURCE_INDEX[x.src];
    this.#r[i] = x.r;
    this.#c[i] = x.client === undefined ? 0 : this.#name(x.client) + 1;
    this.#n[i] = 1;
    this.#f[i] = x.fill ? 1 : 0;
    this.#u[i] = x.user;
    return seq;
  }

  /** One more input of the call that has record `seq` (a repeat within the call), if it is still held. */
  repeat(seq: number): void {
    if (seq >= this.seq - this.capacity) this.#n[seq % this.capacity]!++;
  }

  /** Time of record `seq` (NaN when it is no longer held). */
  timeOf(seq: number): number {
    return seq >= 0 && seq < this.seq && seq >= this.seq - this.capacity ? this.#t[seq % this.capacity]! : NaN;
  }

  /** Records `from` to `to` (exclusive) as a writers' batch; each form is built when first asked for. */
  batch(from: number, to: number): TraceBatch {
    let records: TraceRecord[] | undefined;
    let jsonl: string | undefined;
    const lo = Math.max(from, this.seq - this.capacity, 0);
    const hi = Math.min(to, this.seq);
    return {
      length: Math.max(0, hi - lo),
      records: () => (records ??= this.read(lo, hi)),
      jsonl: () => (jsonl ??= this.#jsonl(lo, hi)),
    };
  }

  #jsonl(from: number, to: number): string {
    let text = '';
    for (let seq = from; seq < to; seq++) {
      const i = seq % this.capacity;
      text += `{"t":${json(this.#t[i]!)},"k":"${hashHex(this.#h[i]!)}","kl":${this.#kl[i]!},"m":${this.#namesJson[this.#m[i]!]!},"b":${this.#b[i]!},"tok":${this.#tok[i]!},"ms":${json(this.#ms[i]!)},"src":"${TRACE_SOURCES[this.#src[i]!]!}","r":${json(this.#r[i]!)}`;
      if (this.#f[i] === 1) text += ',"f":1';
      const c = this.#c[i]!;
      if (c > 0) text += `,"c":${this.#namesJson[c - 1]!}`;
      const u = this.#u[i]!;
      if (!Number.isNaN(u)) text += `,"u":"${hashHex(u)}"`;
      const n = this.#n[i]!;
      text += n > 1 ? `,"n":${n}}\n` : '}\n';
    }
    return text;
  }

  /** Records `from` to `to` (exclusive) as objects, oldest first; those no longer held are skipped. */
  read(from: number, to: number): TraceRecord[] {
    const out: TraceRecord[] = [];
    for (let seq = Math.max(from, this.seq - this.capacity, 0); seq < Math.min(to, this.seq); seq++) {
      const i = seq % this.capacity;
      const rec: TraceRecord = {
        t: this.#t[i]!,
        k: hashHex(this.#h[i]!),
        kl: this.#kl[i]!,
        m: this.#names[this.#m[i]!]!,
        b: this.#b[i]!,
        tok: this.#tok[i]!,
        ms: this.#ms[i]!,
        src: TRACE_SOURCES[this.#src[i]!]!,
        r: this.#r[i]!,
      };
      if (this.#f[i] === 1) rec.f = 1;
      const c = this.#c[i]!;
      if (c > 0) rec.c = this.#names[c - 1]!;
      const u = this.#u[i]!;
      if (!Number.isNaN(u)) rec.u = hashHex(u);
      const n = this.#n[i]!;
      if (n > 1) rec.n = n;
      out.push(rec);
    }
    return out;
  }

  #name(name: string): number {
    let i = this.#nameIndex.get(name);
    if (i === undefined) {
      i = this.#names.length;
      this.#names.push(name);
      this.#namesJson.push(JSON.stringify(name));
      this.#nameIndex.set(name, i);
    }
    return i;
  }

  #grow(): void {
    const size = Math.min(this.capacity, Math.max(1024, this.#t.length * 2));
    this.#t = grown(this.#t, size);
    this.#h = grown(this.#h, size);
    this.#kl = grown(this.#kl, size);
    this.#m = grown(this.#m, size);
    this.#b = grown(this.#b, size);
    this.#tok = grown(this.#tok, size);
    this.#ms = grown(this.#ms, size);
    this.#src = grown(this.#src, size);
    this.#r = grown(this.#r, size);
    this.#c = grown(this.#c, size);
    this.#n = grown(this.#n, size);
    this.#f = grown(this.#f, size);
    this.#u = grown(this.#u, size);
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
  /** Records buffered for the writers; beyond it the oldest not yet written is dropped (and counted). */
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
  readonly window: TraceWindow | undefined;
  readonly #o: Required<Omit<TracerOptions, 'now' | 'sampler'>> & { now: () => number };
  readonly #sampler: Sampler;
  /** The window and the writers' buffer, one log (undefined with neither). */
  readonly #log: RecordLog | undefined;
  /** Sequence of the next record the writers have not been handed. */
  #unwritten = 0;
  /** Keys of the call being observed: the sequence of their record, -1 for keys not sampled. */
  readonly #seen = new Map<string, number>();
  #flushing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #lastErrorLog = 0;
  readonly #stats = { observed: 0, sampled: 0, dropped: 0, written: 0, errors: 0 };
  /** Every input seen, by source (cumulative), and checkpoints of it along the window. */
  readonly #totals = emptyTotals();
  readonly #checkpoints = new Ring<Checkpoint>(CHECKPOINTS_PER_WINDOW + 8);
  readonly #checkpointEvery: number;

  constructor(options: TracerOptions) {
    if (!(options.sampleRate >= 0 && options.sampleRate <= 1)) throw new TypeError(`Tracer sampleRate must be in [0, 1], received ${options.sampleRate}`);
    const { sampler, ...rest } = options;
    this.#o = { batchMax: 1000, now: Date.now, salt: 0x5eed, ...rest };
    this.#sampler = new Sampler({ ...sampler, rate: options.sampleRate });
    const writing = options.writers.length > 0;
    const capacity = Math.max(options.windowRecords, writing ? options.bufferMax : 0);
    const log = capacity > 0 ? new RecordLog(capacity) : undefined;
    this.#log = log;
    if (log && options.windowRecords > 0) {
      const records = options.windowRecords;
      this.window = {
        get size() {
          return Math.min(log.seq, records);
        },
        toArray: () => log.read(log.seq - records, log.seq),
      };
    }
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
    const seen = this.#seen;
    try {
      const salt = this.#o.salt;
      const repeats = keys.length > 1;
      let t = 0;
      let u = Number.NaN;
      for (let i = 0; i < results.length; i++) {
        const key = keys[i];
        const res = results[i];
        if (key === undefined || res === undefined || res instanceof Error) continue;
        const prev = repeats ? seen.get(key) : undefined;
        if (prev !== undefined) {
          // A repeat within the call looked nothing up itself.
          this.#totals.JOINED++;
          if (prev >= 0) this.#log?.repeat(prev);
          continue;
        }
        this.#stats.observed++;
        const src: TraceSource = res.joined ? 'JOINED' : res.source;
        this.#totals[src]++;
        if (t === 0) {
          t = this.#o.now();
          if (user) u = hash53(user);
        }
        if (res.fills) for (const f of res.fills) this.#fill(model, f.key, f.bytes, t);
        const h = hash53(key, salt);
        const rate = sampler.decide(h);
        if (rate === 0) {
          if (repeats) seen.set(key, -1);
          continue;
        }
        const seq = this.#push({
          t,
          h,
          kl: key.length,
          model,
          b: res.vector.byteLength,
          tok: res.tokens,
          ms: res.inferenceMs,
          src,
          r: rate,
          client: clientId || undefined,
          fill: false,
          user: u,
        });
        if (repeats) seen.set(key, seq);
      }
      if (this.#o.writers.length > 0 && this.#log && this.#log.seq - this.#unwritten >= this.#o.batchMax && !this.#flushing)
        setImmediate(() => void this.flush());
    } catch (e) {
      // Tracing must never fail a request.
      this.#logError('trace sampling failed', e);
    } finally {
      seen.clear();
    }
  }

  /** An entry stored beside a computed one: traced (as a fill) when its own key is sampled. */
  #fill(model: string, key: string, bytes: number, t: number): void {
    const h = hash53(key, this.#o.salt);
    const rate = this.#sampler.decide(h, 0);
    if (rate === 0) return;
    this.#push({ t, h, kl: key.length, model, b: bytes, tok: 0, ms: 0, src: 'COMPUTED', r: rate, client: undefined, fill: true, user: Number.NaN });
  }

  /** Logs a sampled record; returns its sequence (-1 when there is no log). */
  #push(rec: RecordFields): number {
    this.#stats.sampled++;
    const log = this.#log;
    if (!log) return -1;
    const seq = log.push(rec);
    if (this.window && log.seq % this.#checkpointEvery === 0) this.#checkpoints.push({ seq: log.seq, t: rec.t, totals: { ...this.#totals } });
    if (this.#o.writers.length > 0 && log.seq - this.#unwritten > this.#o.bufferMax) {
      // The writers are behind by a full buffer: the oldest record they were not handed is dropped.
      this.#unwritten = log.seq - this.#o.bufferMax;
      this.#stats.dropped++;
    }
    return seq;
  }

  /**
   * Inputs seen (all keys, sampled or not) since the checkpoint at or just before the oldest record of the
   * window: the measured figures over (to within 1 % of) the records the policy simulates.
   */
  measuredOverWindow(): MeasuredWindow {
    const seq = this.#log?.seq ?? 0;
    const start = seq - (this.window?.size ?? 0);
    const points = this.#checkpoints.toArray();
    let from = points[0]!;
    for (const p of points) if (p.seq <= start) from = p;
    const bySource = emptyTotals();
    let items = 0;
    for (const s of TRACE_SOURCES) {
      bySource[s] = this.#totals[s] - from.totals[s];
      items += bySource[s];
    }
    const first = this.#log?.timeOf(start) ?? Number.NaN;
    return { sinceT: Number.isNaN(from.t) ? (Number.isNaN(first) ? 0 : first) : from.t, items, bySource };
  }

  /** Writes what is buffered (one flush at a time; concurrent callers wait for the same one). */
  flush(): Promise<void> {
    if (this.#flushing) return this.#flushing;
    const log = this.#log;
    if (!log || this.#o.writers.length === 0 || log.seq === this.#unwritten) return Promise.resolve();
    this.#flushing = (async () => {
      try {
        while (log.seq > this.#unwritten) {
          const to = Math.min(log.seq, this.#unwritten + this.#o.batchMax);
          const batch = log.batch(this.#unwritten, to);
          this.#unwritten = to;
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
      buffered: this.#log && this.#o.writers.length > 0 ? this.#log.seq - this.#unwritten : 0,
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
