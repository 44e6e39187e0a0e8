/**
 * Cache-Control on GraphQL answers, for the caches in front of Polyray: the Apollo Router's entity cache
 * and Hive Gateway's response cache read a subgraph response's `Cache-Control` to decide whether, and how
 * long, to keep it.
 *
 * An embedding is a function of (model@version, input, options): an answer made only of `Post` entities
 * (`_entities`) or `embed` results may be kept `POLYRAY_HTTP_CACHE_MAX_AGE_S` — `public` for clients on the
 * shared cache, `private` for clients with `cacheScope: private` (no cross-client reuse, as in Polyray's own
 * tiers). Everything else is `no-store`: `models`, `usage*`, `cachePolicy`, mutations, any answer with an
 * error, and any selection of `source` (where an answer came from changes from one request to the next).
 *
 * Why not Apollo's cache-control plugin: it wraps every field resolver to collect hints (a measured cost on
 * the hit path, issue 27), and the rule here depends only on the operation's root fields and one field name.
 * The trade of a long max-age: after a model is updated in place (a new version), a router may serve the
 * old version's vectors until the entry expires.
 */
import type { ApolloServerPlugin } from '@apollo/server';
import { type FragmentDefinitionNode, Kind, type OperationDefinitionNode, type SelectionSetNode } from 'graphql';
import type { PolyrayContext } from './context.ts';

/** Root fields whose answers are functions of their arguments and the model's version. */
const CACHEABLE_ROOTS = new Set(['_entities', 'embed']);
/** Fields whose values change between identical requests. */
const VOLATILE_FIELDS = new Set(['source']);

/** Whether an operation's answer may be kept by a cache (before looking at errors and the client). */
export function cacheableOperation(operation: OperationDefinitionNode, fragments: ReadonlyMap<string, FragmentDefinitionNode>): boolean {
  if (operation.operation !== 'query') return false;
  for (const s of operation.selectionSet.selections) {
    if (s.kind !== Kind.FIELD) return false; // a root fragment could hide anything: not worth the walk
    if (s.name.value === '__typename') continue;
    if (!CACHEABLE_ROOTS.has(s.name.value)) return false;
  }
  return !selects(operation.selectionSet, fragments, VOLATILE_FIELDS, new Set());
}

function selects(set: SelectionSetNode, fragments: ReadonlyMap<string, FragmentDefinitionNode>, names: ReadonlySet<string>, seen: Set<string>): boolean {
  for (const s of set.selections) {
    if (s.kind === Kind.FIELD) {
      if (names.has(s.name.value)) return true;
      if (s.selectionSet && selects(s.selectionSet, fragments, names, seen)) return true;
    } else if (s.kind === Kind.INLINE_FRAGMENT) {
      if (selects(s.selectionSet, fragments, names, seen)) return true;
    } else {
      const name = s.name.value;
      if (seen.has(name)) continue;
      seen.add(name);
      const f = fragments.get(name);
      if (f && selects(f.selectionSet, fragments, names, seen)) return true;
    }
  }
  return false;
}

/** The plugin: sets `cache-control` on every GraphQL answer. `maxAgeS` 0: `no-store` always. */
export function httpCachePlugin(maxAgeS: number): ApolloServerPlugin<PolyrayContext> {
  return {
    async requestDidStart() {
      let cacheable = false;
      return {
        async didResolveOperation({ document, operation }) {
          if (maxAgeS <= 0 || !operation) return;
          const fragments = new Map<string, FragmentDefinitionNode>();
          for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d);
          cacheable = cacheableOperation(operation, fragments);
        },
        async willSendResponse({ response, contextValue, errors }) {
          const body = response.body;
          const failed = (errors?.length ?? 0) > 0 || (body.kind === 'single' && (body.singleResult.errors?.length ?? 0) > 0);
          const account = (contextValue as Partial<PolyrayContext>).scope?.account;
          if (!cacheable || failed || !account) {
            response.http.headers.set('cache-control', 'no-store');
            return;
          }
          const scope = account.cacheNamespace === undefined ? 'public' : 'private';
          response.http.headers.set('cache-control', `${scope}, max-age=${maxAgeS}`);
        },
      };
    },
  };
}
