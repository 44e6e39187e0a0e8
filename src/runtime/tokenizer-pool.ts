/**
 * Tokenizer threads: tokenisation off the event loop. Text pipelines hand a batch of cache misses to
 * `tokenize`, a thread tokenises it (src/runtime/tokenizer-worker.ts) and the ids come back in one
 * transferred buffer, so a flood of long texts costs the event loop a message per batch instead of the
 * tokeniser's work, and cache hits keep flowing meanwhile.
 *
 * Each thread loads a model's tokenizer on first use (`TokenizerSource.key` = name@version names the
 * copy; `forget` drops copies of reloaded models). With `threads: 0` the event loop tokenises itself,
 * with the registry's copy: the old behaviour, kept for measurement and for very small deployments.
 *
 * A thread that dies fails the batches it held (INFERENCE_FAILED, retryable) and is replaced.
 */
import { Worker } from 'node:worker_threads';
import { ErrorCode, type ErrorCode as Code, PolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { type Tokenized, type TokenizedBatch, type TokenizeOptions, type Tokenizer, tokenizeBatch } from './tokenizer.ts';
import type { FromTokenizer, ToTokenizer, TokenizerSource } from './tokenizer-protocol.ts';
import { type ViewedBatch, type ViewOptions, viewBatch } from './view-batch.ts';

export type { TokenizerSource } from './tokenizer-protocol.ts';

export interface TokenizerPoolOptions {
  /** Tokenizer threads; 0 tokenises on the event loop. */
  threads: number;
  /** Nice value of the threads (Linux, per thread), as the inference threads get. Default 0. */
  niceness?: number;
  logger: Logger;
  workerUrl?: URL;
}

export interface TokenizerPoolStats {
  threads: number;
  /** Batches sent to a thread and not yet answered. */
  inFlight: number;
  batches: number;
  texts: number;
  failures: number;
}

interface Pending {
  resolve: (b: TokenizedBatch | ViewedBatch) => void;
  reject: (e: Error) => void;
}

interface Thread {
  worker: Worker;
  pending: Map<number, Pending>;
  closing: boolean;
}

const CODES = new Set<string>(Object.values(ErrorCode));

export class TokenizerPool {
  readonly #o: TokenizerPoolOptions & { workerUrl: URL };
  readonly #threads: Thread[] = [];
  #nextId = 1;
  #closed = false;
  readonly #stats = { batches: 0, texts: 0, failures: 0 };

  constructor(options: TokenizerPoolOptions) {
    if (!Number.isSafeInteger(options.threads) || options.threads < 0) {
      throw new TypeError(`TokenizerPool option threads must be an integer >= 0, received ${String(options.threads)}`);
    }
    this.#o = { workerUrl: new URL('./worker-entry.mjs', import.meta.url), ...options };
    for (let i = 0; i < options.threads; i++) this.#spawn();
  }

  /**
   * Tokenises `texts` for the model `source` names. `local` is the event loop's copy of the same
   * tokenizer, used when the pool has no threads.
   */
  tokenize(source: TokenizerSource, local: Tokenizer, texts: readonly string[], options: TokenizeOptions): Promise<TokenizedBatch> {
    return this.#run(
      texts.length,
      () => tokenizeBatch(local, texts, options),
      (id) => ({ type: 'tokenize', id, source, texts, options }),
    );
  }

  /** `POST /tokenize`'s answer for `texts`: each one's tokens with offsets, as JSON (src/runtime/view-batch.ts). */
  view(source: TokenizerSource, local: Tokenizer, texts: readonly string[], options: ViewOptions): Promise<ViewedBatch> {
    return this.#run(
      texts.length,
      () => viewBatch(local, texts, options),
      (id) => ({ type: 'view', id, source, texts, options }),
    );
  }

  /** Runs one batch on the least busy thread (`message`), or here (`inline`) when the pool has no threads. */
  #run<R extends TokenizedBatch | ViewedBatch>(texts: number, inline: () => R, message: (id: number) => ToTokenizer): Promise<R> {
    this.#stats.batches++;
    this.#stats.texts += texts;
    if (this.#closed) return Promise.reject(new PolyrayError(ErrorCode.SHUTTING_DOWN, 'The service is shutting down'));
    if (this.#threads.length === 0) {
      try {
        return Promise.resolve(inline());
      } catch (e) {
        return Promise.reject(e as Error);
      }
    }
    let thread = this.#threads[0]!;
    for (const t of this.#threads) if (t.pending.size < thread.pending.size) thread = t;
    const id = this.#nextId++;
    return new Promise<R>((resolve, reject) => {
      thread.pending.set(id, { resolve: resolve as Pending['resolve'], reject });
      thread.worker.postMessage(message(id));
    });
  }

  /** Drops the threads' copies of these tokenizers (models reloaded or removed). */
  forget(keys: readonly string[]): void {
    for (const t of this.#threads) t.worker.postMessage({ type: 'forget', keys: [...keys] } satisfies ToTokenizer);
  }

  stats(): TokenizerPoolStats {
    let inFlight = 0;
    for (const t of this.#threads) inFlight += t.pending.size;
    return { threads: this.#threads.length, inFlight, ...this.#stats };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(
      this.#threads.map(async (t) => {
        t.closing = true;
        const exited = new Promise<void>((r) => t.worker.once('exit', () => r()));
        t.worker.postMessage({ type: 'close' } satisfies ToTokenizer);
        const timer = setTimeout(() => void t.worker.terminate(), 2000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }

  #spawn(): void {
    const worker = new Worker(this.#o.workerUrl, { workerData: { entry: 'tokenizer' } });
    const thread: Thread = { worker, pending: new Map(), closing: false };
    worker.on('message', (m: FromTokenizer) => {
      const p = thread.pending.get(m.id);
      if (!p) return;
      thread.pending.delete(m.id);
      if (m.type === 'tokenized') p.resolve(unpack(m));
      else if (m.type === 'viewed') p.resolve({ json: m.json, counts: m.counts });
      else if (m.code !== undefined && CODES.has(m.code)) p.reject(new PolyrayError(m.code as Code, m.message));
      else {
        this.#o.logger.error({ err: m.message }, 'tokenisation failed');
        p.reject(new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Tokenisation failed for this batch; the request can be retried', { reason: 'tokenizer' }));
      }
    });
    worker.on('error', (err) => this.#o.logger.error({ err: err.message }, 'tokenizer thread error'));
    worker.on('exit', (code) => {
      const i = this.#threads.indexOf(thread);
      if (i >= 0) this.#threads.splice(i, 1);
      for (const p of thread.pending.values()) {
        p.reject(
          new PolyrayError(ErrorCode.INFERENCE_FAILED, 'The tokenizer thread stopped during this batch; the request can be retried', { reason: 'tokenizer' }),
        );
      }
      thread.pending.clear();
      if (!thread.closing && !this.#closed) {
        this.#stats.failures++;
        this.#o.logger.error({ code }, 'tokenizer thread exited; starting a replacement');
        this.#spawn();
      }
    });
    if ((this.#o.niceness ?? 0) > 0) worker.postMessage({ type: 'nice', niceness: this.#o.niceness ?? 0 } satisfies ToTokenizer);
    this.#threads.push(thread);
  }
}

function unpack(m: Extract<FromTokenizer, { type: 'tokenized' }>): TokenizedBatch {
  const items: Tokenized[] = new Array(m.lengths.length);
  let at = 0;
  for (let i = 0; i < m.lengths.length; i++) {
    const n = m.lengths[i]!;
    items[i] = { ids: m.ids.subarray(at, at + n), mask: m.mask.subarray(at, at + n), total: m.totals[i]!, ...(m.partials[i] ? { partial: true } : {}) };
    at += n;
  }
  return { items, promptTokens: m.promptTokens };
}
