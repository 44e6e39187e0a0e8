/**
 * A compiled route for the operation a supergraph sends most: a batch of posts asking for their embedding,
 *
 *   query($r: [_Any!]!) { _entities(representations: $r) { ... on Post { embedding(model: "m", dimensions: 64) { base64 } } } }
 *
 * (`vector` instead of `base64`, aliases, `model` and `dimensions` as literals or variables). It answers in
 * front of Apollo, from the parsed body: a document is parsed and validated once and kept (by its text),
 * and each request costs variable coercion, the operation limits, one pipeline call and the writing of the
 * reply. graphql-js would resolve every entity field by field (a promise, argument coercion and a completion
 * per field, one `Float` serialisation per component of a `vector`), and Apollo would run its request
 * pipeline and plugin hooks around it; this route makes the call the `Post.embedding` resolver's loader
 * makes (the same batches, pipeline and account) and writes the same response: the same data, the same
 * errors at the same paths with the same codes (`formatError`'s shape for a PolyrayError), `extensions.cost`,
 * and the same `Cache-Control` (src/resolvers/http-cache.ts). A base64 reply is written straight into one
 * buffer: no `JSON.stringify` of the vectors, no second pass to measure the body.
 * Tests compare the two ways on every shape (test/fast-entities.test.ts).
 *
 * Anything else is Apollo's: another selection, directives, fragments, an invalid document or variables, a
 * representation that is not a valid Post, a model or argument the resolver would refuse (its error is the
 * resolver's), a model that does not read text, an operation over the limits, an `Accept` that does not
 * take JSON, persisted queries (`extensions`), a gateway asking for a federated trace
 * (`apollo-federation-include-trace`), and every request while OpenTelemetry tracing is on (its spans come
 * from Apollo's hooks). The route takes the request's scope (and so authenticates) only once it knows it
 * can answer; the scope is the one Apollo's context then gets, so a refused key is counted once.
 */
