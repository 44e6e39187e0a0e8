/**
 * CachedInference: the one path from "these inputs, this model" to vectors, for every modality.
 *
 *   1. key        the adapter keys every input (model@version + content hash), synchronously; a bad input
 *                 fails only itself (I/O such as fetching an image URL happens before, in the adapter's caller)
 *   2. lookup     one tiered read (memory → global) for every distinct key of the call
 *   3. join       a miss whose computation is already in flight waits for it (single-flight), and one
 *                 whose computation finished while this call was reading the tiers takes its result
 *                 (a short-lived table of just-computed results closes that window)
 *   4. compute    the adapter computes the rest in one submit (tokenise/preprocess → the model's queue)
 *   5. fill       successful computations fill the cache; a failed fill is logged, never a failed answer,
 *                 and a failed computation stores nothing
 *   6. answer     results in input order; an input repeated within the call is charged once
 *
 * Adapters (text.ts, image.ts) say how to key, how to compute and what to store; they never touch the cache
 * or the single-flight table. Charging is not done here: answers carry the work done (`units`,
 * `inferenceMs`) and the request scope charges it.
 */
import { LRUCache } from 'lru-cache';
import { SingleFlight } from '../cache/single-flight.ts';
import type { CacheEntry } from '../cache/cache.ts';
import type { TieredCache } from '../cache/tiered.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { SubmitOptions } from '../runtime/dispatch-queue.ts';
import { inSpan, tracing } from '../telemetry/tracing.ts';
import { emptyBySource, type MemoStats, type PipelineStats, type Source, type TracedFill, type TracedResult, type TraceSink } from './types.ts';

/** One keyed input. */
export interface Keyed<P> {
  /** The cache key read for this input. */
  read: string;
  /** Identity of the computation that produces it (single-flight key); usually equal to `read`. */
  flight: string;
  /** What the adapter needs to compute it. */
  payload: P;
}

/** What one computation produced. */
export interface Computed {
  /** The model's outputs for the item, in the adapter's order. */
  outputs: readonly Float32Array[];
  /** Work done: tokens or model input pixels. */
  units: number;
  /** This item's share of the batch's inference time. */
  inferenceMs: number;
  /** Units of the whole input before truncation (text: tokens), when the adapter cut it. */
  total?: number;
}

/** One answer of the pipeline, before the adapter shapes it. */
export interface Answer {
  /** The computation's key (single-flight). */
  key: string;
  /** The key the tiers were read under (an image's feature key for a `feature` call; else `key`). */
  read: string;
  source: Source;
  /** COMPUTED by a computation another call started (traced as JOINED). */
  joined?: true;
  /** Entries this answer's computation stored beside the one it read (only on the input that owned it). */
  fills?: TracedFill[];
  /** The cached value read (hits). */
  hit?: Float32Array;
  /** The computation's outputs (COMPUTED). */
  computed?: Computed;
  /** Work charged to this answer: 0 for hits, joined computations and repeats within the call. */
  units: number;
  inferenceMs: number;
}

export interface InferenceAdapter<I, P, H extends { name: string }> {
  /** Keys the inputs (synchronously: I/O such as fetching an image belongs before the pipeline). One entry per input. */
  key(handle: H, inputs: readonly I[]): (Keyed<P> | PolyrayError)[];
  /** Starts one computation per item (queued as `serve` says: client, priority, deadline); exactly one promise per item. */
  compute(handle: H, items: readonly P[], serve: SubmitOptions): Promise<Computed>[];
  /** What a computation stores: at least the entry under its flight key. */
  fill(handle: H, item: Keyed<P>, computed: Computed): CacheEntry[];
}

export interface CachedInferenceOptions {
  cache: TieredCache;
  logger: Logger;
  /**
   * How long a computed result stays joinable after it settles, in ms: a call whose tier read started
   * before the cache fill and ended after the computation settled would otherwise compute it again.
   * Default 2000; bounded by `recentMaxBytes` (default 8 MiB).
   */
  recentMs?: number;
  recentMaxBytes?: number;
  /** Request-stream sampling for the cache policy; sees every call it is asked to trace. */
  trace?: TraceSink;
}

export interface RunOptions {
  /** Who asked: carried to the queue with each item. */
  clientId?: string;
  /** How its computations queue (priority, deadline, abort signal, weight); the client is `clientId`. */
  serve?: SubmitOptions;
}

const SOURCE_OF_TIER: Record<string, Source> = { memory: 'MEMORY' };

export class CachedInference<I, P, H extends { name: string }> {
  readonly #o: CachedInferenceOptions;
  readonly #adapter: InferenceAdapter<I, P, H>;
  readonly #flight = new SingleFlight<Computed>();
  /** Just-computed results, each with the number of calls that had started their tier read by then. */
  readonly #recent: LRUCache<string, { computed: Computed; reads: number }>;
  /** Calls that have started their tier read. */
  #reads = 0;
  readonly #stats: PipelineStats = { calls: 0, cacheLookups: 0, items: 0, bySource: emptyBySource(), joined: 0, byModel: {}, errors: {} };

