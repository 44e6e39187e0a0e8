import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { composeServices } from '@apollo/composition';
import { ApolloGateway } from '@apollo/gateway';
import { parse, print } from 'graphql';
import { loadTypeDefs } from '../src/resolvers/index.ts';
import { cosine, startPolyray, type TestServer } from './helpers/polyray.ts';
import { POSTS_SDL, startPostsSubgraph, type Post } from './helpers/posts-subgraph.ts';

describe('federation through a real gateway', () => {
  let polyray: TestServer;
  let posts: { url: string; stop: () => Promise<void> };
  let gateway: ApolloServer;
  let gatewayUrl: string;
  const salt = randomUUID();
  const data: Post[] = [
    { id: 'p1', text: `The cat sat on the mat ${salt}`, imageUrls: [] },
    { id: 'p2', text: `A kitten slept on the rug ${salt}`, imageUrls: [] },
    { id: 'p3', text: `The central bank raised interest rates ${salt}`, imageUrls: [] },
    { id: 'p4', text: null, imageUrls: [] },
    ...Array.from({ length: 46 }, (_, i) => ({ id: `q${i}`, text: `post number ${i} about gardens and rivers ${salt}`, imageUrls: [] })),
  ];

  before(async () => {
    polyray = await startPolyray();
    posts = await startPostsSubgraph(data);
    const composed = composeServices([
      { name: 'posts', typeDefs: parse(POSTS_SDL), url: posts.url },
      { name: 'polyray', typeDefs: loadTypeDefs(), url: `${polyray.url}/graphql` },
    ]);
    assert.equal(composed.errors, undefined, composed.errors?.map((e) => e.message).join('\n'));
    gateway = new ApolloServer({ gateway: new ApolloGateway({ supergraphSdl: composed.supergraphSdl! }) });
    gatewayUrl = (await startStandaloneServer(gateway, { listen: { host: '127.0.0.1', port: 0 } })).url;
  });
  after(async () => {
    await gateway?.stop();
    await posts?.stop();
    await polyray?.stop();
  });

  async function query<T>(q: string): Promise<{ data?: T; errors?: unknown[] }> {
    const res = await fetch(gatewayUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ query: q }) });
    return (await res.json()) as { data?: T; errors?: unknown[] };
  }

  test('the supergraph composes and Post.embedding resolves through _entities in one loader batch', async () => {
    const before = polyray.server.text.stats();
    const r = await query<{ posts: { id: string; text: string | null; embedding: { dimensions: number; vector: number[]; source: string } | null }[] }>(
      '{ posts { id text embedding(model: "text-glove") { dimensions vector source } } }',
    );
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    const ps = r.data!.posts;
    assert.equal(ps.length, data.length);
    const after = polyray.server.text.stats();
    assert.equal(after.calls - before.calls, 1, 'the _entities call for every post is one embedMany');
    assert.equal(after.cacheLookups - before.cacheLookups, 1);
    const byId = new Map(ps.map((p) => [p.id, p]));
    assert.equal(byId.get('p4')!.embedding, null, 'a post without text has no text embedding');
    assert.equal(byId.get('p1')!.embedding!.dimensions, 100);
    const [a, b, c] = ['p1', 'p2', 'p3'].map((id) => byId.get(id)!.embedding!.vector) as [number[], number[], number[]];
    assert.ok(cosine(a, b) > cosine(a, c), 'the two cat posts are closer than cat and bank');
  });

  test('arguments pass through the gateway, and errors keep their codes', async () => {
    const r = await query<{ posts: { embedding: { dimensions: number; source: string } }[] }>(
      '{ posts(first: 2) { embedding(dimensions: 16) { dimensions source } } }',
    );
    assert.equal(r.errors, undefined);
    assert.deepEqual(
      r.data!.posts.map((p) => p.embedding.dimensions),
      [16, 16],
    );
    assert.deepEqual(
      r.data!.posts.map((p) => p.embedding.source),
      ['MEMORY', 'MEMORY'],
    );
    const bad = await query('{ posts(first: 1) { embedding(model: "nope") { dimensions } } }');
    const err = (bad.errors as { extensions?: { code?: string } }[])[0]!;
    assert.equal(err.extensions?.code, 'MODEL_NOT_FOUND');
  });

  test('Query.embed is reachable through the gateway', async () => {
    const r = await query<{ embed: { dimensions: number }[] }>('{ embed(model: "text-glove", inputs: [{text: "hello world"}]) { dimensions } }');
    assert.equal(r.errors, undefined);
    assert.equal(r.data!.embed[0]!.dimensions, 100);
    assert.ok(print(loadTypeDefs()).includes('@requires(fields: "text imageUrls")'));
  });
});
