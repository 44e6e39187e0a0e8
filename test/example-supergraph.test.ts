/**
 * examples/supergraph runs as its README says (with free ports, and compose.ts / gateway.ts standing in for
 * Rover and the router binary, which cannot be downloaded here): print Polyray's SDL, start the posts
 * subgraph, compose from supergraph.yaml, serve the supergraph, and query posts with their embeddings.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { compose } from '../examples/supergraph/compose.ts';
import { startGateway } from '../examples/supergraph/gateway.ts';
import { gatewayConfig } from '../examples/supergraph/gateway.config.ts';
import { MAX_PAGE, POSTS, startPosts } from '../examples/supergraph/posts.ts';
import { polyrayCli } from './helpers/cli.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

describe('the example supergraph', () => {
  let polyray: TestServer;
  const stops: (() => Promise<void>)[] = [];
  before(async () => {
    const printed = await polyrayCli(['schema', 'print', '--out', 'polyray.graphql'], {});
    assert.equal(printed.code, 0, printed.err);
    polyray = await startPolyray();
    stops.push(() => polyray.stop());
  });
  after(async () => {
    for (const stop of stops.reverse()) await stop();
  });

  test('composes from supergraph.yaml and answers posts with their embeddings through the gateway', async () => {
    const posts = await startPosts(0);
    stops.push(posts.stop);
    const sdl = compose({ posts: posts.url, polyray: `${polyray.url}/graphql` });
    assert.match(sdl, /join__graph\(name: "polyray"/);
    const gateway = await startGateway(sdl, 0);
    stops.push(gateway.stop);
    const res = await fetch(gateway.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: '{ posts { id text embedding(model: "text-glove") { dimensions vector } } }' }),
    });
    const body = (await res.json()) as {
      data?: { posts: { id: string; text: string; embedding: { dimensions: number; vector: number[] } }[] };
      errors?: unknown;
    };
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    assert.deepEqual(
      body.data!.posts.map((p) => [p.id, p.text, p.embedding.dimensions]),
      POSTS.map((p) => [p.id, p.text, 100]),
    );
    const [cat, kitten, rates] = body.data!.posts.map((p) => p.embedding.vector);
    const dot = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i]!, 0);
    assert.ok(dot(cat!, kitten!) > dot(cat!, rates!), 'the two cat posts are closer to each other');
  });

  test('router.yaml forwards the API key headers, fits inline images, caches entities and limits the cost', () => {
    const router = parseYaml(readFileSync('examples/supergraph/router.yaml', 'utf8')) as {
      headers: { all: { request: { propagate: { named: string } }[] } };
      limits: { http_max_request_bytes: number };
      response_cache: { enabled: boolean };
      demand_control: { enabled: boolean; mode: string; strategy: { static_estimated: { list_size: number; max: number } } };
    };
    assert.deepEqual(router.headers.all.request.map((r) => r.propagate.named).sort(), ['authorization', 'x-api-key']);
    assert.ok(router.limits.http_max_request_bytes >= 8 * 1024 * 1024);
    assert.equal(router.response_cache.enabled, true);
    // Demand control as in gateway.config.ts: the same limit, lists sized by the posts subgraph's longest page.
    assert.deepEqual(router.demand_control, {
      enabled: true,
      mode: 'enforce',
      strategy: { static_estimated: { list_size: MAX_PAGE, max: gatewayConfig.demandControl.maxCost } },
    });
  });
});
