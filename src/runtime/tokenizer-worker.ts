/**
 * A tokenizer thread (started by src/runtime/tokenizer-pool.ts): loads each model's tokenizer on first
 * use, tokenises batches of texts with `tokenizeBatch` and sends the ids back packed in one transferred
 * buffer, so the event loop only slices them.
 */
import { parentPort } from 'node:worker_threads';
import { setPriority } from 'node:os';
import type { Tokenizer } from './tokenizer.ts';
import { tokenizeBatch } from './tokenizer.ts';
import { loadTokenizer } from './tokenizer-load.ts';
import type { FromTokenizer, ToTokenizer, TokenizerSource } from './tokenizer-protocol.ts';
import { viewBatch } from './view-batch.ts';

const port = parentPort;
if (!port) throw new Error('tokenizer-worker.ts runs as a worker thread');
const tokenizers = new Map<string, Promise<Tokenizer>>();
const post = (m: FromTokenizer, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);

/** The thread's copy of a model's tokenizer, loaded on first use. */
function tokenizerOf(source: TokenizerSource): Promise<Tokenizer> {
  let tok = tokenizers.get(source.key);
  if (!tok) {
    tok = loadTokenizer(source.dir, source.name, source.spec);
    tokenizers.set(source.key, tok);
    // A load that failed is tried again by the next batch (the file may have been fixed).
    tok.catch(() => tokenizers.delete(source.key));
  }
  return tok;
}

port.on('message', (msg: ToTokenizer) => {
  switch (msg.type) {
    case 'nice':
      try {
        // Per thread on Linux: the event loop keeps its priority over tokenisation.
        if (msg.niceness > 0) setPriority(0, msg.niceness);
      } catch {
        // Not permitted or not supported: the thread keeps the default priority.
      }
      return;
    case 'view': {
      const { id } = msg;
      tokenizerOf(msg.source).then(
        (t) => {
          try {
            post({ type: 'viewed', id, ...viewBatch(t, msg.texts, msg.options) });
          } catch (e) {
            post({ type: 'error', id, message: (e as Error).message.slice(0, 300) });
          }
        },
        (e: unknown) => post({ type: 'error', id, message: `the tokenizer could not be loaded: ${(e as Error).message.slice(0, 300)}` }),
      );
      return;
    }
    case 'tokenize': {
      const { id } = msg;
      tokenizerOf(msg.source).then(
        (t) => {
          try {
            const batch = tokenizeBatch(t, msg.texts, msg.options);
            let size = 0;
            for (const it of batch.items) size += it.ids.length;
            const ids = new BigInt64Array(size);
            const mask = new BigInt64Array(size);
            const lengths = new Int32Array(batch.items.length);
            const totals = new Int32Array(batch.items.length);
            const partials = new Uint8Array(batch.items.length);
            let at = 0;
            batch.items.forEach((it, i) => {
              ids.set(it.ids, at);
              mask.set(it.mask, at);
              lengths[i] = it.ids.length;
              totals[i] = it.total;
              partials[i] = it.partial ? 1 : 0;
              at += it.ids.length;
            });
            post({ type: 'tokenized', id, ids, mask, lengths, totals, partials, promptTokens: batch.promptTokens }, [
              ids.buffer,
              mask.buffer,
              lengths.buffer,
              totals.buffer,
              partials.buffer,
            ]);
          } catch (e) {
            post({ type: 'error', id, message: (e as Error).message.slice(0, 300), code: (e as { code?: string }).code });
          }
        },
        (e: unknown) => post({ type: 'error', id, message: `the tokenizer could not be loaded: ${(e as Error).message.slice(0, 300)}` }),
      );
      return;
    }
    case 'forget':
      for (const k of msg.keys) tokenizers.delete(k);
      return;
    case 'close':
      port.close();
      return;
    default: {
      const never: never = msg;
      throw new Error(`unknown message ${JSON.stringify(never)}`);
    }
  }
});
