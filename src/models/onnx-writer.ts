/**
 * A small ONNX ModelProto writer on protobufjs 7 (reflection API, no codegen, no `onnx` dependency).
 *
 * Owns: the protobuf schema for the subset of onnx.proto our builders need, tensor/attribute
 * encoding (raw_data, little-endian), and a builder that assembles a graph node by node and
 * serialises it. It knows nothing about any particular model; `glove.ts`, `bert-graph.ts` and
 * `tfjs-onnx.ts` describe their graphs with it.
 *
 * Usage:
 *
 *   const model = new OnnxModelBuilder({ graphName: 'demo' });       // opset ai.onnx 18
 *   const g = model.graph;
 *   const x = g.input('x', 'float32', ['batch', 4]);
 *   const w = g.initializer(float32Tensor('w', new Float32Array(16), [4, 4]));
 *   const y = g.op('MatMul', [x, w]);
 *   const z = g.op('Softmax', [y], { axis: attr.int(-1) });
 *   g.output(z, 'float32', ['batch', 4], 'probs');                     // renames via Identity
 *   await model.writeFile('demo.onnx');
 *
 * The schema is `onnx-subset.proto`: onnx/onnx.proto (proto2) cut down to the fields we write, with
 * onnx.proto's names and numbers, so a reader that sees our output sees a normal ONNX file.
 * Unknown-to-us fields (sparse tensors, functions, training info) are simply absent.
 *
 * IR version: defaults to 8 (ONNX 1.13, the release that introduced opset 18); callers that need a
 * newer IR (e.g. for opset 19+ or float8 types) pass `irVersion`.
 *
 * Length: one dense concept; the schema subset, the tensor encoding and the graph builder are one format.
 */

import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import protobuf from 'protobufjs';

import { float32ToFloat16Bits } from '../cache/codec.ts';

// ---------------------------------------------------------------------------------------------
// Schema: the onnx.proto subset (onnx-subset.proto beside this file), parsed on first use.
// ---------------------------------------------------------------------------------------------

let modelType: protobuf.Type | undefined;
/** The reflected `onnx.ModelProto` type, built once on first use. keepCase: messages use onnx.proto's snake_case names. */
function modelProtoType(): protobuf.Type {
  modelType ??= protobuf
    .parse(readFileSync(new URL('./onnx-subset.proto', import.meta.url), 'utf8'), { keepCase: true })
    // Resolve every type before the first encode: protobufjs resolves field options (packed) lazily,
    // and a type encoded before its options are resolved would be written unpacked.
    .root.resolveAll()
    .lookupType('onnx.ModelProto');
  return modelType;
}

// ---------------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------------

/** Tensor element types, named as onnxruntime-node names them. */
export type ElementType =
  | 'float32'
  | 'uint8'
  | 'int8'
  | 'uint16'
  | 'int16'
  | 'int32'
  | 'int64'
  | 'string'
  | 'bool'
  | 'float16'
  | 'float64'
  | 'uint32'
  | 'uint64'
  | 'bfloat16';

/** `TensorProto.DataType` numbers. */
export const DataType: Readonly<Record<ElementType, number>> = {
  float32: 1,
  uint8: 2,
  int8: 3,
  uint16: 4,
  int16: 5,
  int32: 6,
  int64: 7,
  string: 8,
  bool: 9,
  float16: 10,
  float64: 11,
  uint32: 12,
  uint64: 13,
  bfloat16: 16,
};

/** Bytes per element in raw_data (strings have no raw form). */
const ELEMENT_SIZE: Readonly<Record<Exclude<ElementType, 'string'>, number>> = {
  float32: 4,
  uint8: 1,
  int8: 1,
  uint16: 2,
  int16: 2,
  int32: 4,
  int64: 8,
  bool: 1,
  float16: 2,
  float64: 8,
  uint32: 4,
  uint64: 8,
  bfloat16: 2,
};

/** A dimension: a fixed size, or a symbolic name shared between inputs ("batch", "sequence"). */
export type Dim = number | string;

// ---------------------------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------------------------

/** A tensor value ready to be written: element type, shape and little-endian raw bytes. */
export interface TensorValue {
  name: string;
  type: Exclude<ElementType, 'string'>;
  dims: readonly number[];
  /** Little-endian element bytes, row-major; length = product(dims) * element size. */
  raw: Uint8Array;
  docString?: string;
}

const HOST_IS_LE = endianness() === 'LE';

/**
 * The bytes of a typed array in little-endian order. On little-endian hosts (every platform Node
 * ships for in practice) this is a zero-copy view, which matters for 100+ MB weight matrices.
 */
