/**
 * A Unigram `tokenizer.json` (the XLM-R / T5 family: SentencePiece Unigram, Metaspace pre-tokenizer,
 * `<s> … </s>` around the text), generated from a small corpus so tests need no download: every
 * character of the corpus, and its words' substrings up to 5 characters (word starts marked "▁"), scored
 * by log frequency, so the Viterbi search has overlapping pieces to choose between. Characters outside the
 * corpus become <unk>.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

const SEED_CORPUS = [
  'The quick brown fox jumps over the lazy dog. The cat sat on the mat; the dog sat on the log.',
  'Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Fußgänger, schön, Mädchen.',
  '我们今天去公园散步，然后吃了晚饭。你好世界。',
  'مرحبا بالعالم، كيف حالك اليوم؟',
  'function add(a, b) { return a + b; } const x = [1, 2, 3].map((v) => v * 2);',
  'tokenization tokenizer tokens embedding embeddings retrieval passages query search result',
  '0123456789 !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~',
];

export const UNIGRAM_SPECIALS = ['<s>', '<pad>', '</s>', '<unk>'] as const;

/** The tokenizer.json object. */
export function unigramTokenizer(corpus: readonly string[] = SEED_CORPUS): Record<string, unknown> {
  const counts = new Map<string, number>();
  const add = (p: string, n = 1): void => void counts.set(p, (counts.get(p) ?? 0) + n);
  for (const line of corpus) {
    for (const ch of line.normalize('NFKC')) if (ch !== ' ') add(ch);
    for (const word of line.normalize('NFKC').split(/\s+/).filter(Boolean)) {
      const w = `▁${word}`;
      const chars = [...w];
      for (let i = 0; i < chars.length; i++) for (let l = 2; l <= 5 && i + l <= chars.length; l++) add(chars.slice(i, i + l).join(''));
    }
  }
  add('▁', 50);
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  const pieces = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const vocab: [string, number][] = [
    ...UNIGRAM_SPECIALS.map((s): [string, number] => [s, 0]),
    ...pieces.map(([p, n]): [string, number] => [p, Math.log(n / total) - 0.1 * [...p].length]),
  ];
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: UNIGRAM_SPECIALS.map((s, i) => special(i, s)),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' }] },
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '</s>', type_id: 0 } },
        { SpecialToken: { id: '</s>', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 0 } },
        { SpecialToken: { id: '</s>', type_id: 0 } },
      ],
      special_tokens: {
        '<s>': { id: '<s>', ids: [0], tokens: ['<s>'] },
        '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] },
      },
    },
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    model: { type: 'Unigram', unk_id: 3, vocab, byte_fallback: false },
  };
}

/** Writes tokenizer.json and tokenizer_config.json (XLM-R's special tokens) into `dir`. */
export async function writeUnigramTokenizer(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify(unigramTokenizer()));
  await writeFile(
    path.join(dir, 'tokenizer_config.json'),
    JSON.stringify({
      tokenizer_class: 'XLMRobertaTokenizer',
      bos_token: '<s>',
      eos_token: '</s>',
      sep_token: '</s>',
      cls_token: '<s>',
      unk_token: '<unk>',
      pad_token: '<pad>',
      mask_token: '<mask>',
      model_max_length: 512,
    }),
  );
  return path.join(dir, 'tokenizer.json');
}
