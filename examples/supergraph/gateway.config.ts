/**
 * Hive Gateway in front of the example supergraph. The `hive-gateway` CLI (npm @graphql-hive/gateway) reads
 * `gatewayConfig` from this file when started in this folder:
 *
 *   cd examples/supergraph && npx hive-gateway supergraph ../../supergraph.graphql --port 4100
 *
 * hive-gateway.ts serves the same object with the gateway runtime alone (test/hive-gateway.test.ts runs it).
 * The object is typed with the runtime's config type, which the CLI's `defineConfig` extends.
 */
import type { GatewayConfigBase } from '@graphql-hive/gateway-runtime';
import { type FieldNode, Kind, type TypeInfo, visit } from 'graphql';

/**
 * Most entities one fetch from a subgraph carries: the posts subgraph's longest page (posts.ts MAX_PAGE), since
 * the gateway asks Polyray about the posts of one page in one `_entities` fetch.
 */
export const ENTITIES_PER_FETCH = 100;

/**
 * `demandControl.fieldCost`: a field under `_entities` costs its `@cost` weight once per entity a fetch may carry
 * (`perFetch`). Hive Gateway (2.12) prices `_entities(representations:)` as a single entity otherwise: its
 * `listSize` option reaches nullable lists only, and `_entities` returns `[_Entity]!`; `posts { embedding }` would
 * be estimated at one post's embedding whatever the length of the page. 0 leaves a field to its own `@cost`.
 */
export function entitiesCost(perFetch: number): (field: FieldNode, typeInfo: TypeInfo) => number {
  // The fields below each `_entities` fetch, marked when the fetch is priced (before its fields).
  const below = new WeakSet<FieldNode>();
  return (field, typeInfo) => {
    if (field.name.value === '_entities' && typeInfo.getParentType()?.name === 'Query') {
      if (field.selectionSet)
        visit(field.selectionSet, {
          enter: (node) => {
            if (node.kind === Kind.FIELD) below.add(node);
          },
        });
      return 0;
    }
    if (!below.has(field)) return 0;
    const cost = typeInfo.getFieldDef()?.astNode?.directives?.find((d) => d.name.value === 'cost');
    const weight = cost?.arguments?.find((a) => a.name.value === 'weight')?.value;
    return weight?.kind === Kind.INT ? perFetch * Number(weight.value) : 0;
  };
}

/** Headers a caller's API key travels in (README "Clients, quotas and costs"); forwarded to Polyray only. */
const KEY_HEADERS = ['authorization', 'x-api-key'] as const;

export const gatewayConfig = {
  propagateHeaders: {
    // Polyray bills and rate-limits each caller by its own key. Other subgraphs do not get it: add them here
    // if they read the same headers.
    fromClientToSubgraphs: ({ request, subgraphName }) =>
      subgraphName === 'polyray' ? Object.fromEntries(KEY_HEADERS.map((h) => [h, request.headers.get(h)])) : undefined,
  },
  // Demand control: the gateway estimates each subgraph fetch from the `@cost` / `@listSize` of the supergraph
  // before sending it, adds up the fetches of an operation, and refuses the operation
  // (COST_ESTIMATED_TOO_EXPENSIVE) before the fetch that would pass `maxCost`. Polyray's weights are its own
  // cost units at their worst (schema/, src/resolvers/demand-control.ts), so an estimate is never below what
  // Polyray reserves (`extensions.cost.estimated` of its answer).
  demandControl: {
    // One `embed` call at its largest fits: POLYRAY_MAX_INPUTS (2048) × the weight of its dearest input (10,240
    // units with the bundled models) ≈ 21 M units, as is a page of posts with embeddings (≈ 1 M); two `embed`
    // calls in one operation do not. Size it from your printed SDL (`npm run schema:print`): the weights follow
    // your models, and a lower POLYRAY_MAX_INPUTS makes every `embed` cheaper here.
    maxCost: 25_000_000,
    fieldCost: entitiesCost(ENTITIES_PER_FETCH),
    // Answers carry `extensions.cost: { estimated, max }`, so callers see how far from the limit they are.
    includeExtensionMetadata: true,
  },
  // Response cache (`responseCaching`): Hive Gateway caches whole answers, at most as long as the shortest
  // `max-age` a subgraph sent, but it does not read `no-store`. With it on, set `session` to the caller's key
  // (an answer is billed to one client, and a `private` client's entries are its own), and a 0 TTL in
  // `ttlPerSchemaCoordinate` for what Polyray answers `no-store`: Query.models, Query.usage, Query.usageAll,
  // Query.usageHistory, Query.cachePolicy and Embedding.source (README "Caching in the router"). Not enabled
  // here: answers served from the gateway's cache are not billed by Polyray.
} satisfies GatewayConfigBase<Record<string, unknown>>;
