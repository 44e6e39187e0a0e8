/**
 * The `polyray` command line as a user meets it: help and version on every command (stdout, exit 0), an
 * "unknown command" message, `models list`, errors that name the flag, and `serve --help` that starts no
 * server. Runs the real CLI (bin/polyray.ts) in a child process.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { composeServices } from '@apollo/composition';
import { parse } from 'graphql';
import { polyrayCli } from './helpers/cli.ts';
import { startPolyray } from './helpers/polyray.ts';
import { POSTS_SDL } from './helpers/posts-subgraph.ts';

const VERSION = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;

describe('polyray CLI', () => {
  test('help and version: to stdout, exit 0, for the whole CLI and each command', async () => {
    for (const args of [['--help'], ['help'], ['-h'], []]) {
      const r = await polyrayCli(args, {});
      assert.equal(r.code, 0, args.join(' '));
      assert.match(r.out, /^usage: polyray <command>/, args.join(' '));
      assert.match(r.out, /models list/);
    }
    for (const args of [['--version'], ['version'], ['models', 'build', '--version']]) {
      const r = await polyrayCli(args, {});
      assert.equal(r.code, 0);
      assert.equal(r.out.trim(), VERSION, args.join(' '));
    }
    const models = await polyrayCli(['models', '--help'], {});
    assert.equal(models.code, 0);
    for (const sub of ['build', 'pull', 'add', 'list']) assert.match(models.out, new RegExp(`^ {2}models ${sub}`, 'm'));
    const report = await polyrayCli(['usage', 'report', '--help'], {});
    assert.equal(report.code, 0);
    assert.match(report.out, /usage report --from DATE --to DATE/);
    assert.equal((await polyrayCli(['help', 'clients', 'add'], {})).out.split('\n')[1]?.trim().startsWith('clients add'), true);
  });

  test('serve --help prints its usage and starts no server', async () => {
    const started = performance.now();
    const r = await polyrayCli(['serve', '--help'], { PORT: '1' });
    assert.equal(r.code, 0);
    assert.match(r.out, /serve {2,}start the service/);
    assert.doesNotMatch(r.err, /listening/);
    assert.ok(performance.now() - started < 15_000, 'returned at once');
  });

  test('unknown commands and bad flags are named', async () => {
    const unknown = await polyrayCli(['frobnicate'], {});
    assert.equal(unknown.code, 2);
    assert.match(unknown.err, /unknown command "frobnicate"/);
    const sub = await polyrayCli(['models', 'frobnicate'], {});
    assert.equal(sub.code, 2);
    assert.match(sub.err, /unknown command "models frobnicate"/);
    const flag = await polyrayCli(['models', 'list', '--colour'], {});
    assert.notEqual(flag.code, 0);
    assert.match(flag.err, /--colour/);
    const rate = await polyrayCli(['clients', 'add', '--id', 'x', '--rate', 'fast', '--file', '/nonexistent-dir-for-polyray/c.json'], {});
    assert.notEqual(rate.code, 0);
    assert.match(rate.err, /--rate must be a number > 0, received "fast"/);
  });

  test('schema print: the one-file subgraph SDL, as the server serves it, composing with a posts subgraph', async () => {
    // The @cost weights follow the served models (src/resolvers/demand-control.ts): print for the ones the test server serves.
    const r = await polyrayCli(['schema', 'print'], { POLYRAY_SERVE_MODELS: 'text-glove,image-mobilenet,head-nsfw' });
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /extend schema\s+@link\(url: "https:\/\/specs\.apollo\.dev\/federation\/v2\.\d+"/);
    assert.match(r.out, /type Post\s+@key\(fields: "id"\)/);
    const t = await startPolyray();
    try {
      const served = await t.gql<{ _service: { sdl: string } }>('{ _service { sdl } }');
      assert.equal(r.out.trim(), served.data!._service.sdl.trim(), 'what rover publishes is what the subgraph serves');
    } finally {
      await t.stop();
    }
    assert.match(r.out, /\): \[Embedding!\]! @listSize\(assumedSize: 2048,/, 'embed is sized by POLYRAY_MAX_INPUTS (default 2048)');
    const small = await polyrayCli(['schema', 'print'], { POLYRAY_MAX_INPUTS: '100', POLYRAY_QUEUE_MAX_ITEMS_PER_CLIENT: '100' });
    assert.match(small.out, /\): \[Embedding!\]! @listSize\(assumedSize: 100,/, small.err);
    const composed = composeServices([
      { name: 'posts', typeDefs: parse(POSTS_SDL), url: 'http://127.0.0.1:1/graphql' },
      { name: 'polyray', typeDefs: parse(r.out), url: 'http://127.0.0.1:2/graphql' },
    ]);
    assert.equal(composed.errors, undefined, composed.errors?.map((e) => e.message).join('\n'));
  });

  test('models list shows what the models directory holds', async () => {
    const r = await polyrayCli(['models', 'list', '--json'], {});
    assert.equal(r.code, 0, r.err);
    const list = JSON.parse(r.out) as { name: string; dimensions: number; modality: string }[];
    const glove = list.find((m) => m.name === 'text-glove');
    assert.deepEqual([glove?.dimensions, glove?.modality], [100, 'text']);
    const table = await polyrayCli(['models', 'list'], {});
    assert.match(table.out, /^name\s+version\s+modality\s+dimensions/);
    const empty = await polyrayCli(['models', 'list', '--dir', '/nonexistent-dir-for-polyray'], {});
    assert.match(empty.out, /no models in/);
  });
});
