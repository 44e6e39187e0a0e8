/**
 * Text embeddings: the text adapter of CachedInference (src/service/pipeline.ts).
 *
 *   key      `model@version:sha256(text)` of the text as sent, or of its NFC + whitespace-normalised form
 *            where the tokenizer says that normalisation cannot change its ids (`normalisedKeys`)
 *   compute  tokenise the text as sent (refusing inputs over the model's token limit) and submit the batch to the
 *            model's token queue (src/runtime/batcher.ts), which pads, batches across requests and runs
 *   fill     the vector under its key
 *
 * Results are per input: one bad input (not a string, too large) fails only itself.
 */
import type { CacheEntry } from '../cache/cache.ts';
import { cacheKey, contentHash, normaliseText } from '../cache/keys.ts';
import type { TieredCache } from '../cache/tiered.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { TextHandle } from '../runtime/handle.ts';
import { truncateEncoding } from '../runtime/tokenizer.ts';
import { CachedInference, type Computed, type InferenceAdapter, type Keyed } from './pipeline.ts';
import type { EmbedResult, PipelineStats, TraceSink } from './types.ts';

export interface TextEmbedderOptions {
  cache: TieredCache;
  logger: Logger;
  /** Longest input text in UTF-8 bytes (POLYRAY_MAX_INPUT_BYTES). */
  maxInputBytes: number;
  trace?: TraceSink;
}

/** A pipeline call: the model, and whether over-long inputs are cut (on the model's side) or refused. */
type TextCall = TextHandle & { truncate: boolean };

class TextAdapter implements InferenceAdapter<string, string, TextCall> {
  readonly #maxInputBytes: number;

  constructor(maxInputBytes: number) {
    this.#maxInputBytes = maxInputBytes;
  }

  key(handle: TextCall, texts: readonly string[]): (Keyed<string> | PolyrayError)[] {
    const limit = this.#maxInputBytes;
    return texts.map((text, index) => {
      if (typeof text !== 'string') return new PolyrayError(ErrorCode.BAD_USER_INPUT, `Input ${index} must be a string`, { index });
      const bytes = Buffer.byteLength(text, 'utf8');
      if (bytes > limit) {
        return new PolyrayError(ErrorCode.INPUT_TOO_LARGE, `Input ${index} is ${bytes} bytes; the limit is ${limit} bytes (POLYRAY_MAX_INPUT_BYTES)`, {
          index,
          bytes,
          limit,
        });
      }
      const hash = contentHash(handle.tokenizer.normalisedKeys ? normaliseText(text) : text);
      // A truncating call has keys of its own: an input cut on one side is another vector.
      const key = cacheKey(handle.name, handle.version, handle.truncate ? `cut-${handle.truncationSide}:${hash}` : hash);
      return { read: key, flight: key, payload: text };
    });
  }

  compute(handle: TextCall, texts: readonly string[], clientId: string | undefined): Promise<Computed>[] {
    const out: Promise<Computed>[] = new Array(texts.length);
    const submit: { ids: number[]; mask: number[]; tag?: string }[] = [];
    const at: number[] = [];
    texts.forEach((text, j) => {
      const full = handle.tokenizer.encode(text);
      const enc = handle.truncate ? truncateEncoding(full, handle.maxTokens, handle.truncationSide, handle.tokenizer.specials) : full;
      if (enc.ids.length > handle.maxTokens) {
        const e = new PolyrayError(
          ErrorCode.INPUT_TOO_LARGE,
          `An input has ${enc.ids.length} tokens; model ${handle.name} accepts at most ${handle.maxTokens}`,
          {
            tokens: enc.ids.length,
            limit: handle.maxTokens,
            hint: 'truncate: true cuts it instead',
          },
        );
        out[j] = Promise.reject(e);
        return;
      }
      submit.push({ ids: enc.ids, mask: enc.mask, ...(clientId ? { tag: clientId } : {}) });
      at.push(j);
    });
    if (submit.length > 0) {
      const results = handle.queue.submit(submit);
      at.forEach((j, s) => {
        out[j] = results[s]!.then((r) => ({ outputs: [r.vector], units: r.tokens, inferenceMs: r.inferenceMs }));
      });
    }
    return out;
  }

  fill(_handle: TextCall, item: Keyed<string>, computed: Computed): CacheEntry[] {
    return [{ key: item.flight, value: computed.outputs[0]! }];
  }
}

export class TextEmbedder {
  readonly #pipeline: CachedInference<string, string, TextCall>;

  constructor(options: TextEmbedderOptions) {
    this.#pipeline = new CachedInference(new TextAdapter(options.maxInputBytes), options);
  }

  /** `truncate`: cut inputs over the model's token limit on its truncation side instead of refusing them. */
  async embed(handle: TextHandle, texts: readonly string[], clientId?: string, truncate = false): Promise<(EmbedResult | PolyrayError)[]> {
    const answers = await this.#pipeline.run({ ...handle, truncate }, texts, clientId === undefined ? {} : { clientId });
    const results = answers.map((a): EmbedResult | PolyrayError =>
      a instanceof PolyrayError
        ? a
        : {
            vector: a.hit ?? a.computed!.outputs[0]!,
            source: a.source,
            model: handle.name,
            version: handle.version,
            tokens: a.units,
            inferenceMs: a.inferenceMs,
          },
    );
    this.#pipeline.trace(handle.name, clientId, answers, results);
    return results;
  }

  stats(): PipelineStats {
    return this.#pipeline.stats();
  }
}
