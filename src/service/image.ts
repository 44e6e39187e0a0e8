/**
 * Image embeddings: the image adapter of CachedInference (src/service/pipeline.ts).
 *
 *   resolve  every image gets its content hash: bytes are hashed; a URL's hash is remembered for a
 *            while (bounded LRU, `urlCacheTtlMs`), so a repeated URL is answered from the cache without
 *            a fetch; an unknown URL is fetched first (each URL once per call and across concurrent calls)
 *   key      `model@version:sha256(bytes)` — or, for a task head's input, `model@version:feature:<hash>`
 *   compute  fetch if still needed, decode and preprocess (sharp, off the event loop), submit to the
 *            model's tensor queue (src/runtime/tensor-batcher.ts)
 *   fill     both outputs: the unit `embedding` under the content key and the raw `feature` (what task
 *            heads read) under the feature key
 *
 * Results are per input: an image that cannot be fetched or decoded fails only itself, with an IMAGE_*
 * code and its `index`.
 */
import type { SubmitOptions } from '../runtime/dispatch-queue.ts';
import { LRUCache } from 'lru-cache';
import type { CacheEntry } from '../cache/cache.ts';
import { cacheKey, contentHash } from '../cache/keys.ts';
import { SingleFlight } from '../cache/single-flight.ts';
import type { TieredCache } from '../cache/tiered.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { ImageFetcher } from '../images/fetch.ts';
import { preprocessImage } from '../images/preprocess.ts';
import type { Logger } from '../log.ts';
import type { ImageHandle } from '../runtime/handle.ts';
import { normalizeInPlace } from '../runtime/pooling.ts';
import { inSpan } from '../telemetry/tracing.ts';
import { CachedInference, type Computed, type InferenceAdapter, type Keyed } from './pipeline.ts';
import type { EmbedResult, MemoStats, PipelineStats, TraceSink } from './types.ts';

export type ImageInput = { kind: 'url'; url: string } | { kind: 'bytes'; bytes: Uint8Array };

/** What a caller needs: the unit embedding, or the raw feature a task head reads. */
export type ImageWant = 'embedding' | 'feature';

export interface ImageResult extends EmbedResult {
  /** sha256 of the image bytes (base64url): the content part of the cache key. */
  hash: string;
  /** The raw feature (when asked for with `want: "feature"`). */
  feature?: Float32Array;
  /** Model input pixels computed for this input (0 for cache hits and joined computations). */
  pixels: number;
}

export interface ImageEmbedderOptions {
  cache: TieredCache;
  logger: Logger;
  fetcher: ImageFetcher;
  /** Largest decoded image (width × height). */
  maxPixels: number;
  /** URL → content hash memory: time to live and size. */
  urlCacheTtlMs: number;
  urlCacheMaxEntries: number;
  /** Bytes the URL → hash memory may hold (keys included). */
  urlCacheMaxBytes: number;
  /** Most URL fetches one call runs at once. Default 16. */
  fetchConcurrency?: number;
  /** Request-stream sampling (pixels stand in for tokens). */
  trace?: TraceSink;
}

export interface ImageStats extends PipelineStats {
  /** Network fetches started (data: URLs included). */
  fetches: number;
  /** URLs answered without fetching, thanks to the URL → hash memory and the cache. */
  urlMemoHits: number;
  /** Images decoded and preprocessed. */
  decodes: number;
  /** Images sent to the encoder. */
  encoded: number;
}

/** An image whose content hash is known; `bytes` absent when the hash came from the URL memory. */
interface Resolved {
  hash: string;
  bytes?: Uint8Array;
  url?: string;
}

type ImageCall = ImageHandle & { want: ImageWant; namespace: string | undefined };

/** Longest URL remembered; longer ones (and data: URLs) are fetched or decoded each time. */
const URL_MEMO_MAX_CHARS = 4096;
/** Per-entry bookkeeping assumed by the byte bound. */
const URL_MEMO_OVERHEAD_BYTES = 96;

/** The content hash under the call's private namespace, if it has one. */
const scopedHash = (call: ImageCall, hash: string): string => (call.namespace === undefined ? hash : `private-${call.namespace}:${hash}`);

