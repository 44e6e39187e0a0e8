/**
 * Limits per operation, checked from the document and its variables before any resolver runs (an
 * Apollo plugin, `didResolveOperation`), so a request that would be too large does no work at all:
 *
 *   inputs   every `embed` input, every `_entities` representation times the embedding / classify fields
 *            selected on it, and each `usage` / `usageAll` / `models` / `cachePolicy` field (weighted:
 *            METERED_FIELD_WEIGHT inputs each), summed over all aliases → TOO_MANY_INPUTS
 *   reply    the largest reply the selections can produce: vectors × dimensions × bytes per component of
 *            the selected encodings (JSON floats at their longest, base64 as encoded) → RESPONSE_TOO_LARGE
 *   shape    selected fields after fragment expansion (MAX_FIELDS), and nesting depth → QUERY_TOO_COMPLEX
 *
 * Per-field limits (POLYRAY_MAX_INPUTS per `embed`) still apply in the resolvers; these bound what aliases
 * and fragments multiply.
 */
import type { ApolloServerPlugin } from '@apollo/server';
import { type FieldNode, type FragmentDefinitionNode, GraphQLError, Kind, type OperationDefinitionNode, type SelectionSetNode, type ValueNode } from 'graphql';
import { ErrorCode, httpStatusOf, PolyrayError } from '../errors.ts';
import type { Catalog, PolyrayContext } from './context.ts';

export interface OperationLimits {
  /** Inputs per operation, over all aliases (`POLYRAY_MAX_OPERATION_INPUTS`). */
  maxInputs: number;
  /** Largest reply an operation may ask for, in bytes (`POLYRAY_MAX_RESPONSE_BYTES`). */
  maxResponseBytes: number;
  /** Fields selected, fragments expanded (`POLYRAY_MAX_FIELDS`). */
  maxFields: number;
  /** Selection nesting depth (`POLYRAY_MAX_DEPTH`). */
  maxDepth: number;
}

/** Inputs a metered read (`usage`, `usageAll`, `models`, `cachePolicy`) counts as. */
export const METERED_FIELD_WEIGHT = 64;
const METERED = new Set(['usage', 'usageAll', 'models', 'cachePolicy']);
/** Longest JSON form of one float32 component, e.g. `-1.2345678901234567e-10,`. */
const JSON_FLOAT_BYTES = 24;
/** Bytes of an answer's other fields (model name, source, counts) and its JSON punctuation. */
const ITEM_OVERHEAD_BYTES = 160;

type Vars = Record<string, unknown>;

interface Walk {
  fields: number;
  depth: number;
  inputs: number;
  bytes: number;
  /** Dimensions per model name, read from the catalog once per operation (not once per alias). */
  dims?: Map<string, number>;
}

function refuse(code: ErrorCode, message: string, extensions: Record<string, unknown>): never {
  const e = new PolyrayError(code, message, extensions);
  throw new GraphQLError(message, { originalError: e, extensions: { code, http: { status: httpStatusOf[code] } } });
}

/** The value of an argument (literal or variable) as plain JS; undefined when absent. */
function argValue(node: ValueNode | undefined, vars: Vars): unknown {
  if (!node) return undefined;
  switch (node.kind) {
    case Kind.VARIABLE:
      return vars[node.name.value];
    case Kind.LIST:
      return node.values.map((v) => argValue(v, vars));
    case Kind.OBJECT:
      return Object.fromEntries(node.fields.map((f) => [f.name.value, argValue(f.value, vars)]));
    case Kind.INT:
    case Kind.FLOAT:
      return Number(node.value);
    case Kind.STRING:
    case Kind.ENUM:
      return node.value;
    case Kind.BOOLEAN:
      return node.value;
    case Kind.NULL:
      return null;
    default:
      return undefined;
  }
}

const arg = (f: FieldNode, name: string, vars: Vars): unknown => argValue(f.arguments?.find((a) => a.name.value === name)?.value, vars);
const lengthOf = (v: unknown): number => (Array.isArray(v) ? v.length : v === undefined || v === null ? 0 : 1);

export class OperationChecker {
  readonly #limits: OperationLimits;
  readonly #catalog: Catalog;

  constructor(limits: OperationLimits, catalog: Catalog) {
    this.#limits = limits;
    this.#catalog = catalog;
  }

  /** Throws a GraphQLError carrying TOO_MANY_INPUTS, RESPONSE_TOO_LARGE or QUERY_TOO_COMPLEX. */
  check(operation: OperationDefinitionNode, fragments: ReadonlyMap<string, FragmentDefinitionNode>, vars: Vars): void {
    const w: Walk = { fields: 0, depth: 0, inputs: 0, bytes: 0 };
    this.#selections(operation.selectionSet, fragments, vars, w, 1, (f) => this.#root(f, fragments, vars, w));
    const l = this.#limits;
    if (w.inputs > l.maxInputs) {
      refuse(
        ErrorCode.TOO_MANY_INPUTS,
        `This operation has ${w.inputs} inputs over all its fields and aliases; the limit is ${l.maxInputs} (POLYRAY_MAX_OPERATION_INPUTS)`,
        { inputs: w.inputs, limit: l.maxInputs },
      );
    }
    if (w.bytes > l.maxResponseBytes) {
      refuse(
        ErrorCode.RESPONSE_TOO_LARGE,
        `This operation could answer up to ${w.bytes} bytes; the limit is ${l.maxResponseBytes} (POLYRAY_MAX_RESPONSE_BYTES): ask for fewer inputs, fewer dimensions or base64 instead of vector`,
        { bytes: w.bytes, limit: l.maxResponseBytes },
      );
    }
  }

