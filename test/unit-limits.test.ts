/**
 * OperationChecker (src/resolvers/limits.ts): what an operation asks for, counted from the document and
 * its variables before any work — inputs over aliases and fragments, the reply size, fields and depth.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { type FragmentDefinitionNode, GraphQLError, Kind, type OperationDefinitionNode, parse } from 'graphql';
import type { Catalog } from '../src/resolvers/context.ts';
import { METERED_FIELD_WEIGHT, OperationChecker, type OperationLimits } from '../src/resolvers/limits.ts';
import type { ModelInfo } from '../src/runtime/handle.ts';
import { loadConfig } from '../src/config/index.ts';
import { schemaOptionsOf } from '../src/resolvers/demand-control.ts';
import { buildSchema } from '../src/resolvers/index.ts';
import { warmValidation } from '../src/resolvers/warm.ts';

const catalog = {
  models: () => [{ name: 'm100', dimensions: 100 } as ModelInfo, { name: 'm8', dimensions: 8 } as ModelInfo],
  defaultPostModel: 'm100',
  maxInputsPerRequest: 2048,
  reloadModels: async () => ({ added: [], updated: [], removed: [], failed: [] }),
} satisfies Catalog;

const LIMITS: OperationLimits = { maxInputs: 100, maxResponseBytes: 100_000, maxFields: 50, maxDepth: 6 };

/** The refusal code of `query` under `limits`, or 'OK'. */
function verdict(query: string, variables: Record<string, unknown> = {}, limits: OperationLimits = LIMITS): string {
  const doc = parse(query);
  const op = doc.definitions.find((d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION)!;
  const fragments = new Map(doc.definitions.filter((d): d is FragmentDefinitionNode => d.kind === Kind.FRAGMENT_DEFINITION).map((d) => [d.name.value, d]));
  try {
    new OperationChecker(limits, catalog).check(op, fragments, variables);
    return 'OK';
  } catch (e) {
    assert.ok(e instanceof GraphQLError);
    return String(e.extensions['code']);
  }
}

describe('OperationChecker', () => {
  test('inputs are summed over aliases, literal lists and variables', () => {
    const one = (n: number) => `e${n}: embed(model: "m8", inputs: $i) { dimensions }`;
    assert.equal(verdict(`query($i: [EmbedInput!]!) { ${one(1)} ${one(2)} }`, { i: Array(50).fill({ text: 'x' }) }), 'OK');
    assert.equal(verdict(`query($i: [EmbedInput!]!) { ${one(1)} ${one(2)} ${one(3)} }`, { i: Array(50).fill({ text: 'x' }) }), 'TOO_MANY_INPUTS');
    assert.equal(verdict(`{ embed(model: "m8", inputs: [${'{text: "a"} '.repeat(101)}]) { dimensions } }`), 'TOO_MANY_INPUTS');
  });

  test('_entities: representations × embedding and classify fields, through fragments', () => {
    const q = 'query($r: [_Any!]!) { _entities(representations: $r) { ...P } } fragment P on Post { a: embedding { dimensions } b: embedding { dimensions } }';
    assert.equal(verdict(q, { r: Array(50).fill({}) }), 'OK');
    assert.equal(verdict(q, { r: Array(51).fill({}) }), 'TOO_MANY_INPUTS');
  });

  test(`metered reads weigh ${METERED_FIELD_WEIGHT} inputs each`, () => {
    assert.equal(verdict('{ a: models { name } }'), 'OK');
    assert.equal(verdict('{ a: models { name } b: usage { clientId } }', {}, { ...LIMITS, maxInputs: 2 * METERED_FIELD_WEIGHT - 1 }), 'TOO_MANY_INPUTS');
  });

  test('the reply size follows the encodings and dimensions asked for', () => {
    const i = Array(30).fill({ text: 'x' });
    const l = { ...LIMITS, maxResponseBytes: 80_000 };
    // 30 × 100 floats as JSON ≈ 77 kB with overhead; base64 of the same adds ≈ 16 kB.
    assert.equal(verdict('query($i: [EmbedInput!]!) { embed(model: "m100", inputs: $i) { vector } }', { i }, l), 'OK');
    assert.equal(verdict('query($i: [EmbedInput!]!) { embed(model: "m100", inputs: $i) { vector base64 } }', { i }, l), 'RESPONSE_TOO_LARGE');
    assert.equal(verdict('query($i: [EmbedInput!]!) { embed(model: "m100", inputs: $i, dimensions: 8) { vector base64 } }', { i }, l), 'OK');
  });

  test('fields (fragments expanded) and depth', () => {
    assert.equal(verdict(`{ ${Array.from({ length: 51 }, (_, k) => `f${k}: __typename`).join(' ')} }`), 'QUERY_TOO_COMPLEX');
    assert.equal(
      verdict(
        '{ ...A } fragment A on Query { ...B ...B ...B ...B } fragment B on Query { ...C ...C ...C ...C } fragment C on Query { a: __typename b: __typename c: __typename d: __typename }',
      ),
      'QUERY_TOO_COMPLEX',
    );
    assert.equal(verdict('{ a { b { c { d { e { f { g } } } } } } }'), 'QUERY_TOO_COMPLEX');
    assert.equal(verdict('{ a { b { c { d { e } } } } }'), 'OK');
  });

  test('property: any alias count × input count is refused exactly when the sum passes the limit', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 12 }), fc.integer({ min: 0, max: 30 }), (aliases, n) => {
        const q = `query($i: [EmbedInput!]!) { ${Array.from({ length: aliases }, (_, k) => `e${k}: embed(model: "m8", inputs: $i) { dimensions }`).join(' ')} }`;
        const v = verdict(q, { i: Array(n).fill({ text: 'x' }) }, { ...LIMITS, maxFields: 1000 });
        assert.equal(v, aliases * n > LIMITS.maxInputs ? 'TOO_MANY_INPUTS' : 'OK');
      }),
      { numRuns: 200 },
    );
  });

  test('the catalog is read once per operation, not once per alias', () => {
    let reads = 0;
    const counted = {
      ...catalog,
      models: () => {
        reads++;
        return catalog.models();
      },
    } satisfies Catalog;
    const doc = parse(`{ ${Array.from({ length: 40 }, (_, k) => `e${k}: embed(model: "m8", inputs: [{ text: "x" }]) { vector }`).join(' ')} }`);
    const op = doc.definitions[0] as OperationDefinitionNode;
    new OperationChecker({ ...LIMITS, maxFields: 500 }, counted).check(op, new Map(), {});
    assert.equal(reads, 1);
  });
});

describe('warm-up (src/resolvers/warm.ts)', () => {
  test("its documents fit Polyray's schema and pass the default limits, so the warm-up runs the paths clients do", async () => {
    const config = loadConfig({});
    const schema = buildSchema(schemaOptionsOf(config));
    const checker = new OperationChecker(
      {
        maxInputs: config.limits.maxInputsPerOperation,
        maxResponseBytes: config.limits.maxResponseBytes,
        maxFields: config.limits.maxFields,
        maxDepth: config.limits.maxDepth,
      },
      catalog,
    );
    assert.deepEqual(await warmValidation(schema, checker, 'm100', 2), []);
    // And it would say so if they did not.
    const narrow = new OperationChecker({ ...LIMITS, maxFields: 10 }, catalog);
    assert.match((await warmValidation(schema, narrow, 'm100', 1)).join('\n'), /more than 10 fields/);
  });
});