function littleEndianBytes(view: ArrayBufferView, elementSize: number): Uint8Array {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  if (HOST_IS_LE || elementSize === 1) return bytes;
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += elementSize) {
    for (let k = 0; k < elementSize; k++) out[i + k] = bytes[i + elementSize - 1 - k]!;
  }
  return out;
}

function elementCount(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) {
    if (!Number.isSafeInteger(d) || d < 0) throw new Error(`tensor dims must be non-negative integers, got [${dims.join(', ')}]`);
    n *= d;
  }
  return n;
}

/** A tensor from raw little-endian bytes; checks the byte length against the shape. */
export function rawTensor(name: string, type: Exclude<ElementType, 'string'>, dims: readonly number[], raw: Uint8Array): TensorValue {
  const expected = elementCount(dims) * ELEMENT_SIZE[type];
  if (raw.byteLength !== expected) {
    throw new Error(`tensor "${name}": ${type}[${dims.join(', ')}] needs ${expected} bytes, got ${raw.byteLength}`);
  }
  return { name, type, dims: [...dims], raw };
}

/** A float32 tensor. A Float32Array is used without copying (on little-endian hosts). */
export function float32Tensor(name: string, data: Float32Array | readonly number[], dims: readonly number[]): TensorValue {
  const arr = data instanceof Float32Array ? data : Float32Array.from(data);
  return rawTensor(name, 'float32', dims, littleEndianBytes(arr, 4));
}

/** A float16 tensor from float32 values (rounded to nearest even; see `float32ToFloat16Bits`). */
export function float16Tensor(name: string, data: Float32Array | readonly number[], dims: readonly number[]): TensorValue {
  const bits = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) bits[i] = float32ToFloat16Bits(data[i]!);
  return rawTensor(name, 'float16', dims, littleEndianBytes(bits, 2));
}

/** An int32 tensor. */
export function int32Tensor(name: string, data: Int32Array | readonly number[], dims: readonly number[]): TensorValue {
  const arr = data instanceof Int32Array ? data : Int32Array.from(data);
  return rawTensor(name, 'int32', dims, littleEndianBytes(arr, 4));
}

/** An int64 tensor; plain numbers must be safe integers. */
export function int64Tensor(name: string, data: BigInt64Array | readonly (number | bigint)[], dims: readonly number[]): TensorValue {
  const arr = data instanceof BigInt64Array ? data : BigInt64Array.from(data, toBigInt);
  return rawTensor(name, 'int64', dims, littleEndianBytes(arr, 8));
}

function toBigInt(v: number | bigint): bigint {
  if (typeof v === 'bigint') return v;
  if (!Number.isSafeInteger(v)) throw new Error(`int64 value must be a safe integer, got ${v}`);
  return BigInt(v);
}

// ---------------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------------

/**
 * A node attribute. Tagged, because a JS number alone cannot say whether ONNX wants INT or FLOAT
 * (e.g. Gather's `axis` must be INT, LayerNormalization's `epsilon` must be FLOAT).
 */
export type AttributeValue =
  | { kind: 'int'; value: number | bigint }
  | { kind: 'ints'; value: readonly (number | bigint)[] }
  | { kind: 'float'; value: number }
  | { kind: 'floats'; value: readonly number[] }
  | { kind: 'string'; value: string }
  | { kind: 'strings'; value: readonly string[] }
  | { kind: 'tensor'; value: TensorValue };

/** Constructors for attribute values: `{ axis: attr.int(0), epsilon: attr.float(1e-12) }`. */
export const attr = {
  int: (value: number | bigint): AttributeValue => ({ kind: 'int', value }),
  ints: (value: readonly (number | bigint)[]): AttributeValue => ({ kind: 'ints', value }),
  float: (value: number): AttributeValue => ({ kind: 'float', value }),
  floats: (value: readonly number[]): AttributeValue => ({ kind: 'floats', value }),
  string: (value: string): AttributeValue => ({ kind: 'string', value }),
  strings: (value: readonly string[]): AttributeValue => ({ kind: 'strings', value }),
  tensor: (value: TensorValue): AttributeValue => ({ kind: 'tensor', value }),
} as const;

/** `AttributeProto.AttributeType` numbers. */
const AttributeType = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7, STRINGS: 8 } as const;

// ---------------------------------------------------------------------------------------------
// Plain-object message shapes handed to protobufjs (snake_case = field names in the schema).
// ---------------------------------------------------------------------------------------------

