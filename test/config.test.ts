/**
 * Configuration as a schema (src/config): precedence, validation of every source (overrides included),
 * unknown names with a suggestion, and the README tables generated from the declarations.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { configTables, renderReadme } from '../src/config/docs.ts';
import { type DeepPartial, loadConfig, type PolyrayConfig } from '../src/config/index.ts';
import { closest, editDistance } from '../src/config/suggest.ts';

const dir = mkdtempSync(path.join(tmpdir(), 'polyray-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Writes a config file and returns the env that names it. */
function withFile(name: string, content: unknown): { POLYRAY_CONFIG: string } {
  const file = path.join(dir, name);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return { POLYRAY_CONFIG: file };
}

/** The TypeError loadConfig throws, for assertions on its message. */
function failure(env: Record<string, string>, overrides: DeepPartial<PolyrayConfig> = {}): TypeError {
  try {
    loadConfig(env, overrides);
  } catch (e) {
    assert.ok(e instanceof TypeError, `expected a TypeError, got ${String(e)}`);
    return e;
  }
  assert.fail(`loadConfig(${JSON.stringify(env)}, ${JSON.stringify(overrides)}) did not throw`);
}

describe('precedence: environment > file > default; overrides on top', () => {
  test('each source wins over the next', () => {
    const file = withFile('precedence.json', { port: 5000, workers: 2, serveModels: ['a', 'b'] });
    const c = loadConfig({ ...file, PORT: '6000' });
    assert.equal(c.http.port, 6000, 'env beats file');
    assert.equal(c.inference.workers, 2, 'file beats default');
    assert.deepEqual(c.models.serve, ['a', 'b'], 'file lists read like env lists');
    assert.equal(c.http.host, '0.0.0.0', 'default');
    assert.equal(loadConfig({ ...file, PORT: '' }).http.port, 5000, 'an empty variable counts as unset');
    assert.equal(loadConfig({ ...file, PORT: '6000' }, { http: { port: 7000 } }).http.port, 7000, 'overrides beat env');
  });

  test('units: seconds and MiB in env and file, milliseconds and bytes in the config', () => {
    const c = loadConfig({ ...withFile('units.json', { memoryCacheMb: 2 }), POLYRAY_POLICY_INTERVAL_S: '5' });
    assert.equal(c.cache.memory.maxBytes, 2 * 1024 * 1024);
    assert.equal(c.policy.intervalMs, 5000);
  });

  test('defaults computed from other settings follow env and file, not overrides (as before the schema)', () => {
    const standalone = { kind: 'standalone', url: 'redis://127.0.0.1:6379', ttlMs: 1000, readTimeoutMs: 50, encoding: 'float32', keyPrefix: 'k:' } as const;
    assert.equal(loadConfig({}, { cache: { redis: standalone } }).accounting.redis.kind, 'none');
    assert.deepEqual(loadConfig({ REDIS_URL: 'redis://h:1' }).accounting.redis, { kind: 'standalone', url: 'redis://h:1' });
    assert.equal(loadConfig({ REDIS_URL: 'redis://h:1', POLYRAY_REDIS_KEY_PREFIX: 'p:' }).trace.redisStream, 'p:trace');
  });
});

describe('unknown names are errors naming the closest valid one', () => {
  test('a misspelled file key', () => {
    const e = failure(withFile('typo.json', { memryCacheMb: 5 }));
    assert.match(e.message, /Unknown config key "memryCacheMb" in .*typo\.json \(did you mean "memoryCacheMb"\?\)/);
  });

  test('a misspelled POLYRAY_ variable; other variables and the test suite switches are not settings', () => {
    assert.match(failure({ POLYRAY_WORKRS: '2' }).message, /Unknown environment variable POLYRAY_WORKRS \(did you mean POLYRAY_WORKERS\?\)/);
    assert.doesNotThrow(() => loadConfig({ PATH: '/bin', POLYRAY_TEST_GPU: '1', POLYRAY_TEST_WEBGPU: '0' }));
  });

  test('a misspelled override key', () => {
    const e = failure({}, { cache: { memry: {} } } as DeepPartial<PolyrayConfig>);
    assert.match(e.message, /Unknown config key "cache\.memry" in overrides \(did you mean "cache\.memory"\?\)/);
  });

  test('every problem is reported at once', () => {
    const e = failure({ POLYRAY_WORKRS: '2', PORT: 'x', POLYRAY_BATCH_MAX_ITEMS: '0' });
    assert.match(e.message, /3 problems/);
    assert.match(e.message, /POLYRAY_WORKRS/);
    assert.match(e.message, /PORT must be/);
    assert.match(e.message, /POLYRAY_BATCH_MAX_ITEMS must be/);
  });

  test('edit distance', () => {
    assert.equal(editDistance('kitten', 'sitting'), 3);
    assert.equal(editDistance('', 'abc'), 3);
    assert.equal(closest('POLYRAY_workers', ['POLYRAY_WORKERS', 'POLYRAY_WORK']), 'POLYRAY_WORKERS');
  });
});

