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
 * Token-id inputs (`TokenIds`, from /v1/embeddings) skip tokenisation: checked against the vocabulary and
 * the token limit, keyed by their ids (apart from every text), read with no prompt.
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
import type { SubmitOptions } from '../runtime/dispatch-queue.ts';
import type { TokenizeOptions } from '../runtime/tokenizer.ts';
import { CachedInference, type Computed, type InferenceAdapter, type Keyed } from './pipeline.ts';
import type { EmbedResult, MemoStats, PipelineStats, TextInput, TokenCount, TokenIds, TraceSink } from './types.ts';
import { inSpan, tracing } from '../telemetry/tracing.ts';

/** Characters per token at most, for a lower bound of a text's tokens before it is tokenised (English WordPiece averages ~4–5). */
const MIN_CHARS_PER_TOKEN = 8;

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
  /** How the computations queue: priority, deadline, abort signal, weight (the request scope's). */
  serve?: SubmitOptions | undefined;
  /** The end user the caller named (OpenAI's `user`): recorded, hashed, in the trace; never used for billing. */
  user?: string | undefined;
}

/** A token-id input after its checks: the ids the model reads (cut, with `truncate`) and how many were sent. */
interface IdsPayload {
  ids: readonly number[];
  total: number;
}

type Payload = string | IdsPayload;

class TextAdapter implements InferenceAdapter<TextInput, Payload, TextCall> {
  readonly #maxInputBytes: number;

  constructor(maxInputBytes: number) {
    this.#maxInputBytes = maxInputBytes;
  }

  key(handle: TextCall, inputs: readonly TextInput[]): (Keyed<Payload> | PolyrayError)[] {
    return inputs.map((input, index) => {
      const checked = typeof input === 'string' ? this.#text(handle, input, index) : idsOf(handle, input, index);
      if (checked instanceof PolyrayError) return checked;
      // A truncating call has keys of its own: an input cut on one side is another vector.
      const cut = handle.truncate ? `cut-${handle.truncationSide}:${checked.hash}` : checked.hash;
      const key = cacheKey(handle.name, handle.version, handle.namespace === undefined ? cut : `private-${handle.namespace}:${cut}`);
      return { read: key, flight: key, payload: checked.payload };
    });
  }

  #text(handle: TextCall, text: string, index: number): { hash: string; payload: Payload } | PolyrayError {
    const limit = this.#maxInputBytes;
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
    return { hash: contentHash(handle.tokenizer.normalisedKeys ? normaliseText(read) : read), payload: text };
  }

  compute(handle: TextCall, items: readonly Payload[], serve: SubmitOptions): Promise<Computed>[] {
    // One tokenisation for the call's text misses, off the event loop; then one submit of every input within
    // the limit (token-id inputs go straight to the queue).
    const texts: string[] = [];
    const textAt: number[] = [];
    items.forEach((p, j) => {
      if (typeof p === 'string') {
        texts.push(p);
        textAt.push(j);
      }
    });
    // Under overload the refusal comes before the tokenisation, which would otherwise compete with inference
    // for the cores. A text has at least one token per MIN_CHARS_PER_TOKEN characters (words and subwords
    // are shorter; a truncated input at most maxTokens), so the request's own work is not left out.
    const atLeast = items.map((p) => (typeof p === 'string' ? Math.min(handle.maxTokens, Math.floor(p.length / MIN_CHARS_PER_TOKEN)) : p.ids.length));
    const early = handle.queue.refuseEarly(serve, items.length, atLeast);
    if (early) return items.map(() => handle.queue.paced(early));
    const tokenized =
      texts.length > 0
        ? tracing.on
          ? inSpan('polyray.tokenize', { 'polyray.model': handle.name, 'polyray.items': texts.length }, () =>
              handle.tokenize(texts, textTokenizeOptions(handle)),
            )
          : handle.tokenize(texts, textTokenizeOptions(handle))
        : Promise.resolve(undefined);
    const submitted = tokenized.then((batch) => {
      const out: (Promise<Computed> | PolyrayError)[] = new Array(items.length);
      const submit: BatchItem[] = [];
      const at: { j: number; total: number }[] = [];
      const tag = serve.client ? { tag: serve.client } : {};
      if (batch) {
        const skip = handle.includePrompt ? 0 : batch.promptTokens;
        batch.items.forEach((enc, t) => {
          const j = textAt[t]!;
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
          submit.push({ ids: enc.ids, mask: enc.mask, ...(skip > 0 ? { skip } : {}), ...tag });
          at.push({ j, total: enc.total });
        });
      }
      items.forEach((p, j) => {
        if (typeof p === 'string') return;
        const ids = BigInt64Array.from(p.ids, BigInt);
        const masked = handle.tokenizer.maskedId;
        const mask = masked === undefined ? new BigInt64Array(ids.length).fill(1n) : BigInt64Array.from(p.ids, (id) => (id === masked ? 0n : 1n));
        submit.push({ ids, mask, ...tag });
        at.push({ j, total: p.total });
      });
      if (submit.length > 0) {
        const results = handle.queue.submit(submit, serve);
        at.forEach(({ j, total }, s) => {
          out[j] = results[s]!.then((r) => ({ outputs: [r.vector], units: r.tokens, inferenceMs: r.inferenceMs, total }));
        });
      }
      return out;
    });
    return items.map(async (_, j) => {
      const r = (await submitted)[j]!;
      if (r instanceof PolyrayError) throw r;
      return r;
    });
  }

  fill(_handle: TextCall, item: Keyed<Payload>, computed: Computed): CacheEntry[] {
    return [{ key: item.flight, value: computed.outputs[0]! }];
  }
}

