/**
 * Bring your own model: a Hugging Face style folder (model.onnx, tokenizer.json, config.json, our
 * manifest.json) dropped into a models directory is served by the real service through the same path
 * as the bundled models. The folder is made from text-bert-synthetic's files under another name,
 * next to a broken folder that must be skipped without stopping the service (docs/MODELS.md).
 */

import assert from 'node:assert/strict';
import { copyFile, link, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as ort from 'onnxruntime-node';

import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { WordPieceTokenizer } from '../src/runtime/wordpiece.ts';
import { MODELS_DIR, norm, startPolyray, type TestServer } from './helpers/polyray.ts';

const NAME = 'my-encoder';
const SOURCE = path.join(MODELS_DIR, BERT_MODELS.plain);
const TEXTS = ['The cat sat on the mat.', 'Bring your own encoder, served like the bundled ones!', 'Crème brûlée'];

let tmp: string;
let server: TestServer;

/** Hard-links (or copies, across filesystems) a file into the test folder: model.onnx is 90 MB. */
async function place(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch {
    await copyFile(from, to);
  }
}

describe('bring-your-own model folder', () => {
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [BERT_MODELS.plain] });
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-byo-'));
    const dir = path.join(tmp, NAME);
    await mkdir(dir);
    for (const f of ['model.onnx', 'tokenizer.json', 'config.json']) await place(path.join(SOURCE, f), path.join(dir, f));
    const manifest = JSON.parse(await readFile(path.join(SOURCE, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    Object.assign(manifest, {
      name: NAME,
      version: 'byo-2024-01',
      description: 'A user-supplied BERT encoder (here: the synthetic one under another name).',
      source: 'test fixture',
    });
    await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2));
    // A broken neighbour: reported and skipped, never fatal.
    await mkdir(path.join(tmp, 'broken'));
    await writeFile(path.join(tmp, 'broken', 'manifest.json'), '{"name": "Broken!"}');
    // A runtime hint of the wrong type is refused the same way, naming the field.
    await mkdir(path.join(tmp, 'bad-hint'));
    await writeFile(path.join(tmp, 'bad-hint', 'manifest.json'), JSON.stringify({ ...manifest, name: 'bad-hint', runtime: { allowSpinning: 'yes' } }));

    server = await startPolyray({ models: { dir: tmp, buildMissing: false, serve: ['*'] } });
  });
  after(async () => {
    await server?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('Query.models lists it READY with its manifest values', async () => {
    const r = await server.gql<{ models: Record<string, unknown>[] }>(
      '{ models { name version modality dimensions maxTokens synthetic state executionProvider } }',
    );
    assert.equal(r.errors, undefined);
    assert.deepEqual(r.data!.models, [
      { name: NAME, version: 'byo-2024-01', modality: 'TEXT', dimensions: 384, maxTokens: 512, synthetic: true, state: 'READY', executionProvider: 'cpu' },
    ]);
    const failed = server.server.host.registry.failedFolders();
    assert.deepEqual(failed.map((f) => f.folder).sort(), ['bad-hint', 'broken']);
    assert.match(JSON.stringify(failed.find((f) => f.folder === 'bad-hint')), /runtime/);
  });

  test('embed returns 384-d unit vectors equal to running the ONNX file directly', async () => {
    const r = await server.gql<{ embed: { model: string; dimensions: number; vector: number[] }[] }>(
      'query($inputs: [EmbedInput!]!) { embed(model: "my-encoder", inputs: $inputs) { model dimensions vector } }',
      { inputs: TEXTS.map((text) => ({ text })) },
    );
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    const rows = r.data!.embed;
    assert.equal(rows.length, TEXTS.length);

    const tokenizer = await WordPieceTokenizer.load(path.join(tmp, NAME, 'tokenizer.json'));
    const session = await ort.InferenceSession.create(path.join(tmp, NAME, 'model.onnx'));
    try {
      for (const [i, text] of TEXTS.entries()) {
        const row = rows[i]!;
        assert.equal(row.model, `${NAME}@byo-2024-01`);
        assert.equal(row.dimensions, 384);
        assert.equal(row.vector.length, 384);
        assert.ok(Math.abs(norm(row.vector) - 1) < 1e-5);
        const { ids } = tokenizer.encode(text);
        const feed = (values: bigint[]) => new ort.Tensor('int64', BigInt64Array.from(values), [1, ids.length]);
        const out = await session.run({
          input_ids: feed(ids.map(BigInt)),
          attention_mask: feed(ids.map(() => 1n)),
          token_type_ids: feed(ids.map(() => 0n)),
        });
        const direct = out['embedding']!.data as Float32Array;
        let maxDiff = 0;
        for (let k = 0; k < 384; k++) maxDiff = Math.max(maxDiff, Math.abs(direct[k]! - row.vector[k]!));
        assert.ok(maxDiff < 1e-4, `"${text}": max |service - direct| = ${maxDiff}`);
      }
    } finally {
      await session.release();
    }
  });

  test('inputs over maxTokens are refused with INPUT_TOO_LARGE', async () => {
    const r = await server.gql(`{ embed(model: "my-encoder", inputs: [{ text: "${'word '.repeat(600)}" }]) { dimensions } }`);
    assert.equal(r.errors?.[0]?.extensions?.['code'], 'INPUT_TOO_LARGE');
  });
});