describe('bad values are TypeErrors naming the setting, the value and what is expected', () => {
  test('from the environment, in the unit of the variable', () => {
    assert.match(failure({ POLYRAY_BATCH_MAX_ITEMS: '0' }).message, /^Configuration POLYRAY_BATCH_MAX_ITEMS must be an integer in \[1, 4096\], received "0"$/);
    assert.match(failure({ POLYRAY_POLICY_INTERVAL_S: '0.5' }).message, /POLYRAY_POLICY_INTERVAL_S must be an integer ≥ 1, received "0.5"/);
    assert.match(failure({ POLYRAY_MEMORY_CACHE_MB: '0' }).message, /POLYRAY_MEMORY_CACHE_MB must be an integer in \[1, 1048576\]/);
    assert.match(failure({ POLYRAY_QUOTA_FAILURE_MODE: 'maybe' }).message, /must be one of share, open, closed, received "maybe"/);
    assert.match(failure({ POLYRAY_BUILD_MISSING: 'perhaps' }).message, /POLYRAY_BUILD_MISSING must be true or false, received "perhaps"/);
    assert.match(failure({ REDIS_CLUSTER_NODES: 'a:1,b' }).message, /REDIS_CLUSTER_NODES entries must look like host:port, received "b"/);
  });

  test('from the file, naming the key and the file', () => {
    const e = failure(withFile('bad.json', { batchMaxItems: 5000 }));
    assert.match(e.message, /key "batchMaxItems" of .*bad\.json must be an integer in \[1, 4096\], received "5000"/);
    assert.match(failure(withFile('array.json', '[1]')).message, /must hold a JSON object/);
    assert.match(failure(withFile('broken.json', '{')).message, /could not be read as JSON/);
  });

  test('overrides are validated too', () => {
    assert.match(failure({}, { batching: { maxItems: 0 } }).message, /override batching\.maxItems must be an integer in \[1, 4096\], received 0/);
    assert.match(
      failure({}, { inference: { providers: ['cpu', 'tpu' as 'cpu'] } }).message,
      /override inference\.providers must be one of cpu, cuda, webgpu, received "tpu"/,
    );
    assert.match(failure({}, { cache: { redis: { kind: 'bogus' } as never } }).message, /override cache\.redis must be one of none, standalone, cluster/);
    assert.match(
      failure({}, { policy: { minTtlMs: 10_000, maxTtlMs: 5000 } }).message,
      /POLYRAY_POLICY_MIN_TTL_S \(10\) must not exceed POLYRAY_POLICY_MAX_TTL_S \(5\)/,
    );
  });

  test('secrets and URL credentials stay out of messages', () => {
    const token = failure({}, { accounting: { metricsToken: 'hunter2' } }).message;
    assert.match(token, /metricsToken must be at least 16 characters, received a value of 7 characters/);
    assert.doesNotMatch(token, /hunter2/);
    assert.doesNotMatch(failure({ REDIS_URL: 'http://user:hunter2@x' }).message, /hunter2/);
  });
});

describe('README', () => {
  const readme = readFileSync('README.md', 'utf8');

  test('its configuration tables are the ones the schema generates (npm run docs:config)', () => {
    assert.equal(renderReadme(readme), readme, 'README.md differs from the schema: run `npm run docs:config`');
  });

  test('every POLYRAY_ variable it mentions is a setting', () => {
    const documented = new Set([...configTables().values()].join('\n').match(/\b(POLYRAY_[A-Z0-9_]+)/g));
    const mentioned = new Set(readme.match(/\bPOLYRAY_[A-Z0-9_]*[A-Z0-9]\b/g));
    for (const name of mentioned) if (!name.startsWith('POLYRAY_TEST_')) assert.ok(documented.has(name), `README mentions ${name}, which is no setting`);
  });
});
