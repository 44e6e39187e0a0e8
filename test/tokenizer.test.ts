/**
 * WordTokenizer: exact behaviour on a small hand-made vocabulary, behaviour on the real text-glove
 * vocabulary (built into ./models, reused between runs), and fast-check properties: never throws,
 * ids in range, mask 0 exactly at unknown ids, case-insensitive, bounded length, context-free across
 * spaces.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { before, describe, test } from 'node:test';

import fc from 'fast-check';

import { buildModels } from '../src/models/build.ts';
import { UNKNOWN_ID, WordTokenizer } from '../src/runtime/tokenizer.ts';

const SMALL_VOCAB = [
  '<unk>',
  'the',
  'cat',
  '.',
  ',',
  '!',
  'hello',
  'world',
  'well-known',
  'do',
  "n't",
  'ca',
  'obrien',
  'cafe',
  'state',
  'art',
  '3.5',
  'it',
  '😀',
  '…',
  '"',
  '-',
  'the', // duplicate: keeps id 1
];

const small = WordTokenizer.fromVocabulary(SMALL_VOCAB, { lowercase: true });
const idOf = (t: string) => SMALL_VOCAB.indexOf(t);

describe('WordTokenizer on a small vocabulary', () => {
  test('words and punctuation, lower-cased', () => {
    assert.deepEqual(small.tokenize('The cat.'), ['the', 'cat', '.']);
    assert.deepEqual(small.encode('The CAT.'), { ids: [1, 2, 3], mask: [1, 1, 1] });
    assert.deepEqual(small.tokenize('Hello,world!'), ['hello', ',', 'world', '!']);
    assert.deepEqual(small.tokenize('"Hello" - world…'), ['"', 'hello', '"', '-', 'world', '…']);
  });

  test('unknown words get id 0 and mask 0', () => {
    assert.deepEqual(small.encode('the dog'), { ids: [1, UNKNOWN_ID], mask: [1, 0] });
    // The reserved line 0 is never matched, whatever its text.
    assert.deepEqual(small.encode('<unk>').ids, [0, 0, 0]);
  });

  test('clitics are split PTB-style', () => {
    assert.deepEqual(small.tokenize("Don't"), ['do', "n't"]);
    assert.deepEqual(small.tokenize("can't"), ['ca', "n't"]);
    assert.deepEqual(small.tokenize('it’s'), ['it', "'s"]); // typographic apostrophe
    assert.deepEqual(small.encode("it's").mask, [1, 0]); // "'s" is not in this vocabulary
  });

  test('hyphens and apostrophes: whole word first, then joined, then parts', () => {
    assert.deepEqual(small.tokenize('well-known'), ['well-known']);
    assert.deepEqual(small.tokenize("O'Brien"), ['obrien']);
    assert.deepEqual(small.tokenize('state-of-the-art'), ['state', 'of', 'the', 'art']);
    assert.deepEqual(small.encode('state-of-the-art').mask, [1, 0, 1, 1]);
    assert.deepEqual(small.tokenize('-cat-'), ['-', 'cat', '-']); // only internal hyphens join
  });

  test('accents and compatibility forms fold only when needed', () => {
    assert.deepEqual(small.tokenize('Café'), ['cafe']);
    assert.deepEqual(small.tokenize('Cafe\u0301'), ['cafe']); // decomposed input, NFC first
    assert.deepEqual(small.tokenize('ＣＡＴ'), ['cat']); // fullwidth
  });

  test('numbers stay whole', () => {
    assert.deepEqual(small.tokenize('3.5 1,000 10:30'), ['3.5', '1,000', '10', ':', '30']);
    assert.deepEqual(small.encode('3.5').ids, [idOf('3.5')]);
  });

  test('emoji, controls, invisible characters and lone surrogates', () => {
    assert.deepEqual(small.tokenize('cat😀'), ['cat', '😀']);
    assert.deepEqual(small.encode('😀').ids, [idOf('😀')]);
    assert.deepEqual(small.tokenize('the\u0000cat\u200bworld\u00a0hello'), ['the', 'cat', 'world', 'hello']);
    assert.deepEqual(small.tokenize('ca\u00adt'), ['cat']); // soft hyphen removed
    assert.deepEqual(small.encode('\ud800 cat \udc00'), { ids: [0, 2, 0], mask: [0, 1, 0] });
    assert.deepEqual(small.encode(''), { ids: [], mask: [] });
    assert.deepEqual(small.encode(' \t\n\r '), { ids: [], mask: [] });
  });

  test('vocabulary bookkeeping', () => {
    assert.equal(small.vocabSize, SMALL_VOCAB.length);
    assert.equal(small.idOf('the'), 1); // first occurrence wins
    const cased = WordTokenizer.fromVocabulary(['<unk>', 'the', 'The'], { lowercase: false });
    assert.deepEqual(cased.encode('The the'), { ids: [2, 1], mask: [1, 1] });
  });

  test('load() reads LF and CRLF files', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'polyray-vocab-'));
    try {
      await writeFile(path.join(dir, 'lf.txt'), '<unk>\nthe\ncat\n');
      await writeFile(path.join(dir, 'crlf.txt'), '<unk>\r\nthe\r\ncat');
      for (const f of ['lf.txt', 'crlf.txt']) {
        const t = await WordTokenizer.load(path.join(dir, f), { lowercase: true });
        assert.equal(t.vocabSize, 3);
        assert.deepEqual(t.encode('The cat').ids, [1, 2]);
      }
      await assert.rejects(WordTokenizer.load(path.join(dir, 'missing.txt'), { lowercase: true }));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('WordTokenizer on the text-glove vocabulary', () => {
  let glove: WordTokenizer;
  before(async () => {
    const [summary] = await buildModels({ modelsDir: path.resolve('models'), only: ['text-glove'] });
    glove = await WordTokenizer.load(path.join(summary!.dir, 'vocab.txt'), { lowercase: true });
  });

  test('finds common words, punctuation and hyphenated words', () => {
    const enc = glove.encode('The cat sat on the mat, well-known e-mail!');
    assert.deepEqual(glove.tokenize('The cat sat on the mat, well-known e-mail!'), ['the', 'cat', 'sat', 'on', 'the', 'mat', ',', 'well-known', 'e-mail', '!']);
    assert.ok(enc.mask.every((m) => m === 1));
    assert.equal(enc.ids[0], 1); // "the" is the most frequent GloVe word: id 1 (id 0 is reserved)
  });

  test('vocabulary-specific forms: ca/wo stems, obrien, folded accents', () => {
    assert.deepEqual(glove.tokenize("I can't, won't: O'Brien's naïve café"), ['i', 'ca', "n't", ',', 'wo', "n't", ':', 'obrien', "'s", 'naive', 'cafe']);
    const enc = glove.encode("can't won't O'Brien naïve café");
    assert.deepEqual(enc.mask, [1, 0, 1, 0, 1, 1, 1]); // "n't" is not in wink's list
  });

  test('is fast on a 1 MB string', () => {
    const text = "The quick brown fox, don't you know, jumped over O'Brien's lazy-dog café 3.5 times! 😀 ".repeat(11_500);
    const t0 = performance.now();
    const enc = glove.encode(text);
    const ms = performance.now() - t0;
    assert.ok(text.length > 1_000_000);
    assert.ok(enc.ids.length > 200_000);
    assert.ok(ms < 3000, `1 MB took ${ms} ms`);
  });

  // Arbitrary UTF-16: includes lone surrogates, controls, every plane.
  const anyUtf16 = fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 200 });
  const anyText = fc.oneof(fc.string({ unit: 'binary', maxLength: 200 }), fc.string({ unit: 'grapheme', maxLength: 100 }), anyUtf16);
  // Word-like text, where case and spacing behaviour is well defined.
  const wordish = fc.string({
    unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789     .,;:!?\'"-()éÉüÜ’…😀'.split('')),
    maxLength: 120,
  });

  test('property: never throws; ids in range; mask 0 exactly at unknown ids; length bounded', () => {
    fc.assert(
      fc.property(fc.oneof(anyText, wordish), (text) => {
        const { ids, mask } = glove.encode(text);
        assert.equal(ids.length, mask.length);
        assert.ok(ids.length <= text.length, `${ids.length} tokens from ${text.length} code units`);
        for (let i = 0; i < ids.length; i++) {
          const id = ids[i]!;
          assert.ok(Number.isInteger(id) && id >= 0 && id < glove.vocabSize);
          assert.equal(mask[i], id === UNKNOWN_ID ? 0 : 1);
        }
        assert.equal(glove.tokenize(text).length, ids.length);
      }),
      { numRuns: 2000 },
    );
  });

  test('property: upper and lower case give the same ids', () => {
    fc.assert(
      fc.property(wordish, (text) => {
        const lower = glove.encode(text.toLowerCase());
        assert.deepEqual(glove.encode(text.toUpperCase()), lower);
        assert.deepEqual(glove.encode(text), lower);
      }),
      { numRuns: 1000 },
    );
  });

  test('property: texts joined by a space encode to the concatenation', () => {
    fc.assert(
      fc.property(wordish, wordish, (a, b) => {
        const ea = glove.encode(a);
        const eb = glove.encode(b);
        const joined = glove.encode(`${a} ${b}`);
        assert.deepEqual(joined, { ids: [...ea.ids, ...eb.ids], mask: [...ea.mask, ...eb.mask] });
      }),
      { numRuns: 1000 },
    );
  });
});
