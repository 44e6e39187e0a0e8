/**
 * Execution providers with the real service.
 *
 * Fallback (every machine without a GPU): asking for `cuda` and `webgpu` must still start the service on
 * CPU, log one warning per failed provider and model, and report `executionProvider: "cpu"` in
 * `Query.models`. What happens with onnxruntime-node 1.30's default npm build (checked when this was written):
 *  - cuda: session creation throws a clean Error ("OrtSessionOptionsAppendExecutionProvider_Cuda:
 *    Failed to load shared library"; ORT also prints the missing libonnxruntime_providers_shared.so to
 *    stderr): the CUDA EP is not bundled.
 *  - webgpu: the WebGPU EP (Dawn) is bundled; without a Vulkan driver it throws a clean Error ("Failed to
 *    get a WebGPU adapter: No supported adapters"; Dawn prints "Couldn't load Vulkan" to stderr).
 * Neither kills the worker, and a later attempt in the same worker (the next model) fails the same way.
 * The fallback server runs in this process, and this process hides every Vulkan driver from the loader
 * (`VK_DRIVER_FILES`/`VK_ICD_FILENAMES` pointed at a missing file before ORT first touches Vulkan), so the
 * webgpu fallback is checked even where lavapipe is installed and WebGPU would work.
 *
 * WebGPU (`POLYRAY_TEST_WEBGPU=1`; `.ci/run` sets it when it could install Mesa >= 23 from
 * bookworm-backports, 0 otherwise): the fp16 models (text-bert-synthetic-fp16, image-mobilenet-fp16) run
 * on the webgpu provider through Mesa's software Vulkan driver lavapipe, and must report `webgpu` and agree
 * with their fp32 models on CPU. `executionProvider: webgpu` only says the WebGPU session was created: ORT
 * still puts nodes the EP has no kernel for (and small shape nodes it prefers on CPU) on the CPU EP. So
 * image-mobilenet-fp16 is also opened with CPU fallback disabled, which ORT refuses unless every node is on
 * WebGPU (all 74 are, measured; text-bert-synthetic-fp16 keeps 5 shape/mask nodes on CPU by ORT's choice,
 * so it is not checked that way). Bookworm's own
 * Mesa 22.3 is rejected by Dawn. That service runs as a child process (`src/main.ts`, the `npm start`
 * entry) with lavapipe as its only driver, since this process hides all drivers for the fallback suite;
 * a crash in Dawn or lavapipe then fails this test instead of killing the test runner. With the variable
 * set the test fails, never skips, when WebGPU does not work; under `CI=true` the variable must be set
 * (0 or 1), so that CI never drops the WebGPU check without saying so.
 *
 * `POLYRAY_TEST_GPU=1` skips the fallback suite on a machine where cuda/webgpu really work.
 */

import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';

import { loadConfig } from '../src/config/index.ts';
import { createLogger } from '../src/log.ts';
import { BERT_FP16_MODEL, BERT_MODELS } from '../src/models/bert.ts';
import { IMAGE_FP16_MODEL, IMAGE_MODEL } from '../src/models/mobilenet.ts';
import { patternImage } from './helpers/images.ts';
import { cosine, MODELS_DIR, norm, startPolyray, type TestServer } from './helpers/polyray.ts';

const MODELS = ['text-glove', BERT_FP16_MODEL];
const ON_GPU_MACHINE = process.env['POLYRAY_TEST_GPU'] === '1';
const WEBGPU_SETTING = process.env['POLYRAY_TEST_WEBGPU'];
const WEBGPU = WEBGPU_SETTING === '1';
const IN_CI = process.env['CI'] === 'true';
const ICD_DIR = '/usr/share/vulkan/icd.d';
/** VK_DRIVER_FILES is the loader's current name (>= 1.3.207); VK_ICD_FILENAMES the older one, still read. */
const VK_DRIVER_VARS = ['VK_DRIVER_FILES', 'VK_ICD_FILENAMES'] as const;
const USER_VK = Object.fromEntries(VK_DRIVER_VARS.map((k) => [k, process.env[k]]));

if (!ON_GPU_MACHINE) {
  const missing = path.join(MODELS_DIR, '.no-vulkan-driver.json');
  for (const k of VK_DRIVER_VARS) process.env[k] = missing;
  delete process.env['VK_ADD_DRIVER_FILES'];
}

