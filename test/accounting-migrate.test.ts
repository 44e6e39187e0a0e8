/**
 * `polyray accounting migrate-books`: v1 usage books (`<old>usage:<id>`) move into the current layout
 * exactly once, through the real CLI against the real Redis on 127.0.0.1:6379, under unique prefixes.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { AccountingKeys } from '../src/accounting/keys.ts';
import { migratedMarker } from '../src/accounting/migrate.ts';
import { keySlot } from '../src/redis/slots.ts';

const execFileAsync = promisify(execFile);
const URL = 'redis://127.0.0.1:6379';
const tag = randomBytes(4).toString('hex');
const OLD = `polyray-test-migrate:${tag}:v1:`;
const NEW = `polyray-test-migrate:${tag}:v2:`;
const keys = new AccountingKeys(NEW);
const redis = new Redis(URL);

async function cli(...args: string[]): Promise<{ lines: Record<string, unknown>[]; code: number; stderr: string }> {
  const env = { ...process.env, POLYRAY_QUOTA_REDIS_URL: URL, POLYRAY_QUOTA_KEY_PREFIX: NEW, LOG_LEVEL: 'silent' };
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, ['--import', 'tsx', 'bin/polyray.ts', 'accounting', ...args], { env, timeout: 60_000 });
    return {
      lines: stdout
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
      code: 0,
      stderr,
    };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { lines: [], code: err.code ?? 1, stderr: err.stderr ?? '' };
  }
}

const numbers = (h: Record<string, string>): Record<string, number> => Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Number(v)]));

describe('accounting migrate-books (v1 → current key layout)', () => {
  after(async () => {
    for (const prefix of [OLD, NEW]) {
      let cursor = '0';
      do {
        const [next, found] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
        cursor = next;
        if (found.length) await redis.del(...found);
      } while (cursor !== '0');
    }
    await redis.quit();
  });

  test('adds every v1 figure to the current books once, removes the v1 keys, and is safe to rerun', async () => {
    // v1 books: alice and bob with figures, ghost listed without a hash.
    await redis.sadd(`${OLD}usage:clients`, 'alice', 'bob', 'ghost');
    await redis.hset(`${OLD}usage:alice`, {
      'text-glove|COMPUTED|tokens': '120',
      'text-glove|COMPUTED|cost': '120',
      'text-glove|MEMORY|items': '7',
      'text-glove|MEMORY|cost': '0.07',
    });
    await redis.hset(`${OLD}usage:bob`, { 'image-mobilenet|COMPUTED|items': '3', 'image-mobilenet|COMPUTED|cost': '451.5' });
    // alice already has books in the new layout (a replica ran the new version meanwhile).
    await redis.hset(keys.usage('alice'), { 'text-glove|COMPUTED|tokens': '30', 'text-glove|COMPUTED|cost': '30' });

    const first = await cli('migrate-books', '--from-prefix', OLD);
    assert.equal(first.code, 0, first.stderr);
    const byClient = Object.fromEntries(first.lines.filter((l) => 'clientId' in l).map((l) => [l['clientId'], l['outcome']]));
    assert.deepEqual(byClient, { alice: 'moved', bob: 'moved', ghost: 'empty' });
    assert.deepEqual(first.lines.at(-1), { summary: { clients: 3, moved: 2, already: 0, empty: 1, fields: 6 } });

    assert.deepEqual(numbers(await redis.hgetall(keys.usage('alice'))), {
      'text-glove|COMPUTED|tokens': 150,
      'text-glove|COMPUTED|cost': 150,
      'text-glove|MEMORY|items': 7,
      'text-glove|MEMORY|cost': 0.07,
    });
    assert.deepEqual(numbers(await redis.hgetall(keys.usage('bob'))), { 'image-mobilenet|COMPUTED|items': 3, 'image-mobilenet|COMPUTED|cost': 451.5 });
    assert.deepEqual((await redis.smembers(keys.clients)).sort(), ['alice', 'bob']);
    assert.equal(await redis.exists(`${OLD}usage:alice`, `${OLD}usage:bob`, `${OLD}usage:clients`), 0, 'v1 keys are gone');
    assert.equal(await redis.exists(migratedMarker(keys, 'alice')), 1);

    // Rerun: nothing left to move, nothing counted twice.
    const again = await cli('migrate-books', '--from-prefix', OLD);
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(again.lines.at(-1), { summary: { clients: 0, moved: 0, already: 0, empty: 0, fields: 0 } });
    assert.equal(Number(await redis.hget(keys.usage('alice'), 'text-glove|COMPUTED|cost')), 150);
  });

  test('a run interrupted after adding the figures (marker set, v1 key still there) only cleans up', async () => {
    await redis.sadd(`${OLD}usage:clients`, 'carol');
    await redis.hset(`${OLD}usage:carol`, { 'text-glove|COMPUTED|cost': '40' });
    await redis.hset(keys.usage('carol'), { 'text-glove|COMPUTED|cost': '40' });
    await redis.set(migratedMarker(keys, 'carol'), 'earlier run');
    const r = await cli('migrate-books', '--from-prefix', OLD);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.lines[0], { clientId: 'carol', outcome: 'already', fields: 1 });
    assert.equal(Number(await redis.hget(keys.usage('carol'), 'text-glove|COMPUTED|cost')), 40, 'not added a second time');
    assert.equal(await redis.exists(`${OLD}usage:carol`), 0);
  });

  test('refuses to migrate a prefix into itself, and names what is missing', async () => {
    const same = await cli('migrate-books', '--from-prefix', NEW);
    assert.equal(same.code, 1);
    assert.match(same.stderr, /must differ from the current prefix/);
    const unknown = await cli('nonsense');
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /migrate-books/);
  });

  test('a marker key shares the hash slot of the client’s books (one script may touch both on a Cluster)', () => {
    for (const id of ['dave', 'a:b', 'x}y', 'ünï']) assert.equal(keySlot(migratedMarker(keys, id)), keySlot(keys.usage(id)), id);
  });
});
