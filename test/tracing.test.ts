/**
 * OpenTelemetry tracing (src/telemetry): a query through the example gateway, carrying the caller's W3C
 * `traceparent`, becomes one connected trace in Polyray's spans, exported by the real OTLP/HTTP exporter to
 * a receiver in this process: the server span (named after the operation) is the child of the caller's
 * span, and quota, cache tiers, tokenisation, queue wait and the inference batch nest under it; the batch
 * links to the request. Log lines written during the request carry its trace id. Off by default.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { compose } from '../examples/supergraph/compose.ts';
import { startGateway } from '../examples/supergraph/gateway.ts';
import { startPosts } from '../examples/supergraph/posts.ts';
import { loadConfig } from '../src/config/index.ts';
import { createLogger } from '../src/log.ts';
import { startTracing, tracing } from '../src/telemetry/tracing.ts';
import { polyrayCli } from './helpers/cli.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: { key: string; value: Record<string, unknown> }[];
  links?: { traceId: string; spanId: string }[];
  status?: { code?: number };
}

/** An OTLP/HTTP JSON receiver: every span posted to /v1/traces. */
async function receiver(): Promise<{ url: string; spans: OtlpSpan[]; server: Server }> {
  const spans: OtlpSpan[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      assert.equal(req.url, '/v1/traces');
      assert.match(String(req.headers['content-type']), /json/);
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
        resourceSpans: { scopeSpans: { spans: OtlpSpan[] }[] }[];
      };
      for (const r of body.resourceSpans) for (const s of r.scopeSpans) spans.push(...s.spans);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans, server };
}

const attr = (s: OtlpSpan, key: string): unknown => {
  const v = s.attributes?.find((a) => a.key === key)?.value;
  return v === undefined ? undefined : Object.values(v)[0];
};

describe('OpenTelemetry tracing', () => {
  let otlp: Awaited<ReturnType<typeof receiver>>;
  let polyray: TestServer;
  const logs: Record<string, unknown>[] = [];
  const stops: (() => Promise<void>)[] = [];
  before(async () => {
    // The SDL the example's supergraph.yaml reads, as its README has the user print it.
    const printed = await polyrayCli(['schema', 'print', '--out', 'polyray.graphql'], {});
    assert.equal(printed.code, 0, printed.err);
    otlp = await receiver();
    const logger = createLogger('debug', { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
    polyray = await startPolyray({ telemetry: { endpoint: `${otlp.url}/v1/traces` } }, { logger });
  });
  after(async () => {
    for (const stop of stops.reverse()) await stop();
    await polyray?.stop();
    otlp?.server.close();
  });

  test('a query through the gateway is one connected trace, continued from the caller’s traceparent', async () => {
    const posts = await startPosts(0);
    stops.push(posts.stop);
    const gateway = await startGateway(compose({ posts: posts.url, polyray: `${polyray.url}/graphql` }), 0);
    stops.push(gateway.stop);
    const traceId = randomBytes(16).toString('hex');
    const parent = randomBytes(8).toString('hex');
    const res = await fetch(gateway.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', traceparent: `00-${traceId}-${parent}-01` },
      body: JSON.stringify({ query: 'query PostVectors { posts { id embedding(model: "text-glove") { dimensions } } }' }),
    });
    const body = (await res.json()) as { data?: { posts: { embedding: { dimensions: number } }[] }; errors?: unknown };
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    assert.ok(body.data!.posts.every((p) => p.embedding.dimensions === 100));
    // A request without a traceparent starts a trace of its own.
    const alone = await polyray.gql('{ embed(model: "text-glove", inputs: [{ text: "a lone request" }]) { dimensions } }');
    assert.equal(alone.errors, undefined);

    await polyray.stop(); // exports what is left
    assert.equal(tracing.on, false, 'stopped with the server');
    const mine = otlp.spans.filter((s) => s.traceId === traceId);
    const ids = new Set(mine.map((s) => s.spanId));
    const roots = mine.filter((s) => s.parentSpanId === parent);
    assert.equal(roots.length, 1, `one server span under the caller's span: ${JSON.stringify(mine.map((s) => [s.name, s.parentSpanId]))}`);
    const root = roots[0]!;
    assert.equal(root.kind, 2, 'SERVER');
    assert.match(root.name, /^query PostVectors__polyray__\d+$/);
    assert.equal(attr(root, 'graphql.operation.type'), 'query');
    assert.equal(attr(root, 'http.response.status_code'), 200);
    for (const s of mine) if (s !== root) assert.ok(s.parentSpanId && ids.has(s.parentSpanId), `${s.name} hangs off a span of the trace`);
    const names = new Set(mine.map((s) => s.name));
    for (const n of [
      'polyray.quota.reserve',
      'polyray.quota.settle',
      'polyray.cache.lookup',
      'polyray.cache.read',
      'polyray.tokenize',
      'polyray.queue.wait',
      'polyray.inference.batch',
    ]) {
      assert.ok(names.has(n), `${n} in the trace (got ${[...names].join(', ')})`);
    }
    const memoryRead = mine.find((s) => s.name === 'polyray.cache.read' && attr(s, 'polyray.cache.tier') === 'memory');
    assert.ok(memoryRead, 'the memory tier read is its own span');
    const batch = mine.find((s) => s.name === 'polyray.inference.batch')!;
    assert.equal(attr(batch, 'polyray.model'), 'text-glove');
    assert.ok(
      batch.links?.some((l) => l.traceId === traceId && l.spanId === root.spanId),
      'the batch links to the request it ran',
    );
    // The lone request: its own trace, rooted in Polyray.
    const others = otlp.spans.filter((s) => s.traceId !== traceId && s.kind === 2);
    assert.ok(
      others.some((s) => s.parentSpanId === undefined || s.parentSpanId === ''),
      'a request without traceparent starts a trace',
    );
    // Log lines of the request carry its trace id.
    assert.ok(
      logs.some((l) => l['trace_id'] === traceId && l['msg'] === 'request'),
      'the request log line carries the trace id',
    );
  });

  test('the example router.yaml propagates W3C trace context to the subgraphs', () => {
    const router = parseYaml(readFileSync('examples/supergraph/router.yaml', 'utf8')) as {
      telemetry: { exporters: { tracing: { propagation: { trace_context: boolean } } } };
    };
    assert.equal(router.telemetry.exporters.tracing.propagation.trace_context, true);
  });

  test('off unless an endpoint is set', () => {
    const config = loadConfig({ NODE_ENV: 'test' });
    assert.equal(config.telemetry.endpoint, undefined);
    assert.equal(startTracing(config.telemetry, '0.0.0'), undefined);
    assert.throws(() => loadConfig({ NODE_ENV: 'test', POLYRAY_OTEL_ENDPOINT: 'not a url' }), /POLYRAY_OTEL_ENDPOINT/);
  });
});
