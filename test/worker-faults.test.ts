/**
 * Inference workers that die (issue 28), on a real server with real workers: a killed worker is replaced
 * and the model keeps serving; a replacement that cannot load the model (its file removed) makes the model
 * FAILED with the reason, its callers get MODEL_NOT_READY and `/readyz` answers 503 — instead of READY
 * while every batch fails. The model runs from a copy of its folder, so the test can remove the file.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { recordFigures } from './helpers/faults.ts';
import { MODELS_DIR, startPolyray, type TestServer } from './helpers/polyray.ts';

const MODEL = 'text-bert-synthetic';

describe('inference workers that die', () => {
  let dir: string;
  let t: TestServer;
  const embed = (text: string) =>
    t.gql<{ embed: { vector: number[] }[] }>(`query($t: String!) { embed(model: "${MODEL}", inputs: [{ text: $t }]) { vector } }`, { t: text });
  const readyz = async () => (await fetch(`${t.url}/readyz`)).status;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-workers-'));
    await cp(path.join(MODELS_DIR, MODEL), path.join(dir, MODEL), { recursive: true });
    t = await startPolyray({ models: { dir, buildMissing: false, serve: [MODEL], defaultPostModel: MODEL } });
  });
  after(async () => {
    await t?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a killed worker is replaced; the model keeps serving', async () => {
    assert.equal((await embed('before the kill')).errors, undefined);
    const failures = t.server.pool.stats().failures;
    await t.server.pool.kill(0);
    let after: Awaited<ReturnType<typeof embed>> | undefined;
    for (let i = 0; i < 100; i++) {
      after = await embed(`after the kill ${i}`);
      if (after.errors === undefined) break;
      await sleep(50);
    }
    assert.equal(after?.errors, undefined, JSON.stringify(after?.errors));
    assert.equal(t.server.pool.stats().failures - failures, 1);
    assert.equal(await readyz(), 200);
  });

  test('a replacement that cannot load the model: FAILED with the reason, MODEL_NOT_READY, /readyz 503 within 2 s', async () => {
    await rm(path.join(dir, MODEL, 'model.onnx'));
    await t.server.pool.kill(0);
    const started = performance.now();
    while ((await readyz()) !== 503 && performance.now() - started < 5000) await sleep(25);
    const took = performance.now() - started;
    assert.equal(await readyz(), 503);
    assert.ok(took < 2000, `/readyz 503 after ${took.toFixed(0)} ms`);
    await recordFigures('worker-cannot-load', { readyz503AfterMs: Math.round(took) });
    const models = await t.gql<{ models: { name: string; state: string; error: string | null }[] }>('{ models { name state error } }');
    const m = models.data!.models.find((x) => x.name === MODEL)!;
    assert.equal(m.state, 'FAILED');
    assert.match(m.error ?? '', /replacement inference worker could not load it/);
    const r = await embed('after the file is gone');
    assert.equal(r.errors?.[0]?.extensions?.['code'], 'MODEL_NOT_READY');
  });
});
