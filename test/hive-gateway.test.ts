/**
 * Demand control that matches what Polyray charges (issue 25): the SDL's `@cost` weights are Polyray's cost
 * units at their worst (src/resolvers/demand-control.ts), and the example supergraph behind Hive Gateway
 * (examples/supergraph/gateway.config.ts, served by the gateway runtime) with its cost limit on
 *   - lets an operation within the limit through, with an estimate no lower than the `extensions.cost.estimated`
 *     Polyray answers the same subgraph request with;
 *   - refuses an operation over the limit with COST_ESTIMATED_TOO_EXPENSIVE before Polyray sees a request.
 * A counting proxy between the gateway and Polyray records what reaches Polyray (headers, answers).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type ConstDirectiveNode, type DocumentNode, graphql, Kind, parse } from 'graphql';
import { compose } from '../examples/supergraph/compose.ts';
import { ENTITIES_PER_FETCH, gatewayConfig } from '../examples/supergraph/gateway.config.ts';
import { startHiveGateway } from '../examples/supergraph/hive-gateway.ts';
import { MAX_PAGE, POSTS, startPosts } from '../examples/supergraph/posts.ts';
import { addClient } from '../src/accounting/clients.ts';
import { loadConfig } from '../src/config/index.ts';
import { MODEL_BUILDERS } from '../src/models/build.ts';
import { type CostWeights, deriveCostWeights, type PricedModel } from '../src/resolvers/demand-control.ts';
import { buildSchema, loadTypeDefs } from '../src/resolvers/index.ts';
import { polyrayCli } from './helpers/cli.ts';
import { MODELS_DIR, startPolyray, type TestServer } from './helpers/polyray.ts';

interface Seen {
  headers: IncomingHttpHeaders;
  body: { query: string; variables?: Record<string, unknown> };
  reply: { extensions?: { cost?: { estimated: number } } };
}

/** An HTTP proxy to `target` that records each request it passes on and the answer. */
async function countingProxy(target: string): Promise<{ url: string; seen: Seen[]; stop: () => Promise<void> }> {
  const to = new URL(target);
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const body: Buffer[] = [];
    req.on('data', (c: Buffer) => body.push(c));
    req.on('end', () => {
      const sent = Buffer.concat(body);
      const up = httpRequest({ host: to.hostname, port: to.port, path: to.pathname, method: req.method, headers: req.headers }, (r) => {
        const reply: Buffer[] = [];
        r.on('data', (c: Buffer) => reply.push(c));
        r.on('end', () => {
          const answer = Buffer.concat(reply);
          seen.push({ headers: req.headers, body: JSON.parse(sent.toString()), reply: JSON.parse(answer.toString()) });
          res.writeHead(r.statusCode ?? 502, r.headers);
          res.end(answer);
        });
      });
      up.on('error', () => res.destroy());
      up.end(sent);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}${to.pathname}`,
    seen,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** The `@cost` weights and `embed`'s list size an SDL declares. */
function declared(sdl: DocumentNode): CostWeights & { maxInputs: number } {
  const found: Record<string, number> = {};
  const int = (d: ConstDirectiveNode | undefined, arg: string): number | undefined => {
    const v = d?.arguments?.find((a) => a.name.value === arg)?.value;
    return v?.kind === Kind.INT ? Number(v.value) : undefined;
  };
  const onType = (type: string, fields: readonly { name: { value: string }; directives?: readonly ConstDirectiveNode[] | undefined }[] = []) => {
    for (const f of fields) {
      const weight = int(
        f.directives?.find((d) => d.name.value === 'cost'),
        'weight',
      );
      if (weight !== undefined) found[`${type}.${f.name.value}`] = weight;
      const size = int(
        f.directives?.find((d) => d.name.value === 'listSize'),
        'assumedSize',
      );
      if (size !== undefined) found[`${type}.${f.name.value}@listSize`] = size;
    }
  };
  for (const d of sdl.definitions) if (d.kind === Kind.OBJECT_TYPE_DEFINITION || d.kind === Kind.OBJECT_TYPE_EXTENSION) onType(d.name.value, d.fields);
  return {
    embed: found['Query.embed']!,
    postEmbedding: found['Post.embedding']!,
    postClassify: found['Post.classify']!,
    maxInputs: found['Query.embed@listSize']!,
  };
}

async function manifests(names: readonly string[]): Promise<PricedModel[]> {
  const present = new Set(await readdir(MODELS_DIR));
  return Promise.all(
    names.filter((n) => present.has(n)).map(async (n) => JSON.parse(await readFile(path.join(MODELS_DIR, n, 'manifest.json'), 'utf8')) as PricedModel),
  );
}

describe('demand control in cost units', () => {
  const defaults = loadConfig({ NODE_ENV: 'test' });
  const options = {
    maxImagesPerPost: defaults.images.maxImagesPerPost,
    rates: { memoryHitCost: defaults.accounting.memoryHitCost, globalHitCost: defaults.accounting.globalHitCost },
  };

  test("schema/'s weights are the bundled models' worst cases at the default settings", async () => {
    const bundled = await manifests(MODEL_BUILDERS.map((b) => b.name));
    assert.equal(bundled.length, MODEL_BUILDERS.length, 'every bundled model is built (npm run models:build)');
    const sdl = declared(loadTypeDefs());
    // 512 tokens × costFactor 20 (text-bert-synthetic) per input and per post; 16 images × 224² / 1000 units per post.
    assert.deepEqual({ embed: sdl.embed, postEmbedding: sdl.postEmbedding, postClassify: sdl.postClassify }, deriveCostWeights(bundled, options));
    assert.deepEqual(deriveCostWeights(bundled, options), { embed: 10240, postEmbedding: 10240, postClassify: 803 });
    assert.equal(sdl.maxInputs, defaults.limits.maxInputsPerRequest);
  });

  test('the served SDL takes the weights of another catalog', async () => {
    // What the tests serve: text-glove (512 × 1 per input), postray = its text + 16 images of image-mobilenet
    // (512 + 16 × 50.176), head-nsfw on image-mobilenet (16 × 50.176).
    const weights = deriveCostWeights(await manifests(['text-glove', 'image-mobilenet', 'head-nsfw']), options);
    assert.deepEqual(weights, { embed: 512, postEmbedding: 1315, postClassify: 803 });
    const res = await graphql({ schema: buildSchema({ maxInputs: 64, costWeights: weights }), source: '{ _service { sdl } }' });
    const sdl = (res.data as { _service: { sdl: string } })._service.sdl;
    assert.match(sdl, /\): \[Embedding!\]! @listSize\(assumedSize: 64, requireOneSlicingArgument: false\) @cost\(weight: 512\)/);
    assert.match(sdl, /\): Embedding @requires\(fields: "text imageUrls"\) @cost\(weight: 1315\)/);
    assert.match(sdl, /@listSize\(assumedSize: 1\) @cost\(weight: 803\)/);
    assert.throws(() => buildSchema({ costWeights: { ...weights, embed: 0.5 } }), /costWeights.embed must be a whole number/);
  });
});

describe('the example supergraph behind Hive Gateway with its cost limit on', () => {
  let polyray: TestServer;
  let dir: string;
  let key: string;
  let gatewayUrl: string;
  let seen: Seen[];
  let weights: CostWeights & { maxInputs: number };
  const stops: (() => Promise<void>)[] = [];
  const { maxCost } = gatewayConfig.demandControl;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-hive-gateway-'));
    const sdlFile = path.join(dir, 'polyray.graphql');
    const printed = await polyrayCli(['schema', 'print', '--out', sdlFile], {});
    assert.equal(printed.code, 0, printed.err);
    const clients = path.join(dir, 'clients.json');
    key = (await addClient(clients, { id: 'shop' })).key;
    polyray = await startPolyray({ accounting: { clientsFile: clients } } as never);
    stops.push(() => polyray.stop());
    const posts = await startPosts(0);
    stops.push(posts.stop);
    const proxy = await countingProxy(`${polyray.url}/graphql`);
    stops.push(proxy.stop);
    seen = proxy.seen;
    const supergraph = compose({ posts: posts.url, polyray: proxy.url }, undefined, { polyray: sdlFile });
    weights = declared(parse(await readFile(sdlFile, 'utf8')));
    const gateway = await startHiveGateway(supergraph, 0, gatewayConfig);
    stops.push(gateway.stop);
    gatewayUrl = gateway.url;
  });
  after(async () => {
    for (const stop of stops.reverse()) await stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  interface Answer<T> {
    data?: T | null;
    errors?: { message: string; extensions?: { code?: string; cost?: { estimated: number; max: number } } }[];
    extensions?: { cost?: { estimated: number; max: number } };
  }
  const ask = async <T>(query: string, variables: Record<string, unknown>, headers: Record<string, string>): Promise<Answer<T>> => {
    const res = await fetch(gatewayUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ query, variables }),
    });
    return (await res.json()) as Answer<T>;
  };
  /** Polyray's `extensions.cost.estimated` of each request the gateway sent it since `from`. */
  const polyrayEstimates = (from: number): number[] => seen.slice(from).map((s) => s.reply.extensions?.cost?.estimated ?? Number.NaN);

  test('an entity fetch is priced at the posts subgraph’s longest page', () => {
    assert.equal(ENTITIES_PER_FETCH, MAX_PAGE);
  });

  test('embed within the limit: the key reaches Polyray, and the estimate prices the call at POLYRAY_MAX_INPUTS inputs', async (t) => {
    const from = seen.length;
    const inputs = ['a cat sat on the mat', 'a kitten slept on the rug', 'interest rates rose again'].map((text) => ({ text }));
    const r = await ask<{ embed: { dimensions: number; vector: number[] }[] }>(
      'query Embed($inputs: [EmbedInput!]!) { embed(model: "text-glove", inputs: $inputs) { dimensions vector } }',
      { inputs },
      { 'x-api-key': key },
    );
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    assert.deepEqual(
      r.data!.embed.map((e) => [e.dimensions, e.vector.length]),
      inputs.map(() => [100, 100]),
    );
    assert.equal(seen.length - from, 1, 'one request reached Polyray');
    assert.equal(seen[from]!.headers['x-api-key'], key, 'the caller’s key was forwarded');
    const [polyrayEstimate] = polyrayEstimates(from);
    // Hive Gateway: (field weight + 1 for the object type) × list size. Polyray: (length + 2) × costFactor 1 per input.
    const gatewayEstimate = r.extensions!.cost!.estimated;
    assert.equal(gatewayEstimate, weights.maxInputs * (weights.embed + 1));
    assert.ok(polyrayEstimate! > 0 && gatewayEstimate >= polyrayEstimate!, `gateway ${gatewayEstimate} >= Polyray ${polyrayEstimate}`);
    assert.ok(gatewayEstimate <= maxCost);
    t.diagnostic(`embed: gateway ${gatewayEstimate}, Polyray ${polyrayEstimate}, limit ${maxCost}`);
  });

  test('posts with embeddings within the limit: the estimate covers a page of entities at their dearest', async (t) => {
    const from = seen.length;
    const r = await ask<{ posts: { id: string; embedding: { dimensions: number }; classify: unknown }[] }>(
      '{ posts { id text embedding(model: "text-glove") { dimensions vector } classify(head: "head-nsfw") { label score } } }',
      {},
      { authorization: `Bearer ${key}` },
    );
    assert.equal(r.errors, undefined, JSON.stringify(r.errors));
    assert.deepEqual(
      r.data!.posts.map((p) => [p.id, p.embedding.dimensions, p.classify]),
      POSTS.map((p) => [p.id, 100, null]),
    );
    assert.equal(seen.length - from, 1, 'one _entities request reached Polyray');
    assert.match(seen[from]!.body.query, /_entities/);
    assert.equal(seen[from]!.headers['authorization'], `Bearer ${key}`);
    const [polyrayEstimate] = polyrayEstimates(from);
    // posts fetch: 1 (the Post type); Polyray's: 1 (_Entity) + a page of embeddings and of classify lists (+ 1
    // each for the Embedding and LabelScore types: Hive Gateway's default type cost).
    const gatewayEstimate = r.extensions!.cost!.estimated;
    assert.equal(gatewayEstimate, 1 + 1 + (ENTITIES_PER_FETCH * weights.postEmbedding + 1) + (ENTITIES_PER_FETCH * weights.postClassify + 1));
    assert.ok(polyrayEstimate! > 0 && gatewayEstimate >= polyrayEstimate!, `gateway ${gatewayEstimate} >= Polyray ${polyrayEstimate}`);
    t.diagnostic(`posts: gateway ${gatewayEstimate}, Polyray ${polyrayEstimate}, limit ${maxCost}`);
  });

  test('an operation over the limit is refused at the gateway and never reaches Polyray', async () => {
    const from = seen.length;
    // Each embed is priced at its largest whatever the inputs sent: two of them are over the limit.
    const r = await ask(
      '{ a: embed(model: "text-glove", inputs: [{ text: "one" }]) { dimensions } b: embed(model: "text-glove", inputs: [{ text: "two" }]) { dimensions } }',
      {},
      { 'x-api-key': key },
    );
    assert.equal(r.errors?.[0]?.extensions?.code, 'COST_ESTIMATED_TOO_EXPENSIVE', JSON.stringify(r));
    assert.deepEqual(r.errors[0].extensions.cost, { estimated: 2 * weights.maxInputs * (weights.embed + 1), max: maxCost });
    assert.equal(r.data ?? null, null);
    assert.equal(seen.length - from, 0, 'Polyray received no request');
  });

  test('the limit is checked before each subgraph fetch: with posts in the operation too, Polyray still receives nothing', async () => {
    const from = seen.length;
    const r = await ask<{ posts: { id: string; embedding: unknown }[] | null }>(
      '{ posts { id embedding(model: "text-glove") { dimensions } } a: embed(model: "text-glove", inputs: [{ text: "one" }]) { dimensions } b: embed(model: "text-glove", inputs: [{ text: "two" }]) { dimensions } }',
      {},
      { 'x-api-key': key },
    );
    assert.ok(r.errors?.length, JSON.stringify(r));
    assert.ok(
      r.errors.every((e) => e.extensions?.code === 'COST_ESTIMATED_TOO_EXPENSIVE'),
      JSON.stringify(r.errors),
    );
    assert.ok(r.extensions!.cost!.estimated >= 2 * weights.maxInputs * (weights.embed + 1));
    assert.equal(seen.length - from, 0, 'Polyray received no request');
  });
});
