/**
 * Image inputs of `Query.embed` end to end: a real Polyray (real ONNX Runtime workers, real HTTP) fetching
 * from local image servers (127.0.0.1 is allowlisted, as an operator would allow an internal CDN; the https
 * one has a certificate from a private CA given as POLYRAY_IMAGE_CA_FILE), the content-hash cache, the
 * URL → hash memory, per-input errors, and batching bounded by pixels.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { cosine, norm, startPolyray, type TestServer } from './helpers/polyray.ts';
import { patternImage, pngBomb, serve, startImageServer, type ImageServer } from './helpers/images.ts';
import { createTestCa, selfSignedCert } from './helpers/tls.ts';

const EMBED = `query($model: String!, $inputs: [EmbedInput!]!, $dimensions: Int) {
  embed(model: $model, inputs: $inputs, dimensions: $dimensions) { model dimensions vector source }
}`;
type EmbedData = { embed: { model: string; dimensions: number; vector: number[]; source: string }[] };

describe('image inputs in Query.embed', () => {
  let t: TestServer;
  let srv: ImageServer;
  let tlsSrv: ImageServer;
  let untrusted: ImageServer;
  let caDir: string;
  let tlsImg: Buffer;
  const imgs: Buffer[] = [];

  before(async () => {
    // Salted by time so a shared global tier (if any) cannot answer these from an earlier run.
    const salt = Date.now() % 200;
    for (let i = 0; i < 6; i++) imgs.push(await patternImage(200 + i * 10, 160, salt + i, i % 2 ? 'jpeg' : 'png'));
    srv = await startImageServer({
      '/a.png': serve(imgs[0]!),
      '/a-copy.png': serve(imgs[0]!, 'application/octet-stream'),
      '/b.jpg': serve(imgs[1]!),
      ...Object.fromEntries(imgs.map((b, i) => [`/batch/${i}`, serve(b, 'image/png')])),
      '/bomb.png': serve(pngBomb(20_000, 20_000), 'image/png'),
      '/garbage': serve(Buffer.from('not an image'), 'image/jpeg'),
    });
    tlsImg = await patternImage(230, 190, salt + 7, 'jpeg');
    const ca = createTestCa();
    tlsSrv = await startImageServer({ '/c.jpg': serve(tlsImg) }, { tls: ca.issue({ ips: ['127.0.0.1'] }) });
    untrusted = await startImageServer({ '/c.jpg': serve(tlsImg) }, { tls: selfSignedCert({ ips: ['127.0.0.1'] }) });
    caDir = mkdtempSync(path.join(tmpdir(), 'polyray-ca-'));
    writeFileSync(path.join(caDir, 'ca.pem'), ca.cert);
    t = await startPolyray(
      { images: { fetchAllow: ['127.0.0.1'], caFile: path.join(caDir, 'ca.pem') }, batching: { maxPixels: 3 * 224 * 224, maxWaitUs: 200_000 } },
      { lowerTiers: [] },
    );
  });
  after(async () => {
    await t?.stop();
    await Promise.all([srv?.stop(), tlsSrv?.stop(), untrusted?.stop()]);
    if (caDir) rmSync(caDir, { recursive: true, force: true });
  });

  test('a URL and the same bytes in base64 give one unit 1792-d vector, computed once', async () => {
    const r = await t.gql<EmbedData>(EMBED, {
      model: 'image-mobilenet',
      inputs: [{ imageUrl: `${srv.url}/a.png` }, { imageBase64: imgs[0]!.toString('base64') }],
    });
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    const [a, b] = r.data!.embed as [EmbedData['embed'][0], EmbedData['embed'][0]];
    assert.match(a.model, /^image-mobilenet@[0-9a-f]{16}$/);
    assert.equal(a.dimensions, 1792);
    assert.ok(Math.abs(norm(a.vector) - 1) < 1e-4);
    assert.deepEqual(a.vector, b.vector);
    assert.equal(t.server.images.stats().encoded, 1, 'same content: one encoder input');
    const again = await t.gql<EmbedData>(EMBED, { model: 'image-mobilenet', inputs: [{ imageBase64: imgs[0]!.toString('base64') }], dimensions: 64 });
    assert.equal(again.data!.embed[0]!.source, 'MEMORY');
    assert.equal(again.data!.embed[0]!.dimensions, 64);
  });

  test('a repeated URL skips the fetch; the same bytes under another URL are fetched but not computed', async () => {
    const hits = srv.hits.get('/a.png') ?? 0;
    const encoded = t.server.images.stats().encoded;
    const r = await t.gql<EmbedData>(EMBED, { model: 'image-mobilenet', inputs: [{ imageUrl: `${srv.url}/a.png` }] });
    assert.equal(r.data!.embed[0]!.source, 'MEMORY');
    assert.equal(srv.hits.get('/a.png'), hits, 'answered from the URL → hash memory and the cache');
    const copy = await t.gql<EmbedData>(EMBED, { model: 'image-mobilenet', inputs: [{ imageUrl: `${srv.url}/a-copy.png` }] });
    assert.equal(copy.data!.embed[0]!.source, 'MEMORY', 'content-addressed: another URL, same bytes');
    assert.equal(srv.hits.get('/a-copy.png'), 1);
    assert.equal(t.server.images.stats().encoded, encoded);
  });

  test('different images are different; a data: URL works like any other', async () => {
    const r = await t.gql<EmbedData>(EMBED, {
      model: 'image-mobilenet',
      inputs: [{ imageUrl: `${srv.url}/a.png` }, { imageUrl: `${srv.url}/b.jpg` }, { imageUrl: `data:image/png;base64,${imgs[0]!.toString('base64')}` }],
    });
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    const [a, b, c] = r.data!.embed.map((e) => e.vector) as [number[], number[], number[]];
    assert.ok(cosine(a, b) < 0.999);
    assert.ok(cosine(a, c) > 0.99999);
  });

  test('one batch per run, bounded by pixels: 5 new images at 3 images per batch run in 2 batches', async () => {
    const batcher = t.server.host.tensorQueue('image-mobilenet')!;
    const before = batcher.stats();
    const r = await t.gql<EmbedData>(EMBED, { model: 'image-mobilenet', inputs: [1, 2, 3, 4, 5].map((i) => ({ imageUrl: `${srv.url}/batch/${i}` })) });
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    const after = batcher.stats();
    assert.equal(after.items - before.items, 4, 'batch/1 is b.jpg: already cached, so 4 new images');
    assert.equal(after.batches - before.batches, 2);
    assert.equal(after.cost - before.cost, 4 * 224 * 224);
  });

  test('a failing image fails the call with its code and index; text and images are not mixed up', async () => {
    const cases: [string, string][] = [
      [`${srv.url}/bomb.png`, 'IMAGE_TOO_LARGE'],
      [`${srv.url}/garbage`, 'IMAGE_UNREADABLE'],
      ['http://169.254.169.254/latest/meta-data/', 'IMAGE_FETCH_FORBIDDEN'],
      [`${srv.url}/nothing-here`, 'IMAGE_FETCH_FAILED'],
    ];
    for (const [url, code] of cases) {
      const r = await t.gql(EMBED, { model: 'image-mobilenet', inputs: [{ imageUrl: `${srv.url}/a.png` }, { imageUrl: url }] });
      assert.equal(r.errors?.[0]?.extensions?.['code'], code, url);
      assert.equal(r.errors?.[0]?.extensions?.['index'], 1);
      assert.doesNotMatch(r.errors![0]!.message, /127\.0\.0\.1|169\.254/, 'messages do not echo the URL');
    }
    const text = await t.gql(EMBED, { model: 'image-mobilenet', inputs: [{ text: 'a cat' }] });
    assert.equal(text.errors?.[0]?.extensions?.['code'], 'UNSUPPORTED_INPUT');
    const img = await t.gql(EMBED, { model: 'text-glove', inputs: [{ imageUrl: `${srv.url}/a.png` }] });
    assert.equal(img.errors?.[0]?.extensions?.['code'], 'UNSUPPORTED_INPUT');
    const two = await t.gql(EMBED, { model: 'image-mobilenet', inputs: [{ imageUrl: `${srv.url}/a.png`, imageBase64: 'AAAA' }] });
    assert.equal(two.errors?.[0]?.extensions?.['code'], 'BAD_USER_INPUT');
    const bad64 = await t.gql(EMBED, { model: 'image-mobilenet', inputs: [{ imageBase64: '***' }] });
    assert.equal(bad64.errors?.[0]?.extensions?.['code'], 'BAD_USER_INPUT');
  });

  test('https: a host signed by the POLYRAY_IMAGE_CA_FILE CA is fetched; an untrusted one fails only its input', async () => {
    const r = await t.gql<EmbedData>(EMBED, {
      model: 'image-mobilenet',
      inputs: [{ imageUrl: `${tlsSrv.url}/c.jpg` }, { imageBase64: tlsImg.toString('base64') }],
    });
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    assert.equal(tlsSrv.hits.get('/c.jpg'), 1);
    assert.deepEqual(r.data!.embed[0]!.vector, r.data!.embed[1]!.vector, 'the same bytes as inline');
    const bad = await t.gql(EMBED, { model: 'image-mobilenet', inputs: [{ imageUrl: `${srv.url}/a.png` }, { imageUrl: `${untrusted.url}/c.jpg` }] });
    const e = bad.errors?.[0];
    assert.equal(e?.extensions?.['code'], 'IMAGE_FETCH_FAILED', JSON.stringify(bad.errors));
    assert.equal(e?.extensions?.['index'], 1);
    assert.equal(e?.extensions?.['reason'], 'tls');
    assert.equal(e?.extensions?.['tlsCode'], 'DEPTH_ZERO_SELF_SIGNED_CERT');
    assert.match(e!.message, /not signed by a trusted certificate authority.*POLYRAY_IMAGE_CA_FILE/);
    assert.doesNotMatch(e!.message, /127\.0\.0\.1/);
    assert.equal(untrusted.hits.get('/c.jpg') ?? 0, 0, 'no request went out over the refused connection');
  });

  test('Query.models lists the image model, the head and postray', async () => {
    const r = await t.gql<{ models: { name: string; modality: string; dimensions: number; state: string; synthetic: boolean }[] }>(
      '{ models { name modality dimensions state synthetic } }',
    );
    const by = new Map(r.data!.models.map((m) => [m.name, m]));
    assert.deepEqual(by.get('image-mobilenet'), { name: 'image-mobilenet', modality: 'IMAGE', dimensions: 1792, state: 'READY', synthetic: false });
    assert.equal(by.get('head-nsfw')?.dimensions, 5);
    assert.deepEqual(by.get('postray'), { name: 'postray', modality: 'MULTIMODAL', dimensions: 1892, state: 'READY', synthetic: false });
  });
});