/** int64 as protobufjs accepts it without precision loss: a safe number or a {low, high} pair. */
type Int64 = number | { low: number; high: number; unsigned: boolean };

function int64(v: number | bigint): Int64 {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new Error(`int64 value must be a safe integer, got ${v}`);
    return v;
  }
  // Two's complement split; protobufjs writes (low >>> 0, high >>> 0) as the 64-bit varint.
  const u = BigInt.asUintN(64, v);
  return { low: Number(u & 0xffffffffn) | 0, high: Number(u >> 32n) | 0, unsigned: false };
}

interface TensorMsg {
  name: string;
  data_type: number;
  dims: Int64[];
  raw_data: Uint8Array;
  doc_string?: string;
}
interface AttributeMsg {
  name: string;
  type: number;
  f?: number;
  i?: Int64;
  s?: Uint8Array;
  t?: TensorMsg;
  floats?: number[];
  ints?: Int64[];
  strings?: Uint8Array[];
}
interface NodeMsg {
  input: string[];
  output: string[];
  name: string;
  op_type: string;
  domain?: string;
  attribute: AttributeMsg[];
  doc_string?: string;
}
interface DimMsg {
  dim_value?: Int64;
  dim_param?: string;
}
interface ValueInfoMsg {
  name: string;
  type: { tensor_type: { elem_type: number; shape?: { dim: DimMsg[] } } };
  doc_string?: string;
}
interface GraphMsg {
  name: string;
  node: NodeMsg[];
  initializer: TensorMsg[];
  input: ValueInfoMsg[];
  output: ValueInfoMsg[];
  value_info: ValueInfoMsg[];
  doc_string?: string;
}
interface ModelMsg {
  ir_version: Int64;
  opset_import: { domain: string; version: Int64 }[];
  producer_name: string;
  producer_version: string;
  domain?: string;
  model_version?: Int64;
  doc_string?: string;
  graph: GraphMsg;
  metadata_props: { key: string; value: string }[];
}

const utf8 = new TextEncoder();

function tensorMsg(t: TensorValue): TensorMsg {
  const msg: TensorMsg = { name: t.name, data_type: DataType[t.type], dims: t.dims.map(int64), raw_data: t.raw };
  if (t.docString !== undefined) msg.doc_string = t.docString;
  return msg;
}

function attributeMsg(name: string, a: AttributeValue): AttributeMsg {
  switch (a.kind) {
    case 'int':
      return { name, type: AttributeType.INT, i: int64(a.value) };
    case 'ints':
      return { name, type: AttributeType.INTS, ints: a.value.map(int64) };
    case 'float':
      return { name, type: AttributeType.FLOAT, f: a.value };
    case 'floats':
      return { name, type: AttributeType.FLOATS, floats: [...a.value] };
    case 'string':
      return { name, type: AttributeType.STRING, s: utf8.encode(a.value) };
    case 'strings':
      return { name, type: AttributeType.STRINGS, strings: a.value.map((s) => utf8.encode(s)) };
    case 'tensor':
      return { name, type: AttributeType.TENSOR, t: tensorMsg(a.value) };
  }
}

function valueInfoMsg(name: string, type: ElementType, shape: readonly Dim[] | undefined, docString?: string): ValueInfoMsg {
  const tensorType: ValueInfoMsg['type']['tensor_type'] = { elem_type: DataType[type] };
  if (shape !== undefined) {
    tensorType.shape = {
      dim: shape.map((d): DimMsg => (typeof d === 'number' ? { dim_value: int64(d) } : { dim_param: d })),
    };
  }
  const msg: ValueInfoMsg = { name, type: { tensor_type: tensorType } };
  if (docString !== undefined) msg.doc_string = docString;
  return msg;
}

// ---------------------------------------------------------------------------------------------
// Graph builder
// ---------------------------------------------------------------------------------------------

export interface NodeOptions {
  /** Node attributes by name. */
  attributes?: Readonly<Record<string, AttributeValue>>;
  /** Output value names, or how many to generate (default: one generated name). */
  outputs?: readonly string[] | number;
  /** Node name; generated from the op type when absent. */
  name?: string;
  /** Operator domain; '' (ai.onnx) when absent. Must be imported on the model (see `importOpset`). */
  domain?: string;
  docString?: string;
}

/**
 * Assembles a GraphProto. Values are named strings; every method that creates a value returns its
 * name so graphs read as straight-line code. The builder checks SSA form as it goes (each value
 * defined once, every node input already defined) because ONNX Runtime's error for a dangling
 * name is far from the line that caused it.
 */