import type { IncomingHttpHeaders } from 'node:http';
import {
  type DocumentNode,
  type FieldNode,
  type FragmentDefinitionNode,
  getLocation,
  type GraphQLFormattedError,
  type GraphQLSchema,
  getVariableValues,
  GraphQLScalarType,
  isScalarType,
  Kind,
  type OperationDefinitionNode,
  parse,
  validate,
  type ValueNode,
} from 'graphql';
import { LRUCache } from 'lru-cache';
import Negotiator from 'negotiator';
import type { AccountContext } from '../accounting/request.ts';
import { encodeWire } from '../cache/codec.ts';
import { isPolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { RequestScope } from '../service/scope.ts';
import type { EmbedResult, MemoStats } from '../service/types.ts';
import { checkDimensions, checkModelName, checkPrompt } from './args.ts';
import { cacheableOperation } from './http-cache.ts';
import type { OperationChecker } from './limits.ts';
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

const noDirectives = (n: { directives?: readonly unknown[] | undefined }): boolean => (n.directives?.length ?? 0) === 0;
const keyOf = (f: FieldNode): string => f.alias?.value ?? f.name.value;

/**
 * The plan of an operation of the one shape with these (coerced) variables, or undefined. `shapeOnly`: the
 * selections alone are checked (a document before any request; the plan's values are not meaningful).
 */
export function planOf(op: OperationDefinitionNode, variables: Record<string, unknown>, shapeOnly = false): Plan | undefined {
  if (op.operation !== 'query' || !noDirectives(op) || op.selectionSet.selections.length !== 1) return undefined;
  const entities = op.selectionSet.selections[0]!;
  if (entities.kind !== Kind.FIELD || entities.name.value !== '_entities' || !noDirectives(entities)) return undefined;
  if (entities.arguments?.length !== 1 || entities.arguments[0]!.name.value !== 'representations') return undefined;
  const reps = argumentValue(entities.arguments[0]!.value, variables);
  if (!shapeOnly && !Array.isArray(reps)) return undefined;
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
  if (!shapeOnly && model !== undefined && model !== null && typeof model !== 'string') return undefined;
  if (!shapeOnly && dimensions !== undefined && dimensions !== null && !Number.isInteger(dimensions)) return undefined;
  const leaves = embedding.selectionSet?.selections;
  if (leaves?.length !== 1) return undefined;
  const leaf = leaves[0]!;
  if (leaf.kind !== Kind.FIELD || (leaf.name.value !== 'base64' && leaf.name.value !== 'vector') || !noDirectives(leaf) || (leaf.arguments?.length ?? 0) > 0) {
    return undefined;
  }
  if (!shapeOnly && !(reps as unknown[]).every(isPlainPost)) return undefined;
  return {
    entitiesKey: keyOf(entities),
    embeddingKey: keyOf(embedding),
    embeddingNode: embedding,
    leafKey: keyOf(leaf),
    leaf: leaf.name.value,
    representations: shapeOnly ? [] : (reps as unknown[]),
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

/** A vector's reply texts, as far as asked for. */
interface VectorTexts {
  base64?: string;
  json?: string;
}

/** A reply the route wrote. */
export interface EntityAnswer {
  contentType: string;
  cacheControl: string;
  body: Buffer;
}

export interface EntityRouteOptions {
  /** The served schema: documents are validated against it, variables coerced by it. */
  schema: GraphQLSchema;
  /** The operation limits (src/resolvers/limits.ts), checked as Apollo's plugin checks them. */
  limits: OperationChecker;
  /** Apollo's `parseOptions.maxTokens` (POLYRAY_MAX_DOCUMENT_TOKENS). */
  maxDocumentTokens: number;
  /** POLYRAY_HTTP_CACHE_MAX_AGE_S (0: `no-store` always). */
  cacheMaxAgeS: number;
  defaultPostModel: string;
  logger: Logger;
  stats?: FastPathStats;
  /** Bytes of vectors' reply text (base64, JSON) kept (POLYRAY_VECTOR_TEXT_MEMO_MB; 0: none). */
  vectorTextMemoBytes?: number;
}

/** What the route keeps of a document text: its one operation, or false when the route does not take it. */
type Compiled =
  | {
      operation: OperationDefinitionNode;
      cacheable: boolean;
      /** The one variable when the operation declares only `$name: [_Any!]!` (no default): see `#variables`. */
      onlyRepresentations: string | undefined;
    }
  | false;

/** Documents kept, by text; longer texts are not kept (nor taken). */
const DOCUMENTS = 512;
const MAX_QUERY_CHARS = 4096;
const NO_FRAGMENTS: ReadonlyMap<string, FragmentDefinitionNode> = new Map();
const JSON_TYPES = ['application/json; charset=utf-8', 'application/graphql-response+json; charset=utf-8', 'application/json'];

export class EntityRoute {
  readonly #o: EntityRouteOptions;
  readonly #documents = new LRUCache<string, { c: Compiled }>({ max: DOCUMENTS });
  /** `Accept` values seen, and the content type Apollo would answer with (null: none, Apollo refuses). */
  readonly #accepts = new LRUCache<string, { type: string | null }>({ max: 64 });
  readonly stats: FastPathStats;
  /**
   * A full-size vector's reply text (base64, JSON), by the vector the cache answered with (the same object on
   * every memory hit): a hot vector is encoded once instead of once per answer. Bounded in bytes, the vector
   * counted.
   */
  readonly #texts: LRUCache<Float32Array, VectorTexts> | undefined;

  /** Whether the schema's `_Any` parses a value as it is (graphql-js's default, as @apollo/subgraph defines it). */
  readonly #anyAsIs: boolean;

  constructor(options: EntityRouteOptions) {
    this.#o = options;
    const any = options.schema.getType('_Any');
    this.#anyAsIs = isScalarType(any) && any.parseValue === new GraphQLScalarType({ name: 'Default' }).parseValue;
    this.stats = options.stats ?? { served: 0 };
    const memo = options.vectorTextMemoBytes ?? 0;
    this.#texts =
      memo > 0
        ? new LRUCache<Float32Array, VectorTexts>({ maxSize: memo, sizeCalculation: (t, v) => (t.base64?.length ?? 0) + (t.json?.length ?? 0) + v.byteLength })
        : undefined;
  }

  /**
   * The reply to a POST /graphql with a parsed JSON `body`, or undefined when Apollo is to answer it.
   * `scope` makes (or fails to make) the request's scope; it is called only once the route will answer.
   */
  async answer(body: unknown, headers: IncomingHttpHeaders, scope: () => RequestScope<AccountContext>): Promise<EntityAnswer | undefined> {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) return undefined;
    const { query, variables, operationName, extensions } = body as Record<string, unknown>;
    if (typeof query !== 'string' || query.length > MAX_QUERY_CHARS || (extensions !== undefined && extensions !== null)) return undefined;
    if (operationName !== undefined && operationName !== null && typeof operationName !== 'string') return undefined;
    if (variables !== undefined && variables !== null && (typeof variables !== 'object' || Array.isArray(variables))) return undefined;
    if (headers['apollo-federation-include-trace'] !== undefined || !isJsonBody(headers['content-type'])) return undefined;
    const contentType = this.#contentType(headers['accept']);
    if (!contentType) return undefined;
    const compiled = this.#compile(query);
    if (!compiled || (operationName && compiled.operation.name?.value !== operationName)) return undefined;
    const raw = (variables ?? {}) as Record<string, unknown>;
    const coerced = this.#variables(compiled, raw);
    if (!coerced) return undefined;
    const plan = planOf(compiled.operation, coerced);
    if (!plan) return undefined;
    try {
      this.#o.limits.check(compiled.operation, NO_FRAGMENTS, raw);
    } catch {
      return undefined; // Apollo refuses it the same way, with the same code
    }
    let s: RequestScope<AccountContext>;
    let handle: ReturnType<RequestScope['model']>;
    let dims: number | undefined;
    let prompt: string;
    try {
      s = scope();
      handle = s.model(checkModelName(plan.model ?? this.#o.defaultPostModel));
      dims = checkDimensions(handle, plan.dimensions);
      prompt = checkPrompt(handle, null, null);
    } catch {
      return undefined; // the context's or the resolver's own error, the ordinary way
    }
    if (handle.kind !== 'text') return undefined;
    // The texts the resolver would load (a post without one, or with only spaces, embeds to null).
    const texts = plan.representations.map((r) => {
      const t = (r as { text?: unknown }).text;
      return typeof t === 'string' && t.trim() !== '' ? t : null;
    });
    const wanted = texts.filter((t): t is string => t !== null);
    const results = wanted.length > 0 ? await s.embedTexts(handle, wanted, { prompt, truncate: false }) : [];
    let j = 0;
    const answers = texts.map((t) => (t === null ? null : results[j++]!));
    const errors = this.#errors(plan, answers);
    const cost = await s.account.close(String(errors[0]?.extensions?.['code'] ?? 'OK'));
    this.stats.served++;
    const cacheControl = this.#cacheControl(compiled.cacheable && errors.length === 0, s.account.cacheNamespace);
    const leaves = answers.map((a) => (a && !(a instanceof Error) ? this.#leafText(plan.leaf, a, dims) : null));
    const bodyOut = assemble(plan, leaves, plan.leaf === 'base64' ? '"' : '', cost, errors);
    return { contentType, cacheControl, body: bodyOut };
  }

  /** The memo's size, for `polyray_memo_*`. */
  memo(): MemoStats {
    const m = this.#texts;
    return { memo: 'vector_text', entries: m?.size ?? 0, bytes: m?.calculatedSize ?? 0, maxBytes: m?.maxSize ?? 0 };
  }

  /**
   * A vector's text in the reply: base64 of its float32 bytes (`encodeWire`), or its JSON (`[0.1,-0.2,…]`,
   * as JSON.stringify writes it). Full-size vectors' texts are remembered.
   */
  #leafText(leaf: Plan['leaf'], r: EmbedResult, dims: number | undefined): string {
    const v = truncate(r.vector, dims);
    const memo = v === r.vector ? this.#texts : undefined;
    const kept = memo?.get(v);
    if (leaf === 'base64') {
      if (kept?.base64 !== undefined) return kept.base64;
      const text = encodeWire(v, 'FLOAT32');
      memo?.set(v, { ...kept, base64: text });
      return text;
    }
    if (kept?.json !== undefined) return kept.json;
    const text = JSON.stringify(Array.from(v));
    memo?.set(v, { ...kept, json: text });
    return text;
  }

  /** The document's one operation when the route may take it; parsed and validated once per text. */
  #compile(query: string): Exclude<Compiled, false> | undefined {
    let kept = this.#documents.get(query);
    if (!kept) {
      kept = { c: this.#compileNew(query) };
      this.#documents.set(query, kept);
    }
    return kept.c || undefined;
  }

  #compileNew(query: string): Compiled {
    let document: DocumentNode;
    try {
      document = parse(query, { maxTokens: this.#o.maxDocumentTokens });
    } catch {
      return false;
    }
    if (document.definitions.length !== 1) return false;
    const operation = document.definitions[0]!;
    if (operation.kind !== Kind.OPERATION_DEFINITION || operation.operation !== 'query') return false;
    // A shape the route cannot answer is not worth validating.
    if (!planOf(operation, {}, true)) return false;
    if (validate(this.#o.schema, document).length > 0) return false;
    return { operation, cacheable: cacheableOperation(operation, NO_FRAGMENTS), onlyRepresentations: onlyRepresentations(operation) };
  }

  /**
   * The variables as graphql-js coerces them (undefined when it would refuse them). For the operation a
   * gateway sends, whose one variable is `[_Any!]!`, a list of non-null values coerces to itself (`_Any`
   * parses any value as it is), so it is taken as it is: the general coercion walks every representation.
   */
  #variables(compiled: Exclude<Compiled, false>, raw: Record<string, unknown>): Record<string, unknown> | undefined {
    const name = compiled.onlyRepresentations;
    if (name !== undefined && this.#anyAsIs) {
      const value = raw[name];
      if (Array.isArray(value) && value.every((v) => v !== null && v !== undefined)) return { [name]: value };
    }
    return getVariableValues(this.#o.schema, compiled.operation.variableDefinitions ?? [], raw, { maxErrors: 1 }).coerced;
  }

  #contentType(accept: string | undefined): string | undefined {
    if (accept === undefined || accept === '') return JSON_TYPES[0];
    let kept = this.#accepts.get(accept);
    if (!kept) {
      // Apollo's choice (chooseContentTypeForSingleResultResponse): the client's preference among these.
      kept = { type: new Negotiator({ headers: { accept } }).mediaType(JSON_TYPES) ?? null };
      this.#accepts.set(accept, kept);
    }
    return kept.type ?? undefined;
  }

  #cacheControl(cacheable: boolean, namespace: string | undefined): string {
    const maxAge = this.#o.cacheMaxAgeS;
    if (maxAge <= 0 || !cacheable) return 'no-store';
    return `${namespace === undefined ? 'public' : 'private'}, max-age=${maxAge}`;
  }

  /** The errors graphql-js would report, in order: one per refused input, at its entity's path. */
  #errors(plan: Plan, answers: readonly (EmbedResult | Error | null)[]): GraphQLFormattedError[] {
    const errors: GraphQLFormattedError[] = [];
    let locations: { line: number; column: number }[] | undefined;
    answers.forEach((a, i) => {
      if (!(a instanceof Error)) return;
      const loc = plan.embeddingNode.loc;
      locations ??= loc ? [getLocation(loc.source, loc.start)] : [];
      const path = [plan.entitiesKey, i, plan.embeddingKey];
      if (isPolyrayError(a)) {
        errors.push({ message: a.message, ...(locations.length > 0 ? { locations } : {}), path, extensions: { ...a.extensions, code: a.code } });
      } else {
        this.#o.logger.error({ err: { message: a.message, stack: a.stack }, path }, 'internal error');
        errors.push({ message: 'Internal server error', path, extensions: { code: 'INTERNAL_SERVER_ERROR' } });
      }
    });
    return errors;
  }
}

/** The variable's name when `op` declares exactly one variable, `[_Any!]!` without a default or directives. */
function onlyRepresentations(op: OperationDefinitionNode): string | undefined {
  const defs = op.variableDefinitions ?? [];
  if (defs.length !== 1) return undefined;
  const d = defs[0]!;
  if (d.defaultValue || (d.directives?.length ?? 0) > 0) return undefined;
  const t = d.type;
  if (t.kind !== Kind.NON_NULL_TYPE || t.type.kind !== Kind.LIST_TYPE) return undefined;
  const item = t.type.type;
  return item.kind === Kind.NON_NULL_TYPE && item.type.kind === Kind.NAMED_TYPE && item.type.name.value === '_Any' ? d.variable.name.value : undefined;
}

/** Whether the request's body was sent as JSON (the only bodies the route reads; Apollo's CSRF rule passes them). */
function isJsonBody(contentType: string | undefined): boolean {
  if (contentType === undefined || contentType.length < 16) return false;
  const head = contentType.slice(0, 16).toLowerCase();
  return head === 'application/json' && (contentType.length === 16 || contentType[16] === ';' || contentType[16] === ' ');
}

/**
 * The reply `{"errors":[…],"data":{E:[{B:{L:…}}|{B:null},…]},"extensions":{"cost":…}}` + newline (`errors`
 * only when there are some, first, as Apollo orders them), written into one buffer, each leaf's text between
 * `quote`s. Keys are GraphQL names, and leaves are base64 or JSON numbers: all ASCII, nothing to escape, so
 * each is copied as it is (no JSON.stringify of the vectors, no second pass to measure the body); an entity
 * whose input was refused is `null`.
 */
function assemble(plan: Plan, leaves: readonly (string | null)[], quote: '' | '"', cost: unknown, errors: readonly GraphQLFormattedError[]): Buffer {
  const open = `{"${plan.embeddingKey}":{"${plan.leafKey}":${quote}`;
  const close = `${quote}}}`;
  const none = `{"${plan.embeddingKey}":null}`;
  const head = `{${errors.length > 0 ? `"errors":${JSON.stringify(errors)},` : ''}"data":{"${plan.entitiesKey}":[`;
  const tail = `]},"extensions":{"cost":${JSON.stringify(cost)}}}\n`;
  let size = Buffer.byteLength(head) + Buffer.byteLength(tail) + Math.max(0, leaves.length - 1);
  for (const e of leaves) size += e === null ? none.length : open.length + e.length + close.length;
  const out = Buffer.allocUnsafe(size);
  let at = out.write(head, 0, 'utf8');
  leaves.forEach((e, i) => {
    if (i > 0) out[at++] = 0x2c; // ,
    if (e === null) at += out.write(none, at, 'latin1');
    else {
      at += out.write(open, at, 'latin1');
      at += out.write(e, at, 'latin1');
      at += out.write(close, at, 'latin1');
    }
  });
  at += out.write(tail, at, 'utf8');
  return at === size ? out : out.subarray(0, at);
}
