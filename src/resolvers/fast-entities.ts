/**
 * A compiled path for the operation a supergraph sends most: a batch of posts asking for their embedding,
 *
 *   query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "m", dimensions: 64) { base64 } } } }
 *
 * (`vector` instead of `base64`, aliases, `model` and `dimensions` as literals or variables). graphql-js
 * would resolve every entity field by field — a promise, argument coercion and a completion per field, and
 * one `Float` serialisation per component of a `vector` — where this path makes the same loader call the
 * `Post.embedding` resolver makes (one DataLoader batch, one pipeline call, the same account) and writes the
 * same response: the same data, the same errors at the same paths with the same codes (`formatError`'s
 * shape for a PolyrayError). Tests compare the two on every shape (test/fast-entities.test.ts).
 *
 * Anything else goes the ordinary way: another selection, directives, fragments, a representation that is
 * not a valid Post, a model or argument the resolver would refuse (its error is the resolver's), a model
 * that does not read text, or a gateway asking for a federated trace (`apollo-federation-include-trace`).
 * Runs as Apollo's `responseForOperation`, after parsing, validation and the operation limits.
 */
import type { ApolloServerPlugin, GraphQLRequestContext, GraphQLResponse } from '@apollo/server';
import { HeaderMap } from '@apollo/server';
import { type FieldNode, getLocation, type GraphQLFormattedError, Kind, type OperationDefinitionNode, type ValueNode } from 'graphql';
import { encodeWire } from '../cache/codec.ts';
import { isPolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { EmbedResult } from '../service/types.ts';
import { checkDimensions, checkModelName, checkPrompt } from './args.ts';
import type { PolyrayContext } from './context.ts';
import { truncate } from './shape.ts';

interface Plan {
  entitiesKey: string;
  embeddingKey: string;
  embeddingNode: FieldNode;
  leafKey: string;
  leaf: 'base64' | 'vector';
  representations: unknown[];
  model: string | null | undefined;
  dimensions: number | null | undefined;
}

/** Operations the compiled path answered. */
export interface FastPathStats {
  served: number;
}

/** The plugin; `logger` logs internal errors as `formatError` does; `stats` counts what it answered. */
export function fastEntitiesPlugin(logger: Logger, stats: FastPathStats = { served: 0 }): ApolloServerPlugin<PolyrayContext> {
  return {
    async requestDidStart() {
      return {
        async responseForOperation(rc: GraphQLRequestContext<PolyrayContext>): Promise<GraphQLResponse | null> {
          if (!rc.operation || rc.request.http?.headers.get('apollo-federation-include-trace')) return null;
          const plan = planOf(rc.operation, rc.request.variables ?? {});
          const response = plan ? await run(plan, rc.contextValue, logger) : null;
          if (response) stats.served++;
          return response;
        },
      };
    },
  };
}

const noDirectives = (n: { directives?: readonly unknown[] | undefined }): boolean => (n.directives?.length ?? 0) === 0;
const keyOf = (f: FieldNode): string => f.alias?.value ?? f.name.value;

/** The plan of an operation of the one shape, or undefined. */
export function planOf(op: OperationDefinitionNode, variables: Record<string, unknown>): Plan | undefined {
  if (op.operation !== 'query' || !noDirectives(op) || op.selectionSet.selections.length !== 1) return undefined;
  const entities = op.selectionSet.selections[0]!;
  if (entities.kind !== Kind.FIELD || entities.name.value !== '_entities' || !noDirectives(entities)) return undefined;
  if (entities.arguments?.length !== 1 || entities.arguments[0]!.name.value !== 'representations') return undefined;
  const reps = argumentValue(entities.arguments[0]!.value, variables);
  if (!Array.isArray(reps)) return undefined;
  const onPost = entities.selectionSet?.selections;
  if (onPost?.length !== 1) return undefined;
  const fragment = onPost[0]!;
  if (fragment.kind !== Kind.INLINE_FRAGMENT || fragment.typeCondition?.name.value !== 'Post' || !noDirectives(fragment)) return undefined;
  if (fragment.selectionSet.selections.length !== 1) return undefined;
  const embedding = fragment.selectionSet.selections[0]!;
  if (embedding.kind !== Kind.FIELD || embedding.name.value !== 'embedding' || !noDirectives(embedding)) return undefined;
  let model: unknown;
  let dimensions: unknown;
  for (const a of embedding.arguments ?? []) {
    if (a.name.value === 'model') model = argumentValue(a.value, variables);
    else if (a.name.value === 'dimensions') dimensions = argumentValue(a.value, variables);
    else return undefined;
  }
  if (model !== undefined && model !== null && typeof model !== 'string') return undefined;
  if (dimensions !== undefined && dimensions !== null && !Number.isInteger(dimensions)) return undefined;
  const leaves = embedding.selectionSet?.selections;
  if (leaves?.length !== 1) return undefined;
  const leaf = leaves[0]!;
  if (leaf.kind !== Kind.FIELD || (leaf.name.value !== 'base64' && leaf.name.value !== 'vector') || !noDirectives(leaf) || (leaf.arguments?.length ?? 0) > 0) {
    return undefined;
  }
  if (!reps.every(isPlainPost)) return undefined;
  return {
    entitiesKey: keyOf(entities),
    embeddingKey: keyOf(embedding),
    embeddingNode: embedding,
    leafKey: keyOf(leaf),
    leaf: leaf.name.value,
    representations: reps,
    model: model as string | null | undefined,
    dimensions: dimensions as number | null | undefined,
  };
}

/** A literal or a variable's value; undefined for anything else (objects, lists of literals). */
function argumentValue(v: ValueNode, variables: Record<string, unknown>): unknown {
  switch (v.kind) {
    case Kind.VARIABLE:
      return variables[v.name.value];
    case Kind.STRING:
      return v.value;
    case Kind.INT:
      return Number.parseInt(v.value, 10);
    case Kind.NULL:
      return null;
    default:
      return undefined;
  }
}

/** A representation `checkRepresentation` (src/resolvers/post.ts) accepts, without images. */
function isPlainPost(r: unknown): boolean {
  if (typeof r !== 'object' || r === null || Array.isArray(r)) return false;
  const o = r as Record<string, unknown>;
  if (o['__typename'] !== 'Post') return false;
  const id = o['id'];
  if ((typeof id !== 'string' && typeof id !== 'number') || String(id).length > 1024) return false;
  const text = o['text'];
  if (text !== undefined && text !== null && typeof text !== 'string') return false;
  const urls = o['imageUrls'];
  return urls === undefined || urls === null || (Array.isArray(urls) && urls.length === 0);
}

async function run(plan: Plan, ctx: PolyrayContext, logger: Logger): Promise<GraphQLResponse | null> {
  let handle: ReturnType<PolyrayContext['scope']['model']>;
  let dims: number | undefined;
  let prompt: string;
  try {
    handle = ctx.scope.model(checkModelName(plan.model ?? ctx.catalog.defaultPostModel));
    dims = checkDimensions(handle, plan.dimensions);
    prompt = checkPrompt(handle, null, null);
  } catch {
    return null; // the resolver's own error, the ordinary way
  }
  if (handle.kind !== 'text') return null;
  const loader = ctx.scope.texts(handle, { prompt, truncate: false });
  const texts = plan.representations.map((r) => (r as { text?: string | null }).text);
  const settled = await Promise.allSettled(texts.map((t) => (typeof t === 'string' && t.trim() !== '' ? loader.load(t) : null)));
  const errors: GraphQLFormattedError[] = [];
  const loc = plan.embeddingNode.loc;
  const locations = loc ? [getLocation(loc.source, loc.start)] : undefined;
  const entities = settled.map((s, i) => {
    if (s.status === 'fulfilled') return { [plan.embeddingKey]: s.value ? leafOf(plan, s.value, dims) : null };
    const path = [plan.entitiesKey, i, plan.embeddingKey];
    const e = s.reason as unknown;
    if (isPolyrayError(e)) errors.push({ message: e.message, ...(locations ? { locations } : {}), path, extensions: { ...e.extensions, code: e.code } });
    else {
      logger.error({ err: e instanceof Error ? { message: e.message, stack: e.stack } : String(e), path }, 'internal error');
      errors.push({ message: 'Internal server error', path, extensions: { code: 'INTERNAL_SERVER_ERROR' } });
    }
    return { [plan.embeddingKey]: null };
  });
  const data = { [plan.entitiesKey]: entities };
  return {
    http: { status: undefined, headers: new HeaderMap() },
    body: { kind: 'single', singleResult: errors.length > 0 ? { errors, data } : { data } },
  };
}

function leafOf(plan: Plan, r: EmbedResult, dims: number | undefined): Record<string, string | number[]> {
  const v = truncate(r.vector, dims);
  return { [plan.leafKey]: plan.leaf === 'base64' ? encodeWire(v, 'FLOAT32') : Array.from(v) };
}
