/**
 * REST validation (src/http/validation.ts) through a real Fastify route with the /v1/embeddings schema and
 * the server's Ajv options: any JSON body is either accepted or refused naming a field that is in the body
 * (or is a required one it lacks), never coerced, never a crash.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import fc from 'fast-check';
import { embeddingsRequestSchema } from '../src/http/openai.ts';
import { AJV_OPTIONS, describeIssues, paramOf, type ValidationIssue } from '../src/http/validation.ts';

const FIELDS = ['input', 'model', 'encoding_format', 'dimensions', 'user'];
const MISSING = Symbol('missing');

/** The value at a param path like `input[2][0]` in `body`; MISSING when there is none. */
function at(body: unknown, param: string): unknown {
  let v: unknown = body;
  for (const part of param.match(/[^.[\]]+/g) ?? []) {
    if (v === null || typeof v !== 'object' || !Object.hasOwn(v, part)) return MISSING;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

describe('REST body validation', () => {
  let app: FastifyInstance;
  before(async () => {
    app = Fastify({ ajv: { customOptions: AJV_OPTIONS } });
    app.post(
      '/v',
      {
        schema: { body: embeddingsRequestSchema(8) },
        // As the REST routes do: a body refused before validation (not JSON, a `__proto__` key) is about "body".
        errorHandler: (err: { validation?: ValidationIssue[]; message: string }, _req, reply) =>
          reply.code(400).send(err.validation ? describeIssues(err.validation) : { param: 'body', message: err.message }),
      },
      async (req) => ({ body: req.body }),
    );
    await app.ready();
  });
  after(() => app.close());

  const send = async (body: unknown) => {
    const r = await app.inject({ method: 'POST', url: '/v', payload: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    return { status: r.statusCode, body: r.json() as { param: string; message: string; body?: unknown } };
  };

  test('paramOf writes JSON pointers as the field names callers use', () => {
    assert.equal(paramOf(''), 'body');
    assert.equal(paramOf('/input/3/0'), 'input[3][0]');
    assert.equal(paramOf('/a/b'), 'a.b');
    assert.equal(paramOf('', 'model'), 'model');
  });

  test('known cases: each names its field and says what was expected', async () => {
    for (const [body, param, message] of [
      [{ model: 'm', input: 5 }, 'input', /must be a text, a list of texts/],
      [{ model: 'm', input: ['a', 3] }, 'input[1]', /must be a string/],
      [{ model: 'm', input: [[1, 2], 'x'] }, 'input[1]', /must be a list/],
      [{ model: 'm', input: [[1, -2]] }, 'input[0][1]', />= 0/],
      [{ model: 'm', input: [] }, 'input', /fewer than 1/],
      [{ input: 'x' }, 'model', /is required/],
      [{ model: 'm', input: 'x', encoding_format: 'hex' }, 'encoding_format', /one of "float", "base64"/],
      [{ model: 'm', input: 'x', dimensions: '8' }, 'dimensions', /an integer or null/],
      [[1], 'body', /must be an object/],
    ] as const) {
      const r = await send(body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(r.body.param, param, `${JSON.stringify(body)} → ${JSON.stringify(r.body)}`);
      assert.match(r.body.message, message);
    }
    const proto = await send(JSON.parse('{"model": "m", "input": "x", "dimensions": {"__proto__": null}}'));
    assert.deepEqual([proto.status, proto.body.param], [400, 'body'], 'a prototype key is refused before validation');
    const ok = await send({ model: 'm', input: ['a', 'b'], dimensions: null });
    assert.equal(ok.status, 200);
  });

  test('property: any JSON body is accepted uncoerced or refused naming a field it has (or lacks, if required)', async () => {
    const value = fc.oneof(
      fc.jsonValue({ maxDepth: 3 }),
      fc.array(fc.string(), { maxLength: 4 }),
      fc.array(fc.integer({ min: -5, max: 5 }), { maxLength: 4 }),
      fc.array(fc.array(fc.integer({ min: -2, max: 9 }), { maxLength: 3 }), { maxLength: 3 }),
    );
    const body = fc.oneof(
      fc.record({ input: value, model: value, encoding_format: value, dimensions: value, user: value }, { requiredKeys: [] }),
      fc.jsonValue({ maxDepth: 2 }),
    );
    await fc.assert(
      fc.asyncProperty(body, async (b) => {
        const r = await send(b);
        if (r.status === 200) {
          assert.deepEqual(r.body.body, JSON.parse(JSON.stringify(b)), 'accepted as sent, nothing coerced or removed');
          return;
        }
        assert.equal(r.status, 400);
        const { param } = r.body;
        if (param === 'body') return;
        assert.ok(FIELDS.includes(param.split(/[.[]/)[0]!), param);
        const v = at(b, param);
        if (v === MISSING) assert.match(r.body.message, /is required/, `${param} of ${JSON.stringify(b)}`);
      }),
      { numRuns: 400 },
    );
  });
});