const EMBED_ONE = 'query($m: String!, $t: String!) { embed(model: $m, inputs: [{ text: $t }]) { vector } }';

interface LogLine {
  level: number;
  msg: string;
  model?: string;
  provider?: string;
  reason?: string;
  maxTokensPerBatch?: number;
}

describe('execution providers', () => {
  test('POLYRAY_PROVIDERS parses the provider list in order and refuses unknown names', () => {
    const base = { NODE_ENV: 'test', POLYRAY_MODELS_DIR: MODELS_DIR };
    assert.deepEqual(loadConfig({ ...base, POLYRAY_PROVIDERS: 'cuda,cpu' }).inference.providers, ['cuda', 'cpu']);
    assert.deepEqual(loadConfig({ ...base, POLYRAY_PROVIDERS: 'webgpu, cpu' }).inference.providers, ['webgpu', 'cpu']);
    assert.deepEqual(loadConfig(base).inference.providers, ['cpu']);
    assert.throws(() => loadConfig({ ...base, POLYRAY_PROVIDERS: 'tensorrt,cpu' }), /POLYRAY_PROVIDERS/);
  });

  describe('cuda and webgpu unavailable: the service falls back to cpu', {
    skip: ON_GPU_MACHINE ? 'POLYRAY_TEST_GPU=1: a GPU provider is expected to work here' : false,
  }, () => {
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
      assert.deepEqual(r.data!.models.map((m) => [m.name, m.state, m.executionProvider]).sort(), MODELS.map((n) => [n, 'READY', 'cpu']).sort());
    });

    test('one warning per failed provider and model, with the reason', () => {
      const warnings = lines.filter((l) => l.level === 40 && l.msg === 'execution provider unavailable, falling back');
      assert.deepEqual(warnings.map((w) => `${w.model}:${w.provider}`).sort(), MODELS.flatMap((m) => [`${m}:cuda`, `${m}:webgpu`]).sort());
      for (const w of warnings) {
        assert.ok(w.reason && w.reason.length > 0, 'a reason is logged');
        if (w.provider === 'webgpu') assert.match(w.reason, /adapter|Vulkan|backend/i);
        if (w.provider === 'cuda') assert.match(w.reason, /cuda|shared library|backend/i);
      }
      assert.deepEqual(
        lines.filter((l) => l.level >= 50),
        [],
        'no errors logged',
      );
    });

    test('embedding works on the fallback provider (fp16 model included)', async () => {
      for (const model of MODELS) {
        const r = await t.gql<{ embed: { vector: number[] }[] }>(EMBED_ONE, { m: model, t: 'The cat sat on the mat.' });
        assert.equal(r.errors, undefined, JSON.stringify(r.errors));
        assert.ok(Math.abs(norm(r.data!.embed[0]!.vector) - 1) < 1e-3, model);
      }
    });
  });

  test('CI decides whether WebGPU is tested', { skip: IN_CI ? false : 'not CI' }, () => {
    assert.ok(
      WEBGPU_SETTING === '0' || WEBGPU_SETTING === '1',
      `CI=true but POLYRAY_TEST_WEBGPU is ${JSON.stringify(WEBGPU_SETTING)}: .ci/run sets 1 when lavapipe (Mesa >= 23) is installed, 0 when it is not`,
    );
  });

  describe('webgpu on lavapipe: the fp16 models run on webgpu', {
    skip: WEBGPU ? false : `POLYRAY_TEST_WEBGPU is ${WEBGPU_SETTING ?? 'unset'}; 1 runs it (needs lavapipe from Mesa >= 23, see .ci/run)`,
  }, () => {
    const FP16_MODELS = [BERT_FP16_MODEL, IMAGE_FP16_MODEL];
    let gpu: ChildService;
    let cpu: TestServer;
    before(async () => {
      // fp16 on webgpu in a child process; the fp32 models on CPU, in this process, as the reference.
      [gpu, cpu] = await Promise.all([
        startChildService({
          POLYRAY_PROVIDERS: 'webgpu,cpu',
          POLYRAY_SERVE_MODELS: FP16_MODELS.join(','),
          ...lavapipeEnv(),
        }),
        startPolyray({ inference: { providers: ['cpu'], workers: 1 }, models: { serve: [BERT_MODELS.plain, IMAGE_MODEL] } }),
      ]);
    });
    after(async () => {
      await Promise.all([gpu?.stop(), cpu?.stop()]);
    });

    test('Query.models reports webgpu and the log has no fallback for the fp16 models', async () => {
      const r = await gpu.gql<{ models: { name: string; state: string; executionProvider: string | null }[] }>('{ models { name state executionProvider } }');
      assert.equal(r.errors, undefined, JSON.stringify(r.errors));
      assert.deepEqual(
        r.data!.models.map((m) => [m.name, m.state, m.executionProvider]).sort(),
        FP16_MODELS.map((n) => [n, 'READY', 'webgpu']).sort(),
        gpu.stderrTail(),
      );
      const fallbacks = gpu.logs.filter((l) => l.msg === 'execution provider unavailable, falling back');
      assert.deepEqual(fallbacks, []);
      for (const model of FP16_MODELS)
        assert.ok(
          gpu.logs.some((l) => l.msg === 'model ready' && l.model === model && l.provider === 'webgpu'),
          model,
        );
      // On an accelerator the batcher takes large batches (POLYRAY_BATCH_MAX_TOKENS_ACCELERATOR), not the CPU bound.
      assert.ok(
        gpu.logs.some((l) => l.msg === 'model ready' && l.model === BERT_FP16_MODEL && l.maxTokensPerBatch === 16384),
        JSON.stringify(gpu.logs.filter((l) => l.msg === 'model ready')),
      );
    });

    test('a padded batch on webgpu (fp16) agrees with fp32 on cpu', async () => {
      const texts = ['The cat sat on the mat.', 'Stock markets fell sharply today after the central bank raised interest rates again.', 'Hi'];
      const query = 'query($m: String!, $i: [EmbedInput!]!) { embed(model: $m, inputs: $i) { vector } }';
      const inputs = texts.map((text) => ({ text }));
      const [a, b] = await Promise.all([
        gpu.gql<EmbedResult>(query, { m: BERT_FP16_MODEL, i: inputs }),
        cpu.gql<EmbedResult>(query, { m: BERT_MODELS.plain, i: inputs }),
      ]);
      assert.equal(a.errors, undefined, JSON.stringify(a.errors));
      assert.equal(b.errors, undefined, JSON.stringify(b.errors));
      texts.forEach((text, i) => {
        const va = a.data!.embed[i]!.vector;
        const c = cosine(va, b.data!.embed[i]!.vector);
        console.log(`webgpu fp16 vs cpu fp32 "${text.slice(0, 24)}": cosine ${c.toFixed(7)}`);
        assert.ok(Math.abs(norm(va) - 1) < 1e-3, 'unit vector');
        assert.ok(c >= 0.999, `cosine ${c} for "${text}"`);
      });
    });

    test('images on webgpu (image-mobilenet-fp16) agree with image-mobilenet on cpu', async () => {
      // One batch of three (lavapipe runs MobileNet at ~0.4 s per image on 2 cores, plus shader compilation).
      // Measured cosine ≥ 0.99988 (float16 compute; on the CPU EP the same graph gives ≥ 0.99998, because ORT
      // computes it in float32 there); asserted ≥ 0.999, ten times the measured error.
      const images = await Promise.all([patternImage(200, 160, 1, 'png'), patternImage(320, 240, 7, 'jpeg'), patternImage(224, 224, 42, 'webp')]);
      const query = 'query($m: String!, $i: [EmbedInput!]!) { embed(model: $m, inputs: $i) { vector } }';
      const inputs = images.map((b) => ({ imageBase64: b.toString('base64') }));
      const [a, b] = await Promise.all([
        gpu.gql<EmbedResult>(query, { m: IMAGE_FP16_MODEL, i: inputs }),
        cpu.gql<EmbedResult>(query, { m: IMAGE_MODEL, i: inputs }),
      ]);
      assert.equal(a.errors, undefined, JSON.stringify(a.errors));
      assert.equal(b.errors, undefined, JSON.stringify(b.errors));
      images.forEach((_, i) => {
        const va = a.data!.embed[i]!.vector;
        const c = cosine(va, b.data!.embed[i]!.vector);
        console.log(`webgpu ${IMAGE_FP16_MODEL} vs cpu ${IMAGE_MODEL}, image ${i}: cosine ${c.toFixed(7)}`);
        assert.ok(Math.abs(norm(va) - 1) < 1e-3, 'unit vector');
        assert.ok(c >= 0.999, `cosine ${c} for image ${i}`);
      });
    });

    test('every node of image-mobilenet-fp16 is placed on webgpu (ORT refuses the session otherwise)', async () => {
      const script =
        "import * as ort from 'onnxruntime-node';" +
        "await ort.InferenceSession.create(process.argv[1], { executionProviders: ['webgpu'], graphOptimizationLevel: 'all', extra: { session: { disable_cpu_ep_fallback: '1' } } });" +
        "console.log('all nodes on webgpu');";
      const r = await new Promise<{ error: Error | null; stdout: string; stderr: string }>((resolve) =>
        execFile(
          process.execPath,
          ['--input-type=module', '-e', script, path.join(MODELS_DIR, IMAGE_FP16_MODEL, 'model.onnx')],
          { env: { ...childBaseEnv(), ...lavapipeEnv() }, timeout: 120_000 },
          (error, stdout, stderr) => resolve({ error, stdout, stderr }),
        ),
      );
      assert.equal(r.error, null, r.stderr.slice(-2000));
      assert.match(r.stdout, /all nodes on webgpu/);
    });
  });
});

