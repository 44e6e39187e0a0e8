/**
 * The compiled build (issue 25): `npm run build` compiles src/ to dist/, the service runs from it as plain
 * JavaScript (`node dist/main.js`, no TypeScript loader; its worker process runs compiled code too), the
 * installed command (bin/polyray.mjs) runs dist/cli.js, and a change under src/ makes the build stale, so
 * `npm start` rebuilds before it serves.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { freePort } from './helpers/redis-server.ts';

const run = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('compiled build', () => {
  before(async () => {
    await run(process.execPath, ['scripts/build.mjs'], { timeout: 300_000 });
  });

  test('the service runs from dist/ with plain node, its workers on compiled code', { timeout: 120_000 }, async () => {
    const port = await freePort();
    const child = spawn(process.execPath, ['dist/main.js'], {
      env: {
        PATH: process.env['PATH'] ?? '',
        HOME: process.env['HOME'] ?? '',
        PORT: String(port),
        HOST: '127.0.0.1',
        LOG_LEVEL: 'warn',
        POLYRAY_SERVE_MODELS: 'text-glove',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let log = '';
    child.stderr.on('data', (b: Buffer) => {
      log += b.toString();
    });
    try {
      const url = `http://127.0.0.1:${port}`;
      for (let i = 0; ; i++) {
        assert.ok(i < 600 && child.exitCode === null, `ready within a minute: ${log.slice(-2000)}`);
        const ok = await fetch(`${url}/readyz`).then(
          (r) => r.status === 200,
          () => false,
        );
        if (ok) break;
        await sleep(100);
      }
      const res = await fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ query: '{ embed(model: "text-glove", inputs: [{ text: "compiled and served" }]) { dimensions source } }' }),
      });
      assert.deepEqual(await res.json().then((b) => (b as { data: unknown }).data), { embed: [{ dimensions: 100, source: 'COMPUTED' }] });
      // The worker process runs dist/runtime/worker-entry.mjs, which loads the compiled worker.
      const { stdout } = await run('ps', ['-o', 'args=', '--ppid', String(child.pid)]);
      assert.match(stdout, /dist\/runtime\/worker-entry\.mjs/);
      const cmdline = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8');
      assert.doesNotMatch(cmdline, /tsx/, 'no TypeScript loader in the service process');
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  });

  test('bin/polyray.mjs runs the compiled CLI', async () => {
    const { stdout } = await run(process.execPath, ['bin/polyray.mjs', '--version']);
    assert.equal(stdout.trim(), (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version);
    const list = await run(process.execPath, ['bin/polyray.mjs', 'models', 'list', '--json']);
    assert.ok((JSON.parse(list.stdout) as { name: string }[]).some((m) => m.name === 'text-glove'));
  });

  test('a change under src/ makes the build stale', async () => {
    const { sourceHash } = (await import('../scripts/ensure-build.mjs')) as { sourceHash: (root: string) => string };
    const stamp = readFileSync('dist/.build-stamp', 'utf8').trim();
    assert.equal(sourceHash(process.cwd()), stamp, 'fresh after the build');
    // A new file under src/ (removed again): no real source is touched, so nothing else sees a change.
    const probe = 'src/.build-stamp-probe';
    try {
      writeFileSync(probe, 'x');
      assert.notEqual(sourceHash(process.cwd()), stamp, 'stale once src/ changed');
    } finally {
      rmSync(probe, { force: true });
    }
    assert.equal(sourceHash(process.cwd()), stamp);
  });
});