  constructor(adapter: InferenceAdapter<I, P, H>, options: CachedInferenceOptions) {
    this.#adapter = adapter;
    this.#o = options;
    this.#recent = new LRUCache<string, { computed: Computed; reads: number }>({
      maxSize: options.recentMaxBytes ?? 8 << 20,
      sizeCalculation: (r) => r.computed.outputs.reduce((n, v) => n + v.byteLength, 64),
      ttl: options.recentMs ?? 2000,
    });
  }

  async run(handle: H, inputs: readonly I[], options: RunOptions = {}): Promise<(Answer | PolyrayError)[]> {
    this.#stats.calls++;
    this.#stats.items += inputs.length;
    const keyed = this.#adapter.key(handle, inputs);
    if (keyed.length !== inputs.length) throw new Error(`adapter keyed ${keyed.length} of ${inputs.length} inputs`);

    // 2. One read through the tiers for every distinct key.
    const read = ++this.#reads;
    const distinct = new Set<string>();
    for (const k of keyed) if (!(k instanceof PolyrayError)) distinct.add(k.read);
    const reads = [...distinct];
    const found = new Map<string, { value: Float32Array; source: Source }>();
    if (reads.length > 0) {
      this.#stats.cacheLookups++;
      const hits = tracing.on
        ? await inSpan('polyray.cache.lookup', { 'polyray.model': handle.name, 'polyray.keys': reads.length }, async (span) => {
            const h = await this.#o.cache.lookup(reads);
            span?.setAttribute('polyray.hits', h.filter(Boolean).length);
            return h;
          })
        : await this.#o.cache.lookup(reads);
      hits.forEach((h, j) => {
        if (h) found.set(reads[j]!, { value: h.value, source: SOURCE_OF_TIER[h.tier] ?? 'GLOBAL' });
      });
    }

    // 3./4. Misses: join what is in flight, compute the rest in one submit.
    const computing = new Map<string, { promise: Promise<Computed>; owner: boolean }>();
    const fresh = new Map<string, Keyed<P>>();
    for (const k of keyed) {
      if (k instanceof PolyrayError || found.has(k.read) || computing.has(k.flight) || fresh.has(k.flight)) continue;
      const inflight = this.#flight.get(k.flight);
      // A result that settled after this call's read began was not in the tiers it read: join it. One
      // that settled before was there to be read; its miss now is an eviction, and computing refills.
      const recent = inflight ? undefined : this.#recent.get(k.flight);
      if (inflight) computing.set(k.flight, { promise: inflight, owner: false });
      else if (recent && read <= recent.reads) computing.set(k.flight, { promise: Promise.resolve(recent.computed), owner: false });
      else fresh.set(k.flight, k);
    }
    // Only a call that computes needs its queue options (and reading them makes the request's abort signal).
    let serve: SubmitOptions | undefined;
    const serveOf = (): SubmitOptions => (serve ??= { ...options.serve, client: options.clientId });
    if (fresh.size > 0) this.#start(handle, [...fresh.values()], serveOf(), computing);
    let computed = await this.#settle(computing);
    // A computation this call joined was dropped for its owner's deadline (or its owner went away); this
    // call's own deadline decides for it: it computes those itself, once.
    const orphaned = [...computing].filter(([flight, c]) => !c.owner && isExpired(computed.get(flight))).map(([flight]) => flight);
    if (orphaned.length > 0) {
      const again = new Map<string, { promise: Promise<Computed>; owner: boolean }>();
      const items = keyed.filter((k): k is Keyed<P> => !(k instanceof PolyrayError) && orphaned.includes(k.flight));
      this.#start(handle, [...new Map(items.map((k) => [k.flight, k])).values()], serveOf(), again);
      computed = new Map([...computed, ...(await this.#settle(again))]);
    }

    // 6. Assemble in input order.
    const charged = new Set<string>();
    const answers = keyed.map((k): Answer | PolyrayError => {
      if (k instanceof PolyrayError) return this.#fail(k);
      const hit = found.get(k.read);
      if (hit) {
        this.#count(handle.name, hit.source);
        return { key: k.flight, read: k.read, source: hit.source, hit: hit.value, units: 0, inferenceMs: 0 };
      }
      const c = computed.get(k.flight);
      if (!c) return this.#fail(new PolyrayError(ErrorCode.INTERNAL_SERVER_ERROR, 'Internal error'));
      if (c instanceof PolyrayError) return this.#fail(c);
      this.#count(handle.name, 'COMPUTED');
      const first = c.owner && !charged.has(k.flight);
      charged.add(k.flight);
      const answer: Answer = {
        key: k.flight,
        read: k.read,
        source: 'COMPUTED',
        computed: c.value,
        units: first ? c.value.units : 0,
        inferenceMs: first ? c.value.inferenceMs : 0,
      };
      if (!c.owner) answer.joined = true;
      else if (first && this.#o.trace) {
        // What the fill stored beside the entry this input reads, so the trace sees all the tiers hold.
        const entries = this.#adapter.fill(handle, k, c.value);
        if (entries.length > 1) answer.fills = entries.filter((e) => e.key !== k.read).map((e) => ({ key: e.key, bytes: e.value.byteLength }));
      }
      return answer;
    });
    return answers;
  }

  /**
   * Reports a call's shaped results to the trace sink (the adapter decides what a result carries), under
   * the keys the tiers were read with, marking joins and the entries fills stored beside them.
   */
  trace(
    model: string,
    clientId: string | undefined,
    answers: readonly (Answer | PolyrayError)[],
    results: readonly (TracedResult | Error)[],
    user?: string,
  ): void {
    const sink = this.#o.trace;
    if (!sink) return;
    let traced = results;
    // Only calls with a join or a fill pay for a copy of their results.
    if (answers.some((a) => !(a instanceof PolyrayError) && (a.joined || a.fills))) {
      traced = results.map((r, i) => {
        const a = answers[i];
        if (r instanceof Error || a === undefined || a instanceof PolyrayError || !(a.joined || a.fills)) return r;
        return { ...r, ...(a.joined ? { joined: true } : {}), ...(a.fills ? { fills: a.fills } : {}) };
      });
    }
    sink.observe(
      model,
      clientId,
      answers.map((a) => (a instanceof PolyrayError ? undefined : a.read)),
      traced,
      user,
    );
  }

  #start(handle: H, fresh: readonly Keyed<P>[], serve: SubmitOptions, computing: Map<string, { promise: Promise<Computed>; owner: boolean }>): void {
    let promises: Promise<Computed>[];
    try {
      promises = this.#adapter.compute(
        handle,
        fresh.map((k) => k.payload),
        serve,
      );
      if (promises.length !== fresh.length) throw new Error(`adapter started ${promises.length} computations for ${fresh.length} items`);
    } catch (e) {
      const err = Promise.reject(e instanceof PolyrayError ? e : new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed; the request can be retried'));
      err.catch(() => undefined);
      promises = fresh.map(() => err);
    }
    fresh.forEach((k, j) => {
      const p = this.#flight.set(k.flight, promises[j]!);
      computing.set(k.flight, { promise: p, owner: true });
      // 5. Fill the cache from a computation that succeeds; a failed fill is logged, never an error.
      p.then(
        (c) => {
          this.#recent.set(k.flight, { computed: c, reads: this.#reads });
          return this.#o.cache.store(this.#adapter.fill(handle, k, c));
        },
        () => undefined,
      ).catch((e: unknown) => this.#o.logger.warn({ err: (e as Error).message, model: handle.name }, 'cache fill failed'));
    });
  }

  async #settle(
    computing: Map<string, { promise: Promise<Computed>; owner: boolean }>,
  ): Promise<Map<string, { value: Computed; owner: boolean } | PolyrayError>> {
    const out = new Map<string, { value: Computed; owner: boolean } | PolyrayError>();
    await Promise.all(
      [...computing].map(async ([flight, c]) => {
        try {
          out.set(flight, { value: await c.promise, owner: c.owner });
          if (!c.owner) this.#stats.joined++;
        } catch (e) {
          out.set(flight, e instanceof PolyrayError ? e : new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed; the request can be retried'));
        }
      }),
    );
    return out;
  }

  #fail(e: PolyrayError): PolyrayError {
    this.#stats.errors[e.code] = (this.#stats.errors[e.code] ?? 0) + 1;
    return e;
  }

  #count(model: string, source: Source): void {
    this.#stats.bySource[source]++;
    let m = this.#stats.byModel[model];
    if (!m) {
      m = emptyBySource();
      this.#stats.byModel[model] = m;
    }
    m[source]++;
  }

  /** The recent-computations table (joins of computations just finished), as `name`. */
  memo(name: string): MemoStats {
    return { memo: name, entries: this.#recent.size, bytes: this.#recent.calculatedSize, maxBytes: this.#recent.maxSize };
  }

  stats(): PipelineStats {
    const byModel: PipelineStats['byModel'] = {};
    for (const [k, v] of Object.entries(this.#stats.byModel)) byModel[k] = { ...v };
    return { ...this.#stats, bySource: { ...this.#stats.bySource }, byModel, errors: { ...this.#stats.errors } };
  }
}

function isExpired(r: { value: Computed; owner: boolean } | PolyrayError | undefined): boolean {
  return r instanceof PolyrayError && r.code === ErrorCode.DEADLINE_EXCEEDED;
}