type EmbedResult = { embed: { vector: number[] }[] };

/** The lavapipe ICD made the only Vulkan driver the child sees, unless the caller chose drivers itself. */
function lavapipeEnv(): Record<string, string> {
  const chosen = VK_DRIVER_VARS.filter((k) => USER_VK[k]);
  if (chosen.length > 0) return Object.fromEntries(chosen.map((k) => [k, USER_VK[k]!]));
  let icd: string | undefined;
  try {
    icd = readdirSync(ICD_DIR).find((f) => /^lvp_icd.*\.json$/.test(f));
  } catch {
    icd = undefined;
  }
  assert.ok(icd, `POLYRAY_TEST_WEBGPU=1 but no lavapipe ICD in ${ICD_DIR}: apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1 (see .ci/run)`);
  return Object.fromEntries(VK_DRIVER_VARS.map((k) => [k, path.join(ICD_DIR, icd)]));
}

interface ChildService {
  logs: LogLine[];
  gql<T>(query: string, variables?: Record<string, unknown>): Promise<{ data?: T; errors?: unknown[] }>;
  stderrTail(): string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** This process's environment without Polyray, Redis and Vulkan settings (this process hides the drivers). */
function childBaseEnv(): Record<string, string | undefined> {
  return Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^(POLYRAY_|REDIS_|VK_)/.test(k) && k !== 'LOG_LEVEL' && k !== 'PORT' && k !== 'HOST'),
  );
}

