/**
 * Execution-provider fallback with the real service: on a machine without a GPU (CI), asking for
 * `cuda` and `webgpu` must still start the service on CPU, log one warning per failed provider and
 * model, and report `executionProvider: "cpu"` in `Query.models`.
 *
 * What happens here with onnxruntime-node 1.30's default npm build (checked when this was written):
 *  - cuda: session creation throws a clean Error ("OrtSessionOptionsAppendExecutionProvider_Cuda:
 *    Failed to load shared library"; ORT also prints the missing libonnxruntime_providers_shared.so to
 *    stderr): the CUDA EP is not bundled.
 *  - webgpu: the WebGPU EP (Dawn) is bundled; without a Vulkan driver it throws a clean Error ("Failed to
 *    get a WebGPU adapter: No supported adapters"; Dawn prints "Couldn't load Vulkan" to stderr).
 * Neither kills the worker, and a later attempt in the same worker (the next model) fails the same way.
 *
 * Determinism: when a Vulkan driver IS installed (e.g. Mesa's lavapipe from bookworm-backports), WebGPU
 * would succeed, so the fallback suite points the Vulkan loader at no driver (`VK_ICD_FILENAMES` set to a
 * missing file, in this test process only, before ORT first touches Vulkan).
 *
 * Opt-in, not in CI: `POLYRAY_TEST_WEBGPU=1` runs the fp16 model on WebGPU instead (needs libvulkan1 and
 * a Vulkan driver — lavapipe: `apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1`;
 * bookworm's own Mesa 22.3 is rejected by Dawn). See README "Execution providers".
 * `POLYRAY_TEST_GPU=1` skips the fallback suite on a machine where cuda/webgpu really work.
 */

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';

import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { BERT_FP16_MODEL, BERT_MODELS } from '../src/models/bert.ts';
import { cosine, MODELS_DIR, norm, startPolyray, type TestServer } from './helpers/polyray.ts';

const MODELS = ['text-glove', BERT_FP16_MODEL];
const ON_GPU_MACHINE = process.env['POLYRAY_TEST_GPU'] === '1';
const WEBGPU = process.env['POLYRAY_TEST_WEBGPU'] === '1';
const LAVAPIPE_ICD = '/usr/share/vulkan/icd.d/lvp_icd.json';

// The Vulkan loader reads this once per process, when ORT's WebGPU EP first creates its Dawn instance.
if (WEBGPU) {
  if (!process.env['VK_ICD_FILENAMES'] && existsSync(LAVAPIPE_ICD)) process.env['VK_ICD_FILENAMES'] = LAVAPIPE_ICD;
} else if (!ON_GPU_MACHINE) {
  process.env['VK_ICD_FILENAMES'] = path.join(MODELS_DIR, '.no-vulkan-driver.json');
}

const EMBED_ONE = 'query($m: String!, $t: String!) { embed(model: $m, inputs: [{ text: $t }]) { vector } }';

interface LogLine {
  level: number;
  msg: string;
  model?: string;
  provider?: string;
  reason?: string;
}