  /** Walks a selection set, counting fields and depth; `onField` sees the fields of this level. */
  #selections(
    set: SelectionSetNode,
    fragments: ReadonlyMap<string, FragmentDefinitionNode>,
    vars: Vars,
    w: Walk,
    depth: number,
    onField?: (f: FieldNode) => void,
  ): void {
    const l = this.#limits;
    if (depth > l.maxDepth) refuse(ErrorCode.QUERY_TOO_COMPLEX, `Selections nest deeper than ${l.maxDepth} levels (POLYRAY_MAX_DEPTH)`, { limit: l.maxDepth });
    w.depth = Math.max(w.depth, depth);
    for (const s of set.selections) {
      if (s.kind === Kind.FIELD) {
        if (++w.fields > l.maxFields) {
          refuse(ErrorCode.QUERY_TOO_COMPLEX, `This operation selects more than ${l.maxFields} fields, fragments expanded (POLYRAY_MAX_FIELDS)`, {
            limit: l.maxFields,
          });
        }
        onField?.(s);
        if (s.selectionSet) this.#selections(s.selectionSet, fragments, vars, w, depth + 1);
      } else if (s.kind === Kind.INLINE_FRAGMENT) {
        this.#selections(s.selectionSet, fragments, vars, w, depth, onField);
      } else {
        const f = fragments.get(s.name.value);
        if (f) this.#selections(f.selectionSet, fragments, vars, w, depth, onField);
      }
    }
  }

  /** A root field: what it asks for, in inputs and reply bytes. */
  #root(f: FieldNode, fragments: ReadonlyMap<string, FragmentDefinitionNode>, vars: Vars, w: Walk): void {
    const name = f.name.value;
    if (METERED.has(name)) {
      w.inputs += METERED_FIELD_WEIGHT;
      return;
    }
    if (name === 'embed') {
      const n = lengthOf(arg(f, 'inputs', vars));
      w.inputs += n;
      w.bytes += n * this.#itemBytes(f.selectionSet, fragments, vars, this.#dims(w, arg(f, 'model', vars), arg(f, 'dimensions', vars)));
      return;
    }
    if (name === '_entities') {
      const reps = lengthOf(arg(f, 'representations', vars));
      if (!f.selectionSet) return;
      // Each embedding / classify field on the entities is one input per representation.
      const perRep = { inputs: 0, bytes: 0 };
      this.#collect(f.selectionSet, fragments, (g) => {
        const field = g.name.value;
        if (field === 'embedding') {
          perRep.inputs++;
          perRep.bytes += this.#itemBytes(
            g.selectionSet,
            fragments,
            vars,
            this.#dims(w, arg(g, 'model', vars) ?? this.#catalog.defaultPostModel, arg(g, 'dimensions', vars)),
          );
        } else if (field === 'classify') {
          perRep.inputs++;
          perRep.bytes += ITEM_OVERHEAD_BYTES * 4;
        }
      });
      w.inputs += reps * perRep.inputs;
      w.bytes += reps * perRep.bytes;
    }
  }

  /** Calls `fn` for every field of `set` at this level, through fragments. */
  #collect(set: SelectionSetNode, fragments: ReadonlyMap<string, FragmentDefinitionNode>, fn: (f: FieldNode) => void, seen = 0): void {
    if (seen > this.#limits.maxFields) return;
    for (const s of set.selections) {
      if (s.kind === Kind.FIELD) fn(s);
      else if (s.kind === Kind.INLINE_FRAGMENT) this.#collect(s.selectionSet, fragments, fn, seen + 1);
      else {
        const d = fragments.get(s.name.value);
        if (d) this.#collect(d.selectionSet, fragments, fn, seen + 1);
      }
    }
  }

  /** Components per vector: `dimensions` when asked, else the model's size (0 when unknown: the resolver refuses it). */
  #dims(w: Walk, model: unknown, dimensions: unknown): number {
    if (typeof dimensions === 'number' && dimensions > 0) return dimensions;
    if (typeof model !== 'string') return 0;
    w.dims ??= new Map(this.#catalog.models().map((m) => [m.name, m.dimensions]));
    return w.dims.get(model) ?? 0;
  }

  /** Largest reply bytes of one Embedding under `set`. */
  #itemBytes(set: SelectionSetNode | undefined, fragments: ReadonlyMap<string, FragmentDefinitionNode>, vars: Vars, dims: number): number {
    let bytes = ITEM_OVERHEAD_BYTES;
    if (!set) return bytes;
    this.#collect(set, fragments, (g) => {
      const field = g.name.value;
      if (field === 'vector') bytes += dims * JSON_FLOAT_BYTES;
      else if (field === 'base64') {
        const enc = arg(g, 'encoding', vars) ?? 'FLOAT32';
        const raw = enc === 'FLOAT16' ? dims * 2 : enc === 'INT8' ? dims : enc === 'BINARY' ? Math.ceil(dims / 8) : dims * 4;
        bytes += Math.ceil(raw / 3) * 4 + 2;
      } else bytes += 32;
    });
    return bytes;
  }
}

/** The plugin: checks every operation before execution. */
export function operationLimitsPlugin(checker: OperationChecker): ApolloServerPlugin<PolyrayContext> {
  return {
    async requestDidStart() {
      return {
        async didResolveOperation({ document, operation, request }) {
          const fragments = new Map<string, FragmentDefinitionNode>();
          for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d);
          if (operation) checker.check(operation, fragments, request.variables ?? {});
        },
      };
    },
  };
}
