/**
 * EmbeddingService: the one path from "these inputs, this model" to vectors, shared by GraphQL and REST.
 *
 *   1. key every input: model@version + content hash
 *   2. one tiered cache read for all keys (memory → global)
 *   3. misses join an in-flight computation of the same key, or
 *   4. are tokenised and submitted to the model's batcher (cross-request batching)
 *   5. computed vectors fill the cache; nothing from a failed batch is stored
 *
 * Results are per input: one bad input (too large) fails only itself.
 */
import { cacheKey, contentHash, normaliseText } from '../cache/keys.ts';
import { SingleFlight } from '../cache/single-flight.ts';
import type { TieredCache } from '../cache/tiered.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Batcher, ItemResult } from '../runtime/batcher.ts';
import type { ModelRegistry, RegisteredModel } from '../runtime/registry.ts';
import type { TraceSink } from '../policy/trace.ts';

export type Source = 'MEMORY' | 'GLOBAL' | 'COMPUTED';

export interface EmbedResult {
  /** Full-precision, L2-normalised vector as the model produced it. Do not mutate. */
  vector: Float32Array;
  source: Source;
  model: string;
  version: string;
  /** Tokens computed for this input (0 for cache hits and joined computations). */
  tokens: number;
  /** Share of inference time charged to this input (0 for cache hits and joined computations). */
  inferenceMs: number;
}

export interface EmbedOptions {
  /** Who asked: carried to the batcher for cost attribution. */
  clientId?: string;
}

export interface ServiceLimits {
  /** Longest input text in UTF-8 bytes. */
  maxInputBytes: number;
}

export interface EmbeddingServiceOptions {
  registry: ModelRegistry;
  cache: TieredCache;
  batchers: ReadonlyMap<string, Batcher>;
  limits: ServiceLimits;
  logger: Logger;
  /** Request-stream sampling for the cache policy (src/policy); sees every assembled result. */
  trace?: TraceSink;
}

export interface ServiceStats {
  /** Calls to embedMany. */
  calls: number;
  /** Tiered cache lookups (one per embedMany that had anything to look up). */
  cacheLookups: number;
  items: number;
  bySource: Record<Source, number>;
  /** Misses that joined a computation already in flight. */
  joined: number;
  /** Answers per model and source (tier statistics per model; per-tier totals come from the tiers). */
  byModel: Record<string, Record<Source, number>>;
}

interface Computed {
  vector: Float32Array;
  tokens: number;
  inferenceMs: number;
}

const SOURCE_OF_TIER: Record<string, Source> = { memory: 'MEMORY' };

export class EmbeddingService {
  readonly #o: EmbeddingServiceOptions;
  readonly #flight = new SingleFlight<Computed>();
  readonly #stats: ServiceStats = { calls: 0, cacheLookups: 0, items: 0, bySource: { MEMORY: 0, GLOBAL: 0, COMPUTED: 0 }, joined: 0, byModel: {} };

  constructor(options: EmbeddingServiceOptions) {
    this.#o = options;
  }