/**
 * `npm start`'s entry as a child process: one worker, memory cache only (no Redis: a vector cached by an
 * earlier CPU run must not stand in for a WebGPU one), JSON logs on stdout. Resolves on its `ready` log.
 */
async function startChildService(env: Record<string, string>, readyTimeoutMs = 180_000): Promise<ChildService> {
  const port = await freePort();
  const base = childBaseEnv();
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: {
      ...base,
      NODE_ENV: 'test',
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'info',
      POLYRAY_MODELS_DIR: MODELS_DIR,
      POLYRAY_WORKERS: '1',
      POLYRAY_BUILD_MISSING: 'false',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  let stderr = '';
  const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(`exit code ${code}, signal ${signal}`)));
  const ready = new Promise<void>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line.startsWith('{')) continue;
        const l = JSON.parse(line) as LogLine;
        logs.push(l);
        if (l.msg === 'ready') resolve();
        if (l.level >= 50) reject(new Error(`service logged an error: ${line}`));
      }
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString('utf8')).slice(-4000);
    });
    void exited.then((how) => reject(new Error(`service ended before ready (${how}); stderr:\n${stderr}`)));
  });
  let timer: NodeJS.Timeout | undefined;
  const stop = async (): Promise<void> => {
    clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const kill = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(kill);
    }
  };
  try {
    await Promise.race([
      ready,
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`service not ready after ${readyTimeoutMs} ms`)), readyTimeoutMs))),
    ]);
  } catch (e) {
    await stop();
    throw e;
  } finally {
    clearTimeout(timer);
  }
  return {
    logs,
    stderrTail: () => stderr,
    gql: async <T>(query: string, variables: Record<string, unknown> = {}) => {
      const res = await fetch(`http://127.0.0.1:${port}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ query, variables }),
      });
      return (await res.json()) as { data?: T; errors?: unknown[] };
    },
    stop,
  };
}
