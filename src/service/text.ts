/**
 * Text embeddings: the text adapter of CachedInference (src/service/pipeline.ts).
 *
 *   key      `model@version:sha256(text)` of the text as sent, or of its NFC + whitespace-normalised form
 *            where the tokenizer says that normalisation cannot change its ids (`normalisedKeys`)
 *   compute  tokenise prompt + text as sent, off the event loop (src/runtime/tokenizer-pool.ts), refuse inputs
 *            over the model's token limit (or cut them, with `truncate`), and submit the rest to the model's
 *            token queue (src/runtime/batcher.ts), which pads, batches across requests and runs
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
import type { BatchItem } from '../runtime/batcher.ts';
import type { TokenizeOptions } from '../runtime/tokenizer.ts';
import { CachedInference, type Computed, type InferenceAdapter, type Keyed } from './pipeline.ts';
import type { EmbedResult, MemoStats, PipelineStats, TokenCount, TraceSink } from './types.ts';

export interface TextEmbedderOptions {
  cache: TieredCache;
  logger: Logger;
  /** Longest input text in UTF-8 bytes (POLYRAY_MAX_INPUT_BYTES). */
  maxInputBytes: number;
  trace?: TraceSink;
}

/**
 * A pipeline call: the model, the prompt before every text (part of the key), and whether over-long inputs
 * are cut (on the model's side) or refused.
 */
type TextCall = TextHandle & { truncate: boolean; prompt: string; namespace: string | undefined };

/** What the text pipeline is asked: a model, and per call the prompt and truncation. */
export interface TextOptions {
  /** Prepended to every text (sentence-transformers' prompts); part of the cache key. Default none. */
  prompt?: string;
  /** Cut inputs over the model's token limit on its truncation side instead of refusing them. */
  truncate?: boolean;
  /** A private cache namespace (a client with `cacheScope: private`): keys, joins and hits of its own. */
  namespace?: string | undefined;
  /** Which end `truncate` cuts; default the model's (tokenizer_config.json `truncation_side`). */
  side?: 'left' | 'right' | undefined;
}

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
      // The model reads prompt + text; the key is taken from the same string.
      const read = handle.prompt + text;
      const hash = contentHash(handle.tokenizer.normalisedKeys ? normaliseText(read) : read);
      // A truncating call has keys of its own: an input cut on one side is another vector.
      const cut = handle.truncate ? `cut-${handle.truncationSide}:${hash}` : hash;
      const key = cacheKey(handle.name, handle.version, handle.namespace === undefined ? cut : `private-${handle.namespace}:${cut}`);
      return { read: key, flight: key, payload: text };
    });
  }

  compute(handle: TextCall, texts: readonly string[], clientId: string | undefined): Promise<Computed>[] {
    // One tokenisation for the call's misses, off the event loop; then one submit of those within the limit.
    const submitted = handle.tokenize(texts, textTokenizeOptions(handle)).then((batch) => {
      const skip = handle.includePrompt ? 0 : batch.promptTokens;
      const out: (Promise<Computed> | PolyrayError)[] = new Array(texts.length);
      const submit: BatchItem[] = [];
      const at: number[] = [];
      batch.items.forEach((enc, j) => {
        if (enc.ids.length > handle.maxTokens) {
          out[j] = new PolyrayError(
            ErrorCode.INPUT_TOO_LARGE,
            `An input has ${enc.partial ? 'at least ' : ''}${enc.ids.length} tokens; model ${handle.name} accepts at most ${handle.maxTokens}`,
            {
              tokens: enc.ids.length,
              limit: handle.maxTokens,
              hint: 'truncate: true cuts it instead',
            },
          );
          return;
        }
        submit.push({ ids: enc.ids, mask: enc.mask, ...(skip > 0 ? { skip } : {}), ...(clientId ? { tag: clientId } : {}) });
        at.push(j);
      });
      if (submit.length > 0) {
        const results = handle.queue.submit(submit);
        at.forEach((j, s) => {
          const total = batch.items[j]!.total;
          out[j] = results[s]!.then((r) => ({ outputs: [r.vector], units: r.tokens, inferenceMs: r.inferenceMs, total }));
        });
      }
      return out;
    });
    return texts.map(async (_, j) => {
      const r = (await submitted)[j]!;
      if (r instanceof PolyrayError) throw r;
      return r;
    });
  }

  fill(_handle: TextCall, item: Keyed<string>, computed: Computed): CacheEntry[] {
    return [{ key: item.flight, value: computed.outputs[0]! }];
  }
}

/** How a call's texts are tokenised: the model's limit and side, the call's truncation and prompt. */
function textTokenizeOptions(call: TextHandle & TextOptions): TokenizeOptions {
  return { maxTokens: call.maxTokens, side: call.side ?? call.truncationSide, truncate: call.truncate === true, prompt: call.prompt ?? '' };
}

export class TextEmbedder {
  readonly #pipeline: CachedInference<string, string, TextCall>;

  constructor(options: TextEmbedderOptions) {
    this.#pipeline = new CachedInference(new TextAdapter(options.maxInputBytes), options);
  }

  async embed(handle: TextHandle, texts: readonly string[], clientId?: string, options: TextOptions = {}): Promise<(EmbedResult | PolyrayError)[]> {
    const call = {
      ...handle,
      truncate: options.truncate === true,
      prompt: options.prompt ?? '',
      namespace: options.namespace,
      truncationSide: options.side ?? handle.truncationSide,
    };
    const answers = await this.#pipeline.run(call, texts, clientId === undefined ? {} : { clientId });
    const results = answers.map((a): EmbedResult | PolyrayError => {
      if (a instanceof PolyrayError) return a;
      const c = a.computed;
      return {
        vector: a.hit ?? c!.outputs[0]!,
        source: a.source,
        model: handle.name,
        version: handle.version,
        tokens: a.units,
        inferenceMs: a.inferenceMs,
        ...(c ? { inputTokens: { kept: c.units, total: c.total ?? c.units } } : {}),
      };
    });
    this.#pipeline.trace(handle.name, clientId, answers, results);
    return results;
  }

  /**
   * Token counts of `texts` as `embed` with the same options would read them (prompt, truncation), without
   * embedding: for answers that came from the cache. Tokenised off the event loop like a miss.
   */
  async tokenCounts(handle: TextHandle, texts: readonly string[], options: TextOptions = {}): Promise<TokenCount[]> {
    const batch = await handle.tokenize(texts, textTokenizeOptions({ ...handle, ...options }));
    return batch.items.map((t) => ({ kept: t.ids.length, total: t.total }));
  }

  stats(): PipelineStats {
    return this.#pipeline.stats();
  }

  memos(): MemoStats[] {
    return [this.#pipeline.memo('text_recent')];
  }
}
