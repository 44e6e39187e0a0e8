/**
 * ImageService: image inputs (URLs or bytes) → image embeddings, through the same tiered cache and
 * the same kind of cross-request batching as text.
 *
 *   1. key every image by its content: `model@version:sha256(bytes)`; a URL's content hash is
 *      remembered for a short while (bounded LRU, `urlCacheTtlMs`), so a repeated URL is answered from
 *      the cache without fetching it again
 *   2. one tiered cache read for every known key
 *   3. fetch what is still unknown or missing (concurrently, each URL once per call and once across
 *      concurrent calls), hash it, read the cache again for newly learned hashes
 *   4. misses join an in-flight computation of the same content, or are decoded and preprocessed
 *      (sharp, off the event loop) and submitted to the model's tensor batcher
 *   5. both outputs fill the cache: the unit `embedding` under the content key, the raw `feature`
 *      (what task heads read) under `model@version:feature:<hash>`
 *
 * Results are per input: an image that cannot be fetched or decoded fails only itself, with an IMAGE_*
 * code. A failed batch stores nothing.
 */
import { LRUCache } from 'lru-cache';
import { cacheKey, contentHash } from '../cache/keys.ts';
import { SingleFlight } from '../cache/single-flight.ts';
import type { TieredCache } from '../cache/tiered.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { TraceSink } from '../policy/trace.ts';
import type { Logger } from '../log.ts';
import type { PreprocessSpec } from '../runtime/manifest.ts';
import type { ModelRegistry, RegisteredModel } from '../runtime/registry.ts';
import type { TensorBatcher } from '../runtime/tensor-batcher.ts';
import type { EmbedResult, Source } from '../service/embedding.ts';
import type { ImageFetcher } from './fetch.ts';
import { preprocessImage } from './preprocess.ts';

export type ImageInput = { kind: 'url'; url: string } | { kind: 'bytes'; bytes: Uint8Array };

export interface ImageResult extends EmbedResult {
  /** sha256 of the image bytes (base64url): the content part of the cache key. */
  hash: string;
  /** The raw feature (when asked for with `want: "feature"`). */
  feature?: Float32Array;
  /** Model input pixels computed for this input (0 for cache hits and joined computations). */
  pixels: number;
}

export interface ImageEmbedOptions {
  /** What the caller needs: the unit embedding (default) or the raw feature for a task head. */
  want?: 'embedding' | 'feature';
  clientId?: string;
}

export interface ImageServiceOptions {
  registry: ModelRegistry;
  cache: TieredCache;
  batchers: ReadonlyMap<string, TensorBatcher>;
  fetcher: ImageFetcher;
  /** Largest decoded image (width × height). */
  maxPixels: number;
  /** URL → content hash memory: time to live and size. */
  urlCacheTtlMs: number;
  urlCacheMaxEntries: number;
  /** Most URL fetches one call runs at once. Default 16. */
  fetchConcurrency?: number;
  logger: Logger;
  /** Request-stream sampling for the cache-policy simulator (pixels stand in for tokens). */
  trace?: TraceSink;
}

export interface ImageServiceStats {
  calls: number;
  items: number;
  /** Network fetches started (data: URLs included). */
  fetches: number;
  /** URLs answered without fetching, thanks to the URL → hash memory and the cache. */
  urlMemoHits: number;
  /** Images decoded and preprocessed. */
  decodes: number;
  /** Images sent to the encoder. */
  encoded: number;
  joined: number;
  bySource: Record<Source, number>;
  /** Per-image failures by error code. */
  errors: Record<string, number>;
}

interface Computed {
  embedding: Float32Array;
  feature: Float32Array;
  pixels: number;
  inferenceMs: number;
}

interface Slot {
  input: ImageInput;
  hash?: string;
  bytes?: Uint8Array;
  error?: PolyrayError;
  hit?: { value: Float32Array; source: Source };
}

const SOURCE_OF_TIER: Record<string, Source> = { memory: 'MEMORY' };

export function featureKey(model: string, version: string, hash: string): string {
  return cacheKey(model, version, `feature:${hash}`);
}

export class ImageService {
  readonly #o: ImageServiceOptions;
  readonly #urls: LRUCache<string, string>;
  readonly #compute = new SingleFlight<Computed>();
  readonly #fetching = new SingleFlight<Uint8Array>();
  readonly #stats: ImageServiceStats = { calls: 0, items: 0, fetches: 0, urlMemoHits: 0, decodes: 0, encoded: 0, joined: 0, bySource: { MEMORY: 0, GLOBAL: 0, COMPUTED: 0 }, errors: {} };

