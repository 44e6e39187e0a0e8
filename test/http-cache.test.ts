/**
 * Cache-Control for the caches in front of Polyray (issue 25): answers made only of `Post` entities or
 * `embed` results may be kept (`public`, or `private` for a client with its own cache scope); everything
 * else — `models`, `usage`, mutations, errors, any `source` selection — is `no-store`. Through the real
 * server, the compiled `_entities` path included.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { addClient, readClientsFileSync } from '../src/accounting/clients.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

describe('Cache-Control on GraphQL answers', () => {
  let t: TestServer;
  let dir: string;
  const keys: Record<string, string> = {};
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-http-cache-'));
    const file = path.join(dir, 'clients.json');
    keys['shared'] = (await addClient(file, { id: 'shared' })).key;
    keys['admin'] = (await addClient(file, { id: 'admin', role: 'admin' })).key;
    keys['own'] = (await addClient(file, { id: 'own' })).key;
    // cacheScope is a clients-file field: set it on the written file.
    const data = readClientsFileSync(file);
    data.clients.find((c) => c.id === 'own')!.cacheScope = 'private';
    await writeFile(file, JSON.stringify(data));
    t = await startPolyray({ accounting: { clientsFile: file } } as never);
  });
  after(async () => {
    await t?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const cacheControl = async (query: string, variables: Record<string, unknown> = {}, who = 'shared'): Promise<string | null> => {
    const res = await fetch(`${t.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${keys[who]}` },
      body: JSON.stringify({ query, variables }),
    });
    await res.arrayBuffer();
    return res.headers.get('cache-control');
  };
  const r = [{ __typename: 'Post', id: 'p1', text: 'the cat sat' }];

  test('embeddings may be kept: entities (the compiled path) and embed, public for the shared cache', async () => {
    const served = t.server.entityFastPath.served;
    assert.equal(
      await cacheControl('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "text-glove") { base64 } } } }', { r }),
      'public, max-age=3600',
    );
    assert.equal(t.server.entityFastPath.served, served + 1, 'through the compiled path');
    assert.equal(
      await cacheControl('query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { id embedding { vector dimensions } } } }', { r }),
      'public, max-age=3600',
    );
    assert.equal(await cacheControl('{ embed(model: "text-glove", inputs: [{ text: "a" }]) { vector model dimensions } }'), 'public, max-age=3600');
  });

  test('a client with its own cache scope: private', async () => {
    assert.equal(await cacheControl('{ embed(model: "text-glove", inputs: [{ text: "a" }]) { vector } }', {}, 'own'), 'private, max-age=3600');
  });

  test('everything else is no-store', async () => {
    for (const [query, vars, who] of [
      ['{ models { name } }', {}, 'shared'],
      ['{ usage { totals { cost } } }', {}, 'shared'],
      ['{ embed(model: "text-glove", inputs: [{ text: "a" }]) { vector } models { name } }', {}, 'shared'],
      ['{ embed(model: "text-glove", inputs: [{ text: "a" }]) { vector source } }', {}, 'shared'],
      ['query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding { base64 source } } } }', { r }, 'shared'],
      [
        'query($r: [_Any!]!) { _entities(representations: $r) { ...P } } fragment P on Post { embedding { ...E } } fragment E on Embedding { source }',
        { r },
        'shared',
      ],
      ['{ embed(model: "no-such-model", inputs: [{ text: "a" }]) { vector } }', {}, 'shared'],
      ['{ embed(model: "text-glove", inputs: [{ text: "a" }], dimensions: 100000) { vector } }', {}, 'shared'],
      ['mutation { reloadModels { added } }', {}, 'admin'],
      ['{ cachePolicy { computedAt } }', {}, 'admin'],
    ] as const) {
      assert.equal(await cacheControl(query, vars as Record<string, unknown>, who), 'no-store', query);
    }
  });
});
