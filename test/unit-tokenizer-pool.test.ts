/**
 * TokenizerPool (src/runtime/tokenizer-pool.ts): tokenisation in threads gives exactly what the event loop
 * would (ids, masks, lengths before truncation, prompt tokens), fails a batch it cannot tokenise with a
 * clear error and recovers, and refuses work once closed.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { ErrorCode, PolyrayError } from '../src/errors.ts';
import { createLogger } from '../src/log.ts';
import type { Tokenizer } from '../src/runtime/tokenizer.ts';
import { tokenizeBatch } from '../src/runtime/tokenizer.ts';
import { loadTokenizer } from '../src/runtime/tokenizer-load.ts';
import { TokenizerPool, type TokenizerSource } from '../src/runtime/tokenizer-pool.ts';
import { MODELS_DIR } from './helpers/polyray.ts';

const TEXTS = ['The cat sat on the mat.', 'Über den Wolken; 我们今天去公园散步!', '', 'emoji 🍕 and مرحبا', 'word '.repeat(400)];
const logger = createLogger('silent');

describe('TokenizerPool', () => {
  let tmp: string;
  let source: TokenizerSource;
  let local: Tokenizer;
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [BERT_MODELS.plain] });
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-tokenizer-pool-'));
    await copyFile(path.join(MODELS_DIR, BERT_MODELS.plain, 'tokenizer.json'), path.join(tmp, 'tokenizer.json'));
    source = { key: 'bert@1', name: 'bert', dir: tmp, spec: { kind: 'hf', file: 'tokenizer.json', lowercase: false } };
    local = await loadTokenizer(tmp, 'bert', source.spec);
  });
  after(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('threads and the event loop tokenise identically: ids, masks, totals, prompt tokens, truncation', async () => {
    const pools = [new TokenizerPool({ threads: 0, logger }), new TokenizerPool({ threads: 2, logger })];
    try {
      for (const options of [
        { maxTokens: 512, side: 'right' as const, truncate: false },
        { maxTokens: 16, side: 'right' as const, truncate: true, prompt: 'query: ' },
        { maxTokens: 16, side: 'left' as const, truncate: true },
      ]) {
        const want = tokenizeBatch(local, TEXTS, options);
        for (const pool of pools) {
          // Several batches at once: they spread over the threads and each comes back to its caller.
          const got = await Promise.all([1, 2, 3].map(() => pool.tokenize(source, local, TEXTS, options)));
          for (const g of got) {
            assert.equal(g.promptTokens, want.promptTokens);
            assert.deepEqual(
              g.items.map((i) => [Array.from(i.ids), Array.from(i.mask), i.total, i.partial === true]),
              want.items.map((i) => [Array.from(i.ids), Array.from(i.mask), i.total, i.partial === true]),
            );
          }
        }
      }
      assert.equal(tokenizeBatch(local, ['x'], { maxTokens: 8, side: 'right', truncate: false, prompt: 'query: ' }).promptTokens, 3, '[CLS] query :');
      // 400 words against a 16-token limit: only the start is read (the probe), and the item says so.
      const long = tokenizeBatch(local, ['word '.repeat(4000)], { maxTokens: 16, side: 'right', truncate: true });
      assert.equal(long.items[0]!.partial, true);
      assert.equal(long.items[0]!.ids.length, 16);
      assert.ok(long.items[0]!.total > 16 && long.items[0]!.total < 4002);
      assert.equal(pools[1]!.stats().threads, 2);
      assert.equal(pools[1]!.stats().inFlight, 0);
    } finally {
      for (const p of pools) await p.close();
    }
  });

  test('a tokenizer that cannot be loaded fails its batch (INFERENCE_FAILED, retryable); a fixed file is read by the next batch', async () => {
    const pool = new TokenizerPool({ threads: 1, logger });
    const broken: TokenizerSource = { ...source, key: 'broken@1', spec: { kind: 'hf', file: 'missing.json', lowercase: false } };
    try {
      await assert.rejects(pool.tokenize(broken, local, ['a'], { maxTokens: 8, side: 'right', truncate: false }), (e: unknown) => {
        assert.ok(e instanceof PolyrayError);
        assert.equal(e.code, ErrorCode.INFERENCE_FAILED);
        return true;
      });
      await copyFile(path.join(tmp, 'tokenizer.json'), path.join(tmp, 'missing.json'));
      const ok = await pool.tokenize(broken, local, ['a'], { maxTokens: 8, side: 'right', truncate: false });
      assert.equal(ok.items[0]!.ids.length, 3);
    } finally {
      await pool.close();
    }
  });

  test('after close, tokenize is SHUTTING_DOWN', async () => {
    const pool = new TokenizerPool({ threads: 1, logger });
    await pool.close();
    await assert.rejects(pool.tokenize(source, local, ['a'], { maxTokens: 8, side: 'right', truncate: false }), { code: ErrorCode.SHUTTING_DOWN });
  });
});
