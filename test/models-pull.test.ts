/**
 * `polyray models pull` through the real CLI against a local hub server in the hub's URL layout
 * (test/helpers/hub-server.ts): the official `@huggingface/hub` client lists and probes, Polyray downloads
 * resumably and verifies every file; faults: a download dropped half-way, corrupted bytes, a token
 * required, a missing repository or variant.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BERT_MODELS } from '../src/models/bert.ts';
import { buildModels } from '../src/models/build.ts';
import { readHfFolder } from '../src/runtime/hf-folder.ts';
import { polyrayCli } from './helpers/cli.ts';
import { writeSentenceTransformersFolder } from './helpers/hf-folder.ts';
import { type HubServer, startHubServer } from './helpers/hub-server.ts';
import { MODELS_DIR } from './helpers/polyray.ts';

const TOKEN = 'hf_test_token_0123456789';

describe('polyray models pull', () => {
  let tmp: string;
  let hub: HubServer;
  let models: string;
  const pull = (args: string[], env: Record<string, string> = {}) =>
    polyrayCli(['models', 'pull', ...args], { POLYRAY_MODELS_DIR: models, HF_ENDPOINT: hub.url, HF_TOKEN: TOKEN, ...env });

  before(async () => {
    await buildModels({ modelsDir: MODELS_DIR, only: [BERT_MODELS.plain] });
    tmp = await mkdtemp(path.join(os.tmpdir(), 'polyray-pull-'));
    const repo = await writeSentenceTransformersFolder(
      path.join(tmp, 'hub'),
      'tiny-st',
      path.join(MODELS_DIR, BERT_MODELS.plain, 'tokenizer.json'),
      'mean',
      true,
    );
    // What a real repository also holds: other weights and another ONNX export, not to be fetched.
    await writeFile(path.join(repo, 'pytorch_model.bin'), Buffer.alloc(4096, 7));
    await copyFile(path.join(repo, 'onnx', 'model.onnx'), path.join(repo, 'onnx', 'model_quantized.onnx'));
    await writeFile(path.join(repo, 'README.md'), '---\nlicense: apache-2.0\n---\n# tiny-st\n');
    hub = await startHubServer({ repos: { 'acme/tiny-st': repo }, token: TOKEN });
    models = path.join(tmp, 'models');
    await mkdir(models);
  });
  after(async () => {
    await hub?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('a corrupted file is refused by its checksum and nothing is published', async () => {
    hub.corruptOnce('tokenizer.json');
    const r = await pull(['acme/tiny-st', '--name', 'bad-copy']);
    assert.equal(r.code, 1, r.out);
    assert.match(r.err, /tokenizer\.json: git blob id [0-9a-f]+ does not match the hub's/);
    assert.deepEqual(
      (await readdir(models)).filter((f) => !f.startsWith('.')),
      [],
    );
  });

  test('resumes a download dropped half-way, verifies every file, publishes a folder Polyray serves', async () => {
    hub.dropOnce('onnx/model.onnx');
    const r = await pull(['acme/tiny-st']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /onnx\/model\.onnx: connection lost at \d+ bytes; resuming/);
    assert.ok(
      hub.ranges['onnx/model.onnx']!.some((h) => /^bytes=[1-9]\d*-$/.test(h)),
      `a Range request continued the file: ${hub.ranges['onnx/model.onnx']}`,
    );
    assert.match(r.out, /pulled acme\/tiny-st@main \(fp32\): \d+ files/);
    const dir = path.join(models, 'tiny-st');
    const files = await readdir(path.join(dir, 'onnx'));
    assert.deepEqual(files, ['model.onnx'], 'only the variant asked for');
    assert.ok(!(await readdir(dir)).includes('pytorch_model.bin'), 'no PyTorch weights');
    const m = await readHfFolder(dir);
    assert.equal(m.version, (await readHfFolder(path.join(tmp, 'hub', 'tiny-st'), 'tiny-st')).version, 'the same model as on the hub');
  });

  test('int8 takes the quantized export', async () => {
    const r = await pull(['acme/tiny-st', '--variant', 'int8', '--name', 'tiny-st-int8']);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(await readdir(path.join(models, 'tiny-st-int8', 'onnx')), ['model_quantized.onnx']);
  });

  test('refusals say why: no token, a missing repository, a missing variant, an existing folder', async () => {
    const noToken = await pull(['acme/tiny-st', '--name', 'x1'], { HF_TOKEN: '' });
    assert.equal(noToken.code, 1);
    assert.match(noToken.err, /access refused \(401\); set HF_TOKEN/);
    const missing = await pull(['acme/nope']);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /repository acme\/nope \(revision main\) at .* not found/);
    const fp16 = await pull(['acme/tiny-st', '--variant', 'fp16', '--name', 'x2']);
    assert.equal(fp16.code, 1);
    assert.match(fp16.err, /no fp16 ONNX export .*its ONNX files: onnx\/model\.onnx, onnx\/model_quantized\.onnx/);
    const again = await pull(['acme/tiny-st']);
    assert.equal(again.code, 1);
    assert.match(again.err, /already exists/);
  });
});
