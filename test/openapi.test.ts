/**
 * The REST surfaces' contract: `/openapi.json` is a valid OpenAPI 3.1 document generated from the routes'
 * schemas (it shows the configured limits, so it is the schema the server runs with), every field of every
 * route refuses a wrong type with a 4xx in its protocol's shape naming the field, and the metrics count
 * each surface apart (`surface` label).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Validator } from '@seriousme/openapi-schema-validator';
import { addClient } from '../src/accounting/clients.ts';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

describe('REST contract: /openapi.json, validation from its schemas, surface metrics', () => {
  let dir: string;
  let t: TestServer;
  const keys: Record<string, string> = {};

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'polyray-openapi-'));
    const file = path.join(dir, 'clients.json');
    keys['app'] = (await addClient(file, { id: 'app', rate: 1e6, burst: 1e9 })).key;
    keys['ops'] = (await addClient(file, { id: 'ops', role: 'admin' })).key;
    t = await startPolyray({ accounting: { clientsFile: file }, limits: { maxInputsPerRequest: 77 }, models: { defaultPostModel: 'text-glove' } });
  });
  after(async () => {
    await t?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const call = async (route: string, body: unknown) => {
    const res = await fetch(`${t.url}${route}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${keys['app']}` },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };

  test('/openapi.json is valid OpenAPI 3.1, lists the REST routes (not GraphQL) and the limits configured', async () => {
    const res = await fetch(`${t.url}/openapi.json`);
    assert.equal(res.status, 200);
    const doc = (await res.json()) as {
      openapi: string;
      paths: Record<
        string,
        Record<string, { requestBody?: { content: Record<string, { schema: { properties: Record<string, { description?: string }> } }> } }>
      >;
    };
    assert.equal(doc.openapi, '3.1.0');
    const validator = new Validator();
    const verdict = await validator.validate(doc as unknown as Record<string, unknown>);
    assert.ok(verdict.valid, JSON.stringify(verdict.errors)?.slice(0, 2000));
    assert.deepEqual(Object.keys(doc.paths).sort(), ['/embed', '/tokenize', '/v1/embeddings', '/v1/models', '/v1/models/{id}']);
    const input = doc.paths['/v1/embeddings']!['post']!.requestBody!.content['application/json']!.schema.properties['input']!;
    assert.match(input.description ?? '', /at most 77 inputs/, 'the schema the server validates with, limits included');
  });

  test('/v1/embeddings: a wrong type at every field is a 400 in OpenAI shape naming it', async () => {
    const good = { model: 'text-glove', input: 'x' };
    for (const [patch, param] of [
      [{ input: undefined }, 'input'],
      [{ input: null }, 'input'],
      [{ input: true }, 'input'],
      [{ input: { text: 'x' } }, 'input'],
      [{ input: ['a', null] }, 'input[1]'],
      [{ input: [['a']] }, 'input[0][0]'],
      [{ model: undefined }, 'model'],
      [{ model: '' }, 'model'],
      [{ model: ['text-glove'] }, 'model'],
      [{ encoding_format: 'float16' }, 'encoding_format'],
      [{ encoding_format: 1 }, 'encoding_format'],
      [{ dimensions: 0 }, 'dimensions'],
      [{ dimensions: 2.5 }, 'dimensions'],
      [{ dimensions: '8' }, 'dimensions'],
      [{ user: ['me'] }, 'user'],
    ] as const) {
      const body = JSON.parse(JSON.stringify({ ...good, ...patch })) as unknown;
      const r = await call('/v1/embeddings', body);
      const error = r.body['error'] as { param: string; type: string; message: string };
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(error.type, 'invalid_request_error');
      assert.equal(error.param, param, `${JSON.stringify(body)} → ${JSON.stringify(error)}`);
      assert.ok(error.message.includes(`"${param}"`), error.message);
    }
    const many = await call('/v1/embeddings', { model: 'text-glove', input: Array.from({ length: 78 }, () => 'x') });
    assert.equal(many.status, 413);
    assert.equal((await call('/v1/embeddings', good)).status, 200, 'and it keeps serving');
  });

  test('/embed and /tokenize: a wrong type at every field is a 400 in TEI shape naming it', async () => {
    for (const [route, body, field] of [
      ['/embed', {}, 'inputs'],
      ['/embed', { inputs: null }, 'inputs'],
      ['/embed', { inputs: 'x', normalize: 1 }, 'normalize'],
      ['/embed', { inputs: 'x', truncate: 'false' }, 'truncate'],
      ['/embed', { inputs: 'x', truncation_direction: 'Middle' }, 'truncation_direction'],
      ['/embed', { inputs: 'x', prompt_name: ['query'] }, 'prompt_name'],
      ['/embed', { inputs: 'x', dimensions: -3 }, 'dimensions'],
      ['/tokenize', { inputs: 'x', add_special_tokens: 'yes' }, 'add_special_tokens'],
      ['/tokenize', { inputs: [3] }, 'inputs[0]'],
      ['/tokenize', { inputs: 'x', prompt_name: 5 }, 'prompt_name'],
    ] as const) {
      const r = await call(route, body);
      assert.equal(r.status, 400, `${route} ${JSON.stringify(body)}`);
      assert.equal(r.body['error_type'], 'Validation');
      assert.ok(String(r.body['error']).includes(`"${field}"`), `${route} ${JSON.stringify(body)} → ${String(r.body['error'])}`);
    }
    const wrongType = await fetch(`${t.url}/embed`, { method: 'POST', headers: { 'content-type': 'application/xml' }, body: '<inputs/>' });
    assert.equal(wrongType.status, 415);
    assert.equal(((await wrongType.json()) as { error_type: string }).error_type, 'Validation');
  });

  test('metrics count requests and items by surface: graphql, openai, tei', async () => {
    const auth = { authorization: `Bearer ${keys['app']}` };
    assert.equal((await t.gql('{ embed(model: "text-glove", inputs: [{ text: "by graphql" }]) { vector } }', {}, auth)).errors, undefined);
    assert.equal((await call('/v1/embeddings', { model: 'text-glove', input: 'by openai' })).status, 200);
    assert.equal((await call('/embed', { inputs: 'by tei' })).status, 200);
    assert.equal((await call('/v1/embeddings', { model: 'no-such-model', input: 'x' })).status, 404);
    const text = await (await fetch(`${t.url}/metrics`, { headers: { authorization: `Bearer ${keys['ops']}` } })).text();
    for (const surface of ['graphql', 'openai', 'tei']) {
      assert.match(text, new RegExp(`polyray_requests_total\\{client="app",code="OK",surface="${surface}"\\} [1-9]\\d*`), surface);
      assert.match(text, new RegExp(`polyray_items_total\\{client="app",model="text-glove",source="COMPUTED",surface="${surface}"\\} [1-9]\\d*`), surface);
    }
    assert.match(text, /polyray_requests_total\{client="app",code="MODEL_NOT_FOUND",surface="openai"\} [1-9]\d*/);
  });
});
