/**
 * postray: the fusion formula (unit and property tests), and `Post.embedding` / `Post.classify` with
 * images through a real Apollo Gateway, a posts subgraph whose posts carry image URLs served by a local
 * HTTP server (allowlisted), and a real Polyray.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { composeServices } from '@apollo/composition';
import { ApolloGateway } from '@apollo/gateway';
import fc from 'fast-check';
import { parse } from 'graphql';

import { ALPHA, BETA, POSTRAY_FORMULA, fusePost, meanImage, postrayVersion } from '../src/models/postray.ts';
import { maxPerLabel } from '../src/models/heads.ts';
import { loadTypeDefs } from '../src/resolvers/index.ts';
import { cosine, norm, startPolyray, type TestServer } from './helpers/polyray.ts';
import { POSTS_SDL, startPostsSubgraph, type Post } from './helpers/posts-subgraph.ts';
import { patternImage, serve, startImageServer, type ImageServer } from './helpers/images.ts';

const DIMS = { text: 100, image: 1792 };

function unitVec(n: number, seed: number): Float32Array {
  const v = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1664525 + 1013904223) >>> 0;
    v[i] = x / 2 ** 32 - 0.5;
  }
  const s = Math.sqrt(v.reduce((a, b) => a + b * b, 0));
  return v.map((y) => y / s);
}
const dot = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
};

describe('postray formula', () => {
  test('text only: [t, 0]; images only: [0, mean]; neither: nothing', () => {
    const t = unitVec(100, 1);
    const v = fusePost(t, [], DIMS)!;
    assert.equal(v.length, 1892);
    for (let k = 0; k < 100; k++) assert.ok(Math.abs(v[k]! - t[k]!) < 1e-6);
    for (let k = 100; k < 1892; k++) assert.equal(v[k], 0);
    const i1 = unitVec(1792, 2);
    const i2 = unitVec(1792, 3);
    const w = fusePost(undefined, [i1, i2], DIMS)!;
    const m = meanImage([i1, i2], 1792)!;
    for (let k = 0; k < 100; k++) assert.equal(w[k], 0);
    for (let k = 0; k < 1792; k++) assert.ok(Math.abs(w[100 + k]! - m[k]!) < 1e-6);
    // A text of unknown words embeds to zero: it counts as no text.
    assert.deepEqual(fusePost(new Float32Array(100), [i1], DIMS), fusePost(undefined, [i1], DIMS));
    assert.equal(fusePost(undefined, [], DIMS), undefined);
    assert.equal(fusePost(new Float32Array(100), [], DIMS), undefined);
  });

  test('both: [t/√2, i/√2], so each part carries half the energy and cosines average', () => {
    assert.ok(Math.abs(ALPHA ** 2 + BETA ** 2 - 1) < 1e-15);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1e9 }), fc.integer({ min: 1, max: 1e9 }), fc.integer({ min: 1, max: 4 }), (s1, s2, nImages) => {
        const tp = unitVec(100, s1);
        const tq = unitVec(100, s2);
        const ip = Array.from({ length: nImages }, (_, k) => unitVec(1792, s1 + k + 7));
        const iq = [unitVec(1792, s2 + 11)];
        const p = fusePost(tp, ip, DIMS)!;
        const q = fusePost(tq, iq, DIMS)!;
        assert.ok(Math.abs(norm(Array.from(p)) - 1) < 1e-5);
        const textEnergy = dot(p.subarray(0, 100), p.subarray(0, 100));
        assert.ok(Math.abs(textEnergy - 0.5) < 1e-5);
        const expected = 0.5 * dot(tp, tq) + 0.5 * dot(meanImage(ip, 1792)!, iq[0]!);
        assert.ok(Math.abs(dot(p, q) - expected) < 1e-5);
      }),
      { numRuns: 30 },
    );
  });

  test('the version changes with either part and with the formula', () => {
    const v = postrayVersion('aaaa', 'bbbb');
    assert.match(v, /^[0-9a-f]{16}$/);
    assert.notEqual(postrayVersion('aaab', 'bbbb'), v);
    assert.notEqual(postrayVersion('aaaa', 'bbbc'), v);
    assert.equal(POSTRAY_FORMULA, 'postray-1');
  });

  test('head scores over several images: the per-label maximum', () => {
    const s = maxPerLabel({ labels: ['a', 'b'] }, [Float32Array.of(0.9, 0.1), Float32Array.of(0.2, 0.8)]);
    assert.deepEqual(
      s.map((x) => [x.label, Math.round(x.score * 10) / 10]),
      [
        ['a', 0.9],
        ['b', 0.8],
      ],
    );
  });
});

type GPost = { id: string; embedding: { model: string; dimensions: number; vector: number[]; source: string } | null };

describe('Post.embedding and Post.classify with images through a real gateway', () => {
  let polyray: TestServer;
  let images: ImageServer;
  let posts: { url: string; stop: () => Promise<void> };
  let gateway: ApolloServer;
  let gatewayUrl: string;
  const salt = randomUUID();
  const seed = Date.now() % 1000;
  let data: Post[];
  let pics: Buffer[];

  before(async () => {
    pics = await Promise.all([patternImage(240, 180, seed + 1), patternImage(180, 240, seed + 2, 'jpeg'), patternImage(224, 224, seed + 3)]);
    images = await startImageServer({
      '/1.png': serve(pics[0]!),
      '/2.jpg': serve(pics[1]!),
      '/3.png': serve(pics[2]!),
      '/junk.png': serve(Buffer.from('junk'), 'image/png'),
    });
    const u = (p: string): string => `${images.url}${p}`;
    data = [
      { id: 'both', text: `A red kite over the beach ${salt}`, imageUrls: [u('/1.png'), u('/2.jpg')] },
      { id: 'text', text: `Interest rates and the central bank ${salt}`, imageUrls: [] },
      { id: 'image', text: null, imageUrls: [u('/3.png')] },
      { id: 'broken', text: `A post with a broken picture ${salt}`, imageUrls: [u('/3.png'), u('/junk.png')] },
      { id: 'forbidden', text: `Points at the metadata service ${salt}`, imageUrls: ['http://169.254.169.254/latest/meta-data/'] },
      { id: 'empty', text: null, imageUrls: [] },
    ];
    polyray = await startPolyray({ images: { fetchAllow: ['127.0.0.1'] } }, { lowerTiers: [] });
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
    await images?.stop();
  });

  async function query<T>(q: string): Promise<{ data?: T; errors?: { message: string; path?: (string | number)[]; extensions?: Record<string, unknown> }[] }> {
    const res = await fetch(gatewayUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ query: q }) });
    return (await res.json()) as never;
  }

  test('postray is the default post model; text, images and both fuse; one bad image fails only its post', async () => {
    const s0 = polyray.server.text.stats();
    const i0 = polyray.server.images.stats();
    const r = await query<{ posts: GPost[] }>('{ posts { id embedding { model dimensions vector source } } }');
    const byId = new Map(r.data!.posts.map((p) => [p.id, p]));
    // Exactly the two bad posts have errors, each with its image's code and position.
    const errs = (r.errors ?? []).map((e) => ({
      post: data[e.path![1] as number]!.id,
      code: e.extensions?.['code'],
      imageIndex: e.extensions?.['imageIndex'],
    }));
    assert.deepEqual(
      errs.sort((a, b) => a.post.localeCompare(b.post)),
      [
        { post: 'broken', code: 'IMAGE_UNREADABLE', imageIndex: 1 },
        { post: 'forbidden', code: 'IMAGE_FETCH_FORBIDDEN', imageIndex: 0 },
      ],
    );
    assert.equal(byId.get('broken')!.embedding, null);
    assert.equal(byId.get('empty')!.embedding, null);
    for (const id of ['both', 'text', 'image']) {
      const e = byId.get(id)!.embedding!;
      assert.match(e.model, /^postray@[0-9a-f]{16}$/);
      assert.equal(e.dimensions, 1892);
      assert.equal(e.source, 'COMPUTED');
      assert.ok(Math.abs(norm(e.vector) - 1) < 1e-4);
    }
    // All posts of the _entities call: one text embedMany (one cache read) and one image call.
    assert.equal(polyray.server.text.stats().calls - s0.calls, 1);
    assert.equal(polyray.server.images.stats().calls - i0.calls, 1);

    // The fused vectors are the formula applied to the parts, which Query.embed returns separately.
    const parts = await polyray.gql<{ t: { vector: number[] }[]; i: { vector: number[] }[] }>(
      `query($a: String!, $b: String!, $c: String!, $ta: String!, $tb: String!) {
        t: embed(model: "text-glove", inputs: [{text: $ta}, {text: $tb}]) { vector }
        i: embed(model: "image-mobilenet", inputs: [{imageUrl: $a}, {imageUrl: $b}, {imageUrl: $c}]) { vector }
      }`,
      { a: data[0]!.imageUrls[0], b: data[0]!.imageUrls[1], c: data[2]!.imageUrls[0], ta: data[0]!.text, tb: data[1]!.text },
    );
    assert.equal(parts.errors, undefined, JSON.stringify(parts.errors));
    const [t1, t2] = parts.data!.t.map((x) => Float32Array.from(x.vector)) as [Float32Array, Float32Array];
    const [ia, ib, ic] = parts.data!.i.map((x) => Float32Array.from(x.vector)) as [Float32Array, Float32Array, Float32Array];
    const close = (got: number[], want: Float32Array): void => {
      assert.equal(got.length, want.length);
      for (let k = 0; k < want.length; k++) assert.ok(Math.abs(got[k]! - want[k]!) < 1e-5, `component ${k}`);
    };
    close(byId.get('both')!.embedding!.vector, fusePost(t1, [ia, ib], DIMS)!);
    close(byId.get('text')!.embedding!.vector, fusePost(t2, [], DIMS)!);
    close(byId.get('image')!.embedding!.vector, fusePost(undefined, [ic], DIMS)!);
    assert.equal(cosine(byId.get('text')!.embedding!.vector, byId.get('image')!.embedding!.vector), 0, 'text-only and image-only posts are orthogonal');
  });

  test('a page of cached posts is fused without any inference', async () => {
    const runs = polyray.server.pool.stats().runs;
    const hits = images.hits.get('/1.png');
    const r = await query<{ posts: GPost[] }>('{ posts { id embedding(dimensions: 8) { dimensions source } } }');
    const ok = r.data!.posts.filter((p) => p.embedding);
    assert.deepEqual(ok.map((p) => p.id).sort(), ['both', 'image', 'text']);
    assert.ok(ok.every((p) => p.embedding!.source === 'MEMORY' && p.embedding!.dimensions === 8));
    assert.equal(polyray.server.pool.stats().runs, runs, 'no encoder or head ran');
    assert.equal(images.hits.get('/1.png'), hits, 'no image was fetched again');
    // Other models through Post.embedding: a text model reads the text, an image model the images.
    const other = await query<{ posts: { id: string; t: { dimensions: number } | null; i: { dimensions: number } | null }[] }>(
      '{ posts { id t: embedding(model: "text-glove") { dimensions } i: embedding(model: "image-mobilenet") { dimensions } } }',
    );
    const by = new Map(other.data!.posts.map((p) => [p.id, p]));
    assert.equal(by.get('both')!.t!.dimensions, 100);
    assert.equal(by.get('both')!.i!.dimensions, 1792);
    assert.equal(by.get('text')!.i, null);
    assert.equal(by.get('image')!.t, null);
  });

  test('Post.classify: per-label maxima from cached features; on a cache hit only the head runs', async () => {
    const q = '{ posts { id classify(head: "head-nsfw") { label score } } }';
    const first = await query<{ posts: { id: string; classify: { label: string; score: number }[] | null }[] }>(q);
    const by = new Map(first.data!.posts.map((p) => [p.id, p.classify]));
    const labels = ['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy'];
    assert.deepEqual(
      by.get('both')!.map((s) => s.label),
      labels,
    );
    assert.ok(by.get('both')!.every((s) => s.score >= 0 && s.score <= 1));
    const single = by.get('image')!.reduce((s, x) => s + x.score, 0);
    assert.ok(Math.abs(single - 1) < 1e-4, 'one image: its probabilities');
    assert.equal(by.get('text'), null, 'no images, nothing for an image head');
    assert.deepEqual((first.errors ?? []).map((e) => e.extensions?.['code']).sort(), ['IMAGE_FETCH_FORBIDDEN', 'IMAGE_UNREADABLE']);

    // The features were cached by the first call (and by Post.embedding before it): run again and
    // count runs per model in the inference pool and items in the encoder's batcher.
    const encoder = polyray.server.host.tensorQueue('image-mobilenet')!.stats().items;
    const pool = polyray.server.pool.stats().runsByModel;
    const again = await query<{ posts: { id: string; classify: { label: string; score: number }[] | null }[] }>(q);
    const after = polyray.server.pool.stats().runsByModel;
    assert.equal(after['image-mobilenet'] ?? 0, pool['image-mobilenet'] ?? 0, 'no encoder run on a cache hit');
    assert.equal(polyray.server.host.tensorQueue('image-mobilenet')!.stats().items, encoder);
    assert.ok((after['head-nsfw'] ?? 0) > (pool['head-nsfw'] ?? 0), 'the head ran');
    assert.deepEqual(
      again.data!.posts.find((p) => p.id === 'both')!.classify!.map((s) => s.score.toFixed(6)),
      by.get('both')!.map((s) => s.score.toFixed(6)),
    );
    const unknown = await query('{ posts(first: 1) { classify(head: "head-nope") { label } } }');
    assert.equal(unknown.errors?.[0]?.extensions?.['code'], 'MODEL_NOT_FOUND');
  });

  test('postray in Query.embed: a text or an image is a one-part post', async () => {
    const r = await polyray.gql<{ embed: { dimensions: number; vector: number[] }[] }>(
      'query($u: String!, $t: String!, $b: String!) { embed(model: "postray", inputs: [{text: $t}, {imageUrl: $u}, {imageBase64: $b}]) { dimensions vector } }',
      { t: data[1]!.text, u: data[2]!.imageUrls[0], b: pics[2]!.toString('base64') },
    );
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    assert.equal(r.data!.embed[0]!.dimensions, 1892);
    assert.ok(r.data!.embed[0]!.vector.slice(100).every((x) => x === 0));
    assert.ok(r.data!.embed[1]!.vector.slice(0, 100).every((x) => x === 0));
    assert.deepEqual(r.data!.embed[2]!.vector, r.data!.embed[1]!.vector, 'same bytes inline and by URL');
    const bad = await polyray.gql('{ embed(model: "postray", inputs: [{imageBase64: "@@@"}]) { dimensions } }');
    assert.equal(bad.errors?.[0]?.extensions?.['code'], 'BAD_USER_INPUT');
  });
});
