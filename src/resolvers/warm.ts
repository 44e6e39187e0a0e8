/**
 * Warms the GraphQL validator and the operation checker before a replica says it is ready.
 *
 * Apollo keeps each document it has validated, so a steady client's operation is validated once, and
 * the validator's code stays cold (interpreted, without type feedback) long after start: the first
 * documents of a new shape (a dashboard's, a batch job's, or a hostile client's hundred aliases) then
 * held the event loop for 25–35 ms each on this project's 2-core machine, and every other client's
 * cache hits waited behind them. Validating a few operations of the usual shapes some times over, while
 * the models load, lets V8 compile those paths first: the same documents then take a few milliseconds.
 */
import { type FragmentDefinitionNode, Kind, type OperationDefinitionNode, parse, validate, type GraphQLSchema } from 'graphql';
import type { OperationChecker } from './limits.ts';

/** Operations of the shapes clients send, valid against Polyray's schema; `model` names a served model. */
export function warmDocuments(model: string): { query: string; variables: Record<string, unknown> }[] {
  const m = JSON.stringify(model);
  const aliases = Array.from(
    { length: 48 },
    (_, k) => `e${k}: embed(model: ${m}, inputs: [{ text: "warm ${k}" }, { text: "up" }]) { dimensions ${k % 2 ? 'vector' : 'base64'} source }`,
  ).join(' ');
  return [
    {
      query: `query Warm($m: String!, $i: [EmbedInput!]!) { first: embed(model: $m, inputs: $i) { dimensions vector } ${aliases} }`,
      variables: { m: model, i: [{ text: 'warm' }, { text: 'up' }] },
    },
    {
      query: 'query Entities($r: [_Any!]!) { _entities(representations: $r) { ... on Post { id embedding { dimensions vector } } } }',
      variables: { r: [{ __typename: 'Post', id: '1', text: 'warm' }] },
    },
    {
      query: '{ ...Models ...Usage } fragment Models on Query { models { name dimensions } } fragment Usage on Query { usage { clientId totals { cost } } }',
      variables: {},
    },
  ];
}

/**
 * Parses, validates and checks `warmDocuments(model)` `rounds` times, yielding to the event loop between
 * rounds (health checks answer meanwhile). Returns the validation errors of the first round (none when the
 * documents fit the schema; a test holds them to it).
 */
export async function warmValidation(schema: GraphQLSchema, checker: OperationChecker, model: string, rounds = 12): Promise<string[]> {
  const problems: string[] = [];
  for (let round = 0; round < rounds; round++) {
    for (const { query, variables } of warmDocuments(model)) {
      // A new parse each round: Apollo validates a document once, so fresh documents are what is slow.
      const document = parse(query);
      const errors = validate(schema, document);
      if (round === 0) problems.push(...errors.map((e) => e.message));
      const fragments = new Map<string, FragmentDefinitionNode>();
      let operation: OperationDefinitionNode | undefined;
      for (const d of document.definitions) {
        if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d);
        else if (d.kind === Kind.OPERATION_DEFINITION) operation = d;
      }
      try {
        if (operation) checker.check(operation, fragments, variables);
      } catch (e) {
        if (round === 0) problems.push((e as Error).message);
      }
    }
    await new Promise((r) => setImmediate(r));
  }
  return problems;
}