/**
 * A token-id input checked: integers in the model's vocabulary, at least one, at most the model's limit
 * (cut on the call's side with `truncate`). Keyed apart from texts: the hash covers the ids' bytes after a
 * prefix no text hash starts from.
 */
function idsOf(handle: TextCall, input: TokenIds, index: number): { hash: string; payload: Payload } | PolyrayError {
  const ids = typeof input === 'object' && input !== null ? input.ids : undefined;
  if (!Array.isArray(ids)) return new PolyrayError(ErrorCode.BAD_USER_INPUT, `Input ${index} must be a string`, { index });
  if (ids.length === 0) return new PolyrayError(ErrorCode.BAD_USER_INPUT, `Input ${index} must be a non-empty list of token ids`, { index });
  const vocab = handle.tokenizer.vocabSize;
  for (let p = 0; p < ids.length; p++) {
    const id = ids[p];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocab) {
      return new PolyrayError(
        ErrorCode.BAD_USER_INPUT,
        `Input ${index}: token ${p} (${String(id).slice(0, 32)}) is not a token id of model ${handle.name}, which has ids 0 to ${vocab - 1}`,
        { index, position: p },
      );
    }
  }
  let kept: readonly number[] = ids;
  if (ids.length > handle.maxTokens) {
    if (!handle.truncate) {
      return new PolyrayError(ErrorCode.INPUT_TOO_LARGE, `Input ${index} has ${ids.length} tokens; model ${handle.name} accepts at most ${handle.maxTokens}`, {
        index,
        tokens: ids.length,
        limit: handle.maxTokens,
      });
    }
    kept = handle.truncationSide === 'left' ? ids.slice(ids.length - handle.maxTokens) : ids.slice(0, handle.maxTokens);
  }
  const bytes = new Uint8Array(4 + 4 * kept.length);
  bytes.set([0xff, 0x00, 0x69, 0x64]); // never the start of UTF-8 text (0xff is no UTF-8 byte)
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < kept.length; i++) view.setUint32(4 + 4 * i, kept[i]!, true);
  return { hash: contentHash(bytes), payload: { ids: kept, total: ids.length } };
}

/** The call of a handle with no prompt, truncation or namespace: the common one, made once per handle. */
const plainCalls = new WeakMap<TextHandle, TextCall>();

/** The handle with the call's options (copying a handle's ~14 fields cost ~4 µs, per call on the hit path). */
function callOf(handle: TextHandle, options: TextOptions): TextCall {
  const plain = options.truncate !== true && !options.prompt && options.namespace === undefined && options.side === undefined;
  const cached = plain ? plainCalls.get(handle) : undefined;
  if (cached) return cached;
  const call: TextCall = {
    ...handle,
    truncate: options.truncate === true,
    prompt: options.prompt ?? '',
    namespace: options.namespace,
    truncationSide: options.side ?? handle.truncationSide,
  };
  if (plain) plainCalls.set(handle, call);
  return call;
}

/** How a call's texts are tokenised: the model's limit and side, the call's truncation and prompt. */
function textTokenizeOptions(call: TextHandle & TextOptions): TokenizeOptions {
  return { maxTokens: call.maxTokens, side: call.side ?? call.truncationSide, truncate: call.truncate === true, prompt: call.prompt ?? '' };
}

export class TextEmbedder {
  readonly #pipeline: CachedInference<TextInput, Payload, TextCall>;

  constructor(options: TextEmbedderOptions) {
    this.#pipeline = new CachedInference(new TextAdapter(options.maxInputBytes), options);
  }

  async embed(handle: TextHandle, texts: readonly TextInput[], clientId?: string, options: TextOptions = {}): Promise<(EmbedResult | PolyrayError)[]> {
    const call = callOf(handle, options);
    const answers = await this.#pipeline.run(call, texts, {
      ...(clientId === undefined ? {} : { clientId }),
      ...(options.serve ? { serve: options.serve } : {}),
    });
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
    this.#pipeline.trace(handle.name, clientId, answers, results, options.user);
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