  /** The model, if it exists and is ready; otherwise a client-facing error. */
  resolveModel(name: string): RegisteredModel {
    const m = this.#o.registry.get(name);
    if (!m) {
      const known = this.#o.registry
        .list()
        .map((x) => x.manifest.name)
        .join(', ');
      throw new PolyrayError(ErrorCode.MODEL_NOT_FOUND, `Unknown model "${name.slice(0, 64)}"; available models: ${known || 'none'}`, { model: name.slice(0, 64) });
    }
    switch (m.state.kind) {
      case 'ready':
        return m;
      case 'loading':
        throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model "${name}" is still loading; retry shortly`, { model: name, retryAfterMs: 1000 });
      case 'failed':
      case 'disposed':
        throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model "${name}" is not available on this replica`, { model: name });
      default: {
        const never: never = m.state;
        throw new Error(`unknown state ${JSON.stringify(never)}`);
      }
    }
  }

  async embedMany(modelName: string, texts: readonly string[], options: EmbedOptions = {}): Promise<(EmbedResult | PolyrayError)[]> {
    this.#stats.calls++;
    const model = this.resolveModel(modelName);
    const { name, version } = model.manifest;
    const out: (EmbedResult | PolyrayError | undefined)[] = new Array(texts.length).fill(undefined);

    // 1. Validate and key. Identical inputs within the call share one key and one lookup.
    const keyOf: (string | undefined)[] = [];
    const normalised = new Map<string, string>();
    texts.forEach((text, i) => {
      if (typeof text !== 'string') {
        out[i] = new PolyrayError(ErrorCode.BAD_USER_INPUT, `Input ${i} must be a string`, { index: i });
        return;
      }
      const bytes = Buffer.byteLength(text, 'utf8');
      if (bytes > this.#o.limits.maxInputBytes) {
        out[i] = new PolyrayError(ErrorCode.INPUT_TOO_LARGE, `Input ${i} is ${bytes} bytes; the limit is ${this.#o.limits.maxInputBytes} bytes (POLYRAY_MAX_INPUT_BYTES)`, {
          index: i,
          bytes,
          limit: this.#o.limits.maxInputBytes,
        });
        return;
      }
      const norm = normaliseText(text);
      const key = cacheKey(name, version, contentHash(norm));
      keyOf[i] = key;
      normalised.set(key, norm);
    });
    const unique = [...normalised.keys()];
    this.#stats.items += texts.length;

    // 2. One read through the tiers for every distinct key.
    const found = new Map<string, { vector: Float32Array; source: Source }>();
    if (unique.length > 0) {
      this.#stats.cacheLookups++;
      const hits = await this.#o.cache.lookup(unique);
      hits.forEach((h, j) => {
        if (h) found.set(unique[j]!, { vector: h.value, source: SOURCE_OF_TIER[h.tier] ?? 'GLOBAL' });
      });
    }

    // 3./4. Misses: join what is in flight, compute the rest in one submit.
    const computing = new Map<string, { promise: Promise<Computed>; owner: boolean }>();
    const toCompute: { key: string; ids: number[]; mask: number[] }[] = [];
    const tooLarge = new Map<string, PolyrayError>();
    for (const key of unique) {
      if (found.has(key)) continue;
      const inflight = this.#flight.get(key);
      if (inflight) {
        computing.set(key, { promise: inflight, owner: false });
        continue;
      }
      const enc = model.tokenizer.encode(normalised.get(key)!);
      if (enc.ids.length > model.manifest.maxTokens) {
        tooLarge.set(
          key,
          new PolyrayError(ErrorCode.INPUT_TOO_LARGE, `An input has ${enc.ids.length} tokens; model ${name} accepts at most ${model.manifest.maxTokens}`, {
            tokens: enc.ids.length,
            limit: model.manifest.maxTokens,
          }),
        );
        continue;
      }
      toCompute.push({ key, ids: enc.ids, mask: enc.mask });
    }
    if (toCompute.length > 0) {
      const batcher = this.#o.batchers.get(name);
      if (!batcher) throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model "${name}" has no inference queue on this replica`);
      const tag = options.clientId;
      const promises = batcher.submit(toCompute.map((c) => ({ ids: c.ids, mask: c.mask, ...(tag ? { tag } : {}) })));
      toCompute.forEach((c, j) => {
        const p = promises[j]!.then((r: ItemResult) => {
          const computed: Computed = { vector: r.vector, tokens: r.tokens, inferenceMs: r.inferenceMs };
          return computed;
        });
        computing.set(c.key, { promise: this.#flight.set(c.key, p), owner: true });
      });
      // Fill the cache from the computations that succeed; a failed one stores nothing.
      void Promise.allSettled(toCompute.map((c) => computing.get(c.key)!.promise)).then((settled) => {
        const entries = settled.flatMap((s, j) => (s.status === 'fulfilled' ? [{ key: toCompute[j]!.key, value: s.value.vector }] : []));
        return this.#o.cache.store(entries);
      });
    }
    const computed = new Map<string, Computed | PolyrayError>();
    await Promise.all(
      [...computing].map(async ([key, c]) => {
        try {
          const r = await c.promise;
          computed.set(key, c.owner ? r : { vector: r.vector, tokens: 0, inferenceMs: 0 });
          if (!c.owner) this.#stats.joined++;
        } catch (e) {
          computed.set(key, e instanceof PolyrayError ? e : new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed; the request can be retried'));
        }
      }),
    );

    // 5. Assemble in input order. An input repeated within the call is charged once.
    const charged = new Set<string>();
    const results = out.map((pre, i): EmbedResult | PolyrayError => {
      if (pre) return pre;
      const key = keyOf[i]!;
      const hit = found.get(key);
      if (hit) {
        this.#count(name, hit.source);
        return { vector: hit.vector, source: hit.source, model: name, version, tokens: 0, inferenceMs: 0 };
      }
      const big = tooLarge.get(key);
      if (big) return big;
      const c = computed.get(key);
      if (!c) return new PolyrayError(ErrorCode.INTERNAL_SERVER_ERROR, 'Internal error');
      if (c instanceof PolyrayError) return c;
      this.#count(name, 'COMPUTED');
      const first = !charged.has(key);
      charged.add(key);
      return { vector: c.vector, source: 'COMPUTED', model: name, version, tokens: first ? c.tokens : 0, inferenceMs: first ? c.inferenceMs : 0 };
    });
    this.#o.trace?.observe(name, options.clientId, keyOf, results);
    return results;
  }

  #count(model: string, source: Source): void {
    this.#stats.bySource[source]++;
    const m = (this.#stats.byModel[model] ??= { MEMORY: 0, GLOBAL: 0, COMPUTED: 0 });
    m[source]++;
  }

  stats(): ServiceStats {
    const byModel: ServiceStats['byModel'] = {};
    for (const [k, v] of Object.entries(this.#stats.byModel)) byModel[k] = { ...v };
    return { ...this.#stats, bySource: { ...this.#stats.bySource }, byModel };
  }
}