  constructor(options: ImageServiceOptions) {
    this.#o = options;
    this.#urls = new LRUCache<string, string>({ max: options.urlCacheMaxEntries, ...(options.urlCacheTtlMs > 0 ? { ttl: options.urlCacheTtlMs } : {}) });
  }

  /** Largest image accepted, in bytes (inline and fetched). */
  get maxBytes(): number {
    return this.#o.fetcher.maxBytes;
  }

  /** The image model, if it exists, is ready and reads images; otherwise a client-facing error. */
  resolveModel(name: string): RegisteredModel & { manifest: { preprocess: PreprocessSpec } } {
    const m = this.#o.registry.get(name);
    if (!m) {
      const known = this.#o.registry
        .list()
        .filter((x) => x.manifest.preprocess)
        .map((x) => x.manifest.name);
      throw new PolyrayError(ErrorCode.MODEL_NOT_FOUND, `Unknown model "${name.slice(0, 64)}"; image models: ${known.join(', ') || 'none'}`, { model: name.slice(0, 64) });
    }
    if (!m.manifest.preprocess) throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${name} does not read images`, { model: name });
    if (m.state.kind !== 'ready') throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model "${name}" is not ready on this replica`, { model: name, retryAfterMs: 1000 });
    return m as RegisteredModel & { manifest: { preprocess: PreprocessSpec } };
  }

  async embedImages(modelName: string, inputs: readonly ImageInput[], options: ImageEmbedOptions = {}): Promise<(ImageResult | PolyrayError)[]> {
    this.#stats.calls++;
    this.#stats.items += inputs.length;
    const model = this.resolveModel(modelName);
    const { name, version } = model.manifest;
    const want = options.want ?? 'embedding';
    const keyOf = (hash: string): string => (want === 'feature' ? featureKey(name, version, hash) : cacheKey(name, version, hash));

    // 1. What is known without the network: hashes of bytes, remembered hashes of URLs.
    const slots: Slot[] = inputs.map((input) => {
      if (input.kind === 'bytes') return { input, bytes: input.bytes, hash: contentHash(input.bytes) };
      const hash = this.#urls.get(input.url);
      return hash ? { input, hash } : { input };
    });

    // 2. One cache read for every known hash.
    await this.#lookup(slots, keyOf);
    for (const s of slots) if (s.hit && s.input.kind === 'url') this.#stats.urlMemoHits++;

    // 3. Fetch what is unknown or missed, then read the cache for newly learned hashes.
    const toFetch = slots.filter((s) => !s.hit && !s.bytes && !s.error);
    if (toFetch.length > 0) {
      await this.#fetchAll(toFetch);
      await this.#lookup(
        toFetch.filter((s) => s.hash && !s.error),
        keyOf,
      );
    }

    // 4. Compute the misses, once per content hash.
    const computing = new Map<string, { promise: Promise<Computed>; owner: boolean }>();
    for (const s of slots) {
      if (s.hit || s.error || !s.hash || computing.has(s.hash)) continue;
      const ck = cacheKey(name, version, s.hash);
      const inflight = this.#compute.get(ck);
      if (inflight) {
        computing.set(s.hash, { promise: inflight, owner: false });
        continue;
      }
      const p = this.#encode(model, s.bytes!, options.clientId);
      computing.set(s.hash, { promise: this.#compute.set(ck, p), owner: true });
      const hash = s.hash;
      // Fill the cache with both outputs; a failure stores nothing.
      p.then(
        (c) => this.#o.cache.store([
          { key: cacheKey(name, version, hash), value: c.embedding },
          { key: featureKey(name, version, hash), value: c.feature },
        ]),
        () => undefined,
      ).catch((e: unknown) => this.#o.logger.warn({ err: (e as Error).message }, 'image cache fill failed'));
    }
    const computed = new Map<string, Computed | PolyrayError>();
    await Promise.all(
      [...computing].map(async ([hash, c]) => {
        try {
          const r = await c.promise;
          computed.set(hash, c.owner ? r : { ...r, pixels: 0, inferenceMs: 0 });
          if (!c.owner) this.#stats.joined++;
        } catch (e) {
          computed.set(hash, e instanceof PolyrayError ? e : new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed; the request can be retried'));
        }
      }),
    );

    // 5. Assemble in input order; repeated content within the call is charged once.
    const charged = new Set<string>();
    const results = slots.map((s, index): ImageResult | PolyrayError => {
      const fail = (e: PolyrayError): PolyrayError => {
        this.#stats.errors[e.code] = (this.#stats.errors[e.code] ?? 0) + 1;
        return new PolyrayError(e.code, e.message, { ...e.extensions, index });
      };
      if (s.error) return fail(s.error);
      const base = { model: name, version, hash: s.hash!, tokens: 0 };
      if (s.hit) {
        this.#stats.bySource[s.hit.source]++;
        return { ...base, vector: want === 'embedding' ? s.hit.value : unit(s.hit.value), ...(want === 'feature' ? { feature: s.hit.value } : {}), source: s.hit.source, pixels: 0, inferenceMs: 0 };
      }
      const c = computed.get(s.hash!);
      if (!c) return fail(new PolyrayError(ErrorCode.INTERNAL_SERVER_ERROR, 'Internal error'));
      if (c instanceof PolyrayError) return fail(c);
      this.#stats.bySource.COMPUTED++;
      const first = !charged.has(s.hash!);
      charged.add(s.hash!);
      return {
        ...base,
        vector: c.embedding,
        ...(want === 'feature' ? { feature: c.feature } : {}),
        source: 'COMPUTED' as const,
        pixels: first ? c.pixels : 0,
        inferenceMs: first ? c.inferenceMs : 0,
      };
    });
    if (this.#o.trace && want === 'embedding') {
      this.#o.trace.observe(
        name,
        options.clientId,
        slots.map((s) => (s.hash ? cacheKey(name, version, s.hash) : undefined)),
        results.map((r) => (r instanceof PolyrayError ? r : { ...r, tokens: r.pixels })),
      );
    }
    return results;
  }

  async #lookup(slots: Slot[], keyOf: (hash: string) => string): Promise<void> {
    const want = slots.filter((s) => s.hash && !s.hit && !s.error);
    if (want.length === 0) return;
    const keys = [...new Set(want.map((s) => keyOf(s.hash!)))];
    const hits = await this.#o.cache.lookup(keys);
    const byKey = new Map<string, { value: Float32Array; source: Source }>();
    hits.forEach((h, j) => {
      if (h) byKey.set(keys[j]!, { value: h.value, source: SOURCE_OF_TIER[h.tier] ?? 'GLOBAL' });
    });
    for (const s of want) {
      const h = byKey.get(keyOf(s.hash!));
      if (h) s.hit = h;
    }
  }

  async #fetchAll(slots: Slot[]): Promise<void> {
    const byUrl = new Map<string, Slot[]>();
    for (const s of slots) {
      const url = (s.input as { url: string }).url;
      byUrl.set(url, [...(byUrl.get(url) ?? []), s]);
    }
    const urls = [...byUrl.keys()];
    const limit = Math.max(1, this.#o.fetchConcurrency ?? 16);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < urls.length) {
        const url = urls[next++]!;
        const group = byUrl.get(url)!;
        try {
          let p = this.#fetching.get(url);
          if (!p) {
            this.#stats.fetches++;
            p = this.#fetching.set(
              url,
              this.#o.fetcher.fetch(url).then((r) => r.bytes),
            );
          }
          const bytes = await p;
          const hash = contentHash(bytes);
          this.#urls.set(url, hash);
          for (const s of group) {
            s.bytes = bytes;
            s.hash = hash;
          }
        } catch (e) {
          const err = e instanceof PolyrayError ? e : new PolyrayError(ErrorCode.IMAGE_FETCH_FAILED, 'Image could not be fetched');
          for (const s of group) s.error = err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, urls.length) }, worker));
  }

  async #encode(model: RegisteredModel & { manifest: { preprocess: PreprocessSpec } }, bytes: Uint8Array, clientId: string | undefined): Promise<Computed> {
    const batcher = this.#o.batchers.get(model.manifest.name);
    if (!batcher) throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model "${model.manifest.name}" has no inference queue on this replica`);
    this.#stats.decodes++;
    const img = await preprocessImage(bytes, model.manifest.preprocess, { maxPixels: this.#o.maxPixels });
    const size = model.manifest.preprocess.size;
    this.#stats.encoded++;
    const [p] = batcher.submit([{ data: img.tensor, cost: size * size, ...(clientId ? { tag: clientId } : {}) }]);
    const r = await p!;
    return { embedding: r.outputs[0]!, feature: r.outputs[1] ?? r.outputs[0]!, pixels: r.cost, inferenceMs: r.inferenceMs };
  }

  stats(): ImageServiceStats {
    return { ...this.#stats, bySource: { ...this.#stats.bySource }, errors: { ...this.#stats.errors } };
  }
}

/** v / ‖v‖ (a zero vector stays zero). */
export function unit(v: Float32Array): Float32Array {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  const n = Math.sqrt(s);
  const out = new Float32Array(v.length);
  if (n > 0) for (let i = 0; i < v.length; i++) out[i] = v[i]! / n;
  return out;
}