export function featureKey(model: string, version: string, hash: string): string {
  return cacheKey(model, version, `feature:${hash}`);
}

export class ImageEmbedder implements InferenceAdapter<Resolved | PolyrayError, Resolved, ImageCall> {
  readonly #o: ImageEmbedderOptions;
  readonly #pipeline: CachedInference<Resolved | PolyrayError, Resolved, ImageCall>;
  readonly #urls: LRUCache<string, string>;
  readonly #fetching = new SingleFlight<Uint8Array>();
  readonly #counts = { fetches: 0, urlMemoHits: 0, decodes: 0, encoded: 0 };

  constructor(options: ImageEmbedderOptions) {
    this.#o = options;
    // Bounded in entries and in bytes (URLs can be long); a URL over URL_MEMO_MAX_CHARS is not remembered.
    this.#urls = new LRUCache<string, string>({
      max: options.urlCacheMaxEntries,
      maxSize: options.urlCacheMaxBytes,
      sizeCalculation: (hash, url) => 2 * (url.length + hash.length) + URL_MEMO_OVERHEAD_BYTES,
      maxEntrySize: 2 * URL_MEMO_MAX_CHARS + 2 * 64 + URL_MEMO_OVERHEAD_BYTES,
      ...(options.urlCacheTtlMs > 0 ? { ttl: options.urlCacheTtlMs } : {}),
    });
    this.#pipeline = new CachedInference(this, options);
  }

  /** Largest image accepted, in bytes (inline and fetched). */
  get maxBytes(): number {
    return this.#o.fetcher.maxBytes;
  }

  /** `namespace`: a private cache namespace (a client with `cacheScope: private`). */
  async embed(
    handle: ImageHandle,
    inputs: readonly ImageInput[],
    want: ImageWant = 'embedding',
    clientId?: string,
    namespace?: string,
    serve?: SubmitOptions,
  ): Promise<(ImageResult | PolyrayError)[]> {
    const resolved = await this.#resolve(inputs);
    const answers = await this.#pipeline.run({ ...handle, want, namespace }, resolved, {
      ...(clientId === undefined ? {} : { clientId }),
      ...(serve ? { serve } : {}),
    });
    const results = answers.map((a, index): ImageResult | PolyrayError => {
      if (a instanceof PolyrayError) return new PolyrayError(a.code, a.message, { ...a.extensions, index });
      const r = resolved[index] as Resolved;
      const base = { model: handle.name, version: handle.version, hash: r.hash, tokens: 0, source: a.source, pixels: a.units, inferenceMs: a.inferenceMs };
      if (a.hit) {
        if (!r.bytes) this.#counts.urlMemoHits++;
        return want === 'embedding' ? { ...base, vector: a.hit } : { ...base, vector: unit(a.hit), feature: a.hit };
      }
      const [embedding, feature] = a.computed!.outputs;
      return { ...base, vector: embedding!, ...(want === 'feature' ? { feature: feature ?? embedding! } : {}) };
    });
    // Both kinds of call are traced, under the key each read (content or feature): the tiers hold both.
    this.#pipeline.trace(
      handle.name,
      clientId,
      answers,
      results.map((r) => (r instanceof PolyrayError ? r : { ...r, vector: r.feature ?? r.vector, tokens: r.pixels })),
    );
    return results;
  }

  key(call: ImageCall, inputs: readonly (Resolved | PolyrayError)[]): (Keyed<Resolved> | PolyrayError)[] {
    return inputs.map((r) => {
      if (r instanceof PolyrayError) return r;
      const hash = scopedHash(call, r.hash);
      const content = cacheKey(call.name, call.version, hash);
      return { read: call.want === 'feature' ? featureKey(call.name, call.version, hash) : content, flight: content, payload: r };
    });
  }

  compute(call: ImageCall, items: readonly Resolved[], serve: SubmitOptions): Promise<Computed>[] {
    return items.map((r) => this.#encode(call, r, serve));
  }

  fill(call: ImageCall, item: Keyed<Resolved>, computed: Computed): CacheEntry[] {
    const [embedding, feature] = computed.outputs;
    return [
      { key: item.flight, value: embedding! },
      { key: featureKey(call.name, call.version, scopedHash(call, item.payload.hash)), value: feature ?? embedding! },
    ];
  }

  async #encode(call: ImageCall, r: Resolved, serve: SubmitOptions): Promise<Computed> {
    const bytes = r.bytes ?? (await this.#fetch(r.url!));
    this.#counts.decodes++;
    const img = await preprocessImage(bytes, call.preprocess, { maxPixels: this.#o.maxPixels });
    const size = call.preprocess.size;
    this.#counts.encoded++;
    const [p] = call.queue.submit([{ data: img.tensor, cost: size * size, ...(serve.client ? { tag: serve.client } : {}) }], serve);
    const out = await p!;
    return { outputs: [out.outputs[0]!, out.outputs[1] ?? out.outputs[0]!], units: out.cost, inferenceMs: out.inferenceMs };
  }

  /** Content hashes for every input: bytes hashed, URLs from memory or fetched (bounded concurrency). */
  async #resolve(inputs: readonly ImageInput[]): Promise<(Resolved | PolyrayError)[]> {
    const out: (Resolved | PolyrayError | undefined)[] = inputs.map((input) => {
      if (input.kind === 'bytes') return { hash: contentHash(input.bytes), bytes: input.bytes };
      const hash = this.#urls.get(input.url);
      return hash ? { hash, url: input.url } : undefined;
    });
    const byUrl = new Map<string, number[]>();
    inputs.forEach((input, i) => {
      if (out[i] === undefined && input.kind === 'url') byUrl.set(input.url, [...(byUrl.get(input.url) ?? []), i]);
    });
    const urls = [...byUrl.keys()];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < urls.length) {
        const url = urls[next++]!;
        let r: Resolved | PolyrayError;
        try {
          const bytes = await this.#fetch(url);
          r = { hash: contentHash(bytes), bytes, url };
          // data: URLs carry their image: remembering them would keep the image (as its URL) in memory.
          if (!/^data:/i.test(url) && url.length <= URL_MEMO_MAX_CHARS) this.#urls.set(url, r.hash);
        } catch (e) {
          r = e instanceof PolyrayError ? e : new PolyrayError(ErrorCode.IMAGE_FETCH_FAILED, 'Image could not be fetched');
        }
        for (const i of byUrl.get(url)!) out[i] = r;
      }
    };
    const limit = Math.max(1, this.#o.fetchConcurrency ?? 16);
    await Promise.all(Array.from({ length: Math.min(limit, urls.length) }, worker));
    return out as (Resolved | PolyrayError)[];
  }

  #fetch(url: string): Promise<Uint8Array> {
    let p = this.#fetching.get(url);
    if (!p) {
      this.#counts.fetches++;
      p = this.#fetching.set(
        url,
        // The span names the host only: a URL's path and query may carry what a client considers private.
        inSpan('polyray.image.fetch', { 'server.address': hostOf(url) }, async (span) => {
          const r = await this.#o.fetcher.fetch(url);
          span?.setAttribute('polyray.bytes', r.bytes.byteLength);
          return r.bytes;
        }),
      );
    }
    return p;
  }

  stats(): ImageStats {
    return { ...this.#pipeline.stats(), ...this.#counts };
  }

  memos(): MemoStats[] {
    return [
      this.#pipeline.memo('image_recent'),
      { memo: 'image_urls', entries: this.#urls.size, bytes: this.#urls.calculatedSize, maxBytes: this.#urls.maxSize },
    ];
  }
}

/** v / ‖v‖ as a new vector (a zero vector stays zero). */
export function unit(v: Float32Array): Float32Array {
  const out = new Float32Array(v);
  normalizeInPlace(out);
  return out;
}

/** The host of a URL, for spans ("" for one that does not parse: the fetch reports that itself). */
function hostOf(url: string): string {
  try {
    return new URL(url).hostname;
  } catch {
    return '';
  }
}