export class OnnxGraphBuilder {
  readonly name: string;
  docString: string | undefined;
  readonly #nodes: NodeMsg[] = [];
  readonly #initializers: TensorMsg[] = [];
  readonly #inputs: ValueInfoMsg[] = [];
  readonly #outputs: ValueInfoMsg[] = [];
  readonly #valueInfos: ValueInfoMsg[] = [];
  readonly #defined = new Set<string>();
  readonly #usedDomains = new Set<string>();
  readonly #counters = new Map<string, number>();

  constructor(name: string) {
    this.name = name;
  }

  /** A fresh value/node name with the given prefix ("matmul_3"), distinct from all defined names. */
  uniqueName(prefix: string): string {
    for (;;) {
      const n = this.#counters.get(prefix) ?? 0;
      this.#counters.set(prefix, n + 1);
      const candidate = `${prefix}_${n}`;
      if (!this.#defined.has(candidate)) return candidate;
    }
  }

  /** Declares a graph input. */
  input(name: string, type: ElementType, shape: readonly Dim[], docString?: string): string {
    this.#define(name);
    this.#inputs.push(valueInfoMsg(name, type, shape, docString));
    return name;
  }

  /**
   * Declares a graph output. When `publicName` differs from `value`, an Identity node gives the
   * value its public name, so internal naming never leaks into the model's interface.
   */
  output(value: string, type: ElementType, shape: readonly Dim[], publicName: string = value, docString?: string): string {
    this.#requireDefined(value, 'graph output');
    let name = value;
    if (publicName !== value) name = this.op('Identity', [value], {}, { outputs: [publicName] });
    this.#outputs.push(valueInfoMsg(name, type, shape, docString));
    return name;
  }

  /** Adds a constant tensor (weights, shape constants). Returns its name. */
  initializer(tensor: TensorValue): string {
    this.#define(tensor.name);
    this.#initializers.push(tensorMsg(tensor));
    return tensor.name;
  }

  /** Shorthand: a float32 initializer. */
  float32(name: string, data: Float32Array | readonly number[], dims: readonly number[]): string {
    return this.initializer(float32Tensor(name, data, dims));
  }

  /** Shorthand: an int64 initializer (axes, shapes). */
  int64(name: string, data: BigInt64Array | readonly (number | bigint)[], dims: readonly number[]): string {
    return this.initializer(int64Tensor(name, data, dims));
  }

  /** Optional shape annotation for an intermediate value (helps debugging in Netron). */
  annotate(value: string, type: ElementType, shape: readonly Dim[]): void {
    this.#requireDefined(value, 'value_info');
    this.#valueInfos.push(valueInfoMsg(value, type, shape));
  }

  /**
   * Appends a node and returns its output names. Nodes must be added in topological order.
   * An empty string in `inputs` marks an omitted optional input, as in ONNX.
   */
  node(opType: string, inputs: readonly string[], options: NodeOptions = {}): string[] {
    for (const i of inputs) if (i !== '') this.#requireDefined(i, `input of ${opType}`);
    const base = opType.toLowerCase();
    const outs = options.outputs;
    const outputNames = typeof outs === 'number' || outs === undefined ? Array.from({ length: outs ?? 1 }, () => this.uniqueName(base)) : [...outs];
    for (const o of outputNames) this.#define(o);
    const node: NodeMsg = {
      input: [...inputs],
      output: outputNames,
      name: options.name ?? this.uniqueName(`${base}_node`),
      op_type: opType,
      attribute: Object.entries(options.attributes ?? {}).map(([k, v]) => attributeMsg(k, v)),
    };
    const domain = options.domain ?? '';
    if (domain !== '') node.domain = domain;
    this.#usedDomains.add(domain);
    if (options.docString !== undefined) node.doc_string = options.docString;
    this.#nodes.push(node);
    return outputNames;
  }

  /** A single-output node: `g.op('Div', [a, b])`. */
  op(
    opType: string,
    inputs: readonly string[],
    attributes: Readonly<Record<string, AttributeValue>> = {},
    options: Omit<NodeOptions, 'attributes'> = {},
  ): string {
    const [out] = this.node(opType, inputs, { ...options, attributes });
    return out!;
  }

  /** Domains used by nodes so far ('' = ai.onnx). */
  domains(): ReadonlySet<string> {
    return this.#usedDomains;
  }

  /** The GraphProto as a plain object for protobufjs. */
  toMessage(): GraphMsg {
    if (this.#outputs.length === 0) throw new Error(`graph "${this.name}" has no outputs`);
    const msg: GraphMsg = {
      name: this.name,
      node: this.#nodes,
      initializer: this.#initializers,
      input: this.#inputs,
      output: this.#outputs,
      value_info: this.#valueInfos,
    };
    if (this.docString !== undefined) msg.doc_string = this.docString;
    return msg;
  }

  #define(name: string): void {
    if (name === '') throw new Error('value names must not be empty');
    if (this.#defined.has(name)) throw new Error(`value "${name}" is defined twice in graph "${this.name}"`);
    this.#defined.add(name);
  }

  #requireDefined(name: string, where: string): void {
    if (!this.#defined.has(name)) throw new Error(`${where}: value "${name}" is not defined (yet) in graph "${this.name}"`);
  }
}

// ---------------------------------------------------------------------------------------------
// Model builder
// ---------------------------------------------------------------------------------------------

export interface ModelOptions {
  graphName: string;
  /** Default 8 (ONNX 1.13, opset 18). */
  irVersion?: number;
  /** Operator sets by domain; '' is ai.onnx. Default `{ '': 18 }`. */
  opsets?: Readonly<Record<string, number>>;
  producerName?: string;
  producerVersion?: string;
  /** Reverse-DNS model namespace, e.g. "dev.polyray". */
  domain?: string;
  modelVersion?: number;
  docString?: string;
  /** Free-form key/value metadata (shown by Netron, readable via InferenceSession metadata). */
  metadata?: Readonly<Record<string, string>>;
}

export const DEFAULT_IR_VERSION = 8;
export const DEFAULT_OPSET = 18;

/** Builds a ModelProto around one graph and serialises it. */
export class OnnxModelBuilder {
  readonly graph: OnnxGraphBuilder;
  readonly #options: ModelOptions;
  readonly #opsets = new Map<string, number>();
  readonly #metadata = new Map<string, string>();

  constructor(options: ModelOptions) {
    this.#options = options;
    this.graph = new OnnxGraphBuilder(options.graphName);
    for (const [domain, version] of Object.entries(options.opsets ?? { '': DEFAULT_OPSET })) this.importOpset(domain, version);
    for (const [k, v] of Object.entries(options.metadata ?? {})) this.#metadata.set(k, v);
  }

  /** Imports an operator set, e.g. `importOpset('com.microsoft', 1)` for ORT contrib ops. */
  importOpset(domain: string, version: number): this {
    if (!Number.isSafeInteger(version) || version < 1) throw new Error(`opset version for "${domain}" must be a positive integer`);
    this.#opsets.set(domain, version);
    return this;
  }

  setMetadata(key: string, value: string): this {
    this.#metadata.set(key, value);
    return this;
  }

  /** The ModelProto as a plain object (what `serialize` encodes). */
  toMessage(): ModelMsg {
    for (const d of this.graph.domains()) {
      if (!this.#opsets.has(d)) throw new Error(`graph uses domain "${d || 'ai.onnx'}" but no opset is imported for it`);
    }
    const o = this.#options;
    const msg: ModelMsg = {
      ir_version: o.irVersion ?? DEFAULT_IR_VERSION,
      opset_import: [...this.#opsets].map(([domain, version]) => ({ domain, version })),
      producer_name: o.producerName ?? 'polyray',
      producer_version: o.producerVersion ?? '',
      graph: this.graph.toMessage(),
      metadata_props: [...this.#metadata].map(([key, value]) => ({ key, value })),
    };
    if (o.domain !== undefined) msg.domain = o.domain;
    if (o.modelVersion !== undefined) msg.model_version = o.modelVersion;
    if (o.docString !== undefined) msg.doc_string = o.docString;
    return msg;
  }

  /** Serialises the model to ONNX protobuf bytes. Weights are copied once, into the output. */
  serialize(): Uint8Array {
    const type = modelProtoType();
    return type.encode(this.toMessage() as unknown as Record<string, unknown>).finish();
  }

  /** Serialises and writes the model; returns the bytes written (e.g. for hashing). */
  async writeFile(path: string): Promise<Uint8Array> {
    const bytes = this.serialize();
    await writeFile(path, bytes);
    return bytes;
  }
}

/**
 * Decodes ONNX bytes into a plain object (int64 as numbers, bytes as Uint8Array) using the same
 * subset schema: fields outside the subset are dropped. Meant for tests and debugging.
 */
export function decodeModel(bytes: Uint8Array): Record<string, unknown> {
  const type = modelProtoType();
  return type.toObject(type.decode(bytes), { longs: Number, defaults: false, arrays: true });
}