describe('execution providers', () => {
  test('POLYRAY_PROVIDERS parses the provider list in order and refuses unknown names', () => {
    const base = { NODE_ENV: 'test', POLYRAY_MODELS_DIR: MODELS_DIR };
    assert.deepEqual(loadConfig({ ...base, POLYRAY_PROVIDERS: 'cuda,cpu' }).inference.providers, ['cuda', 'cpu']);
    assert.deepEqual(loadConfig({ ...base, POLYRAY_PROVIDERS: 'webgpu, cpu' }).inference.providers, ['webgpu', 'cpu']);
    assert.deepEqual(loadConfig(base).inference.providers, ['cpu']);
    assert.throws(() => loadConfig({ ...base, POLYRAY_PROVIDERS: 'tensorrt,cpu' }), /POLYRAY_PROVIDERS/);
  });

  describe('cuda and webgpu unavailable: the service falls back to cpu', { skip: ON_GPU_MACHINE || WEBGPU ? 'a GPU provider is expected to work here' : false }, () => {
    let t: TestServer;
    const lines: LogLine[] = [];
    before(async () => {
      const sink = new Writable({
        write(chunk: Buffer, _enc, done) {
          for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(JSON.parse(l) as LogLine);
          done();
        },
      });
      t = await startPolyray(
        { inference: { providers: ['cuda', 'webgpu', 'cpu'], workers: 1 }, models: { serve: MODELS } },
        { logger: createLogger('warn', sink) },
      );
    });
    after(async () => {
      await t?.stop();
    });

    test('Query.models reports cpu for every model', async () => {
      const r = await t.gql<{ models: { name: string; state: string; executionProvider: string | null }[] }>('{ models { name state executionProvider } }');
      assert.equal(r.errors, undefined);
      assert.deepEqual(
        r.data!.models.map((m) => [m.name, m.state, m.executionProvider]).sort(),
        MODELS.map((n) => [n, 'READY', 'cpu']).sort(),
      );
    });

    test('one warning per failed provider and model, with the reason', () => {
      const warnings = lines.filter((l) => l.level === 40 && l.msg === 'execution provider unavailable, falling back');
      assert.deepEqual(
        warnings.map((w) => `${w.model}:${w.provider}`).sort(),
        MODELS.flatMap((m) => [`${m}:cuda`, `${m}:webgpu`]).sort(),
      );
      for (const w of warnings) {
        assert.ok(w.reason && w.reason.length > 0, 'a reason is logged');
        if (w.provider === 'webgpu') assert.match(w.reason, /adapter|Vulkan|backend/i);
        if (w.provider === 'cuda') assert.match(w.reason, /cuda|shared library|backend/i);
      }
      assert.deepEqual(lines.filter((l) => l.level >= 50), [], 'no errors logged');
    });

    test('embedding works on the fallback provider (fp16 model included)', async () => {
      for (const model of MODELS) {
        const r = await t.gql<{ embed: { vector: number[] }[] }>(EMBED_ONE, { m: model, t: 'The cat sat on the mat.' });
        assert.equal(r.errors, undefined, JSON.stringify(r.errors));
        assert.ok(Math.abs(norm(r.data!.embed[0]!.vector) - 1) < 1e-3, model);
      }
    });
  });

  describe('webgpu (opt-in: POLYRAY_TEST_WEBGPU=1, needs a Vulkan driver)', { skip: WEBGPU ? false : 'set POLYRAY_TEST_WEBGPU=1' }, () => {
    let t: TestServer;
    before(async () => {
      // fp16 on WebGPU, the fp32 plain model on CPU as the reference.
      t = await startPolyray({ inference: { providers: ['webgpu', 'cpu'], workers: 1 }, models: { serve: [BERT_FP16_MODEL, BERT_MODELS.plain] } });
    });
    after(async () => {
      await t?.stop();
    });

    test('the fp16 model runs on webgpu and agrees with fp32 on cpu', async () => {
      const r = await t.gql<{ models: { name: string; executionProvider: string | null }[] }>('{ models { name executionProvider } }');
      const fp16 = r.data!.models.find((m) => m.name === BERT_FP16_MODEL);
      assert.equal(fp16?.executionProvider, 'webgpu');
      for (const text of ['The cat sat on the mat.', 'Stock markets fell sharply today.']) {
        const [a, b] = await Promise.all(
          [BERT_FP16_MODEL, BERT_MODELS.plain].map(async (m) => {
            const e = await t.gql<{ embed: { vector: number[] }[] }>(EMBED_ONE, { m, t: text });
            assert.equal(e.errors, undefined, JSON.stringify(e.errors));
            return e.data!.embed[0]!.vector;
          }),
        );
        const c = cosine(a!, b!);
        console.log(`webgpu fp16 vs cpu fp32 "${text}": cosine ${c.toFixed(7)}`);
        assert.ok(c >= 0.999, `cosine ${c}`);
      }
    });
  });
});
