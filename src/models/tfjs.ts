/**
 * Reading TensorFlow.js graph models: `model.json` (a TF GraphDef as JSON plus a weights manifest) and
 * its binary weight shards, with dequantisation. No TensorFlow dependency: this is what our converter
 * (`tfjs-onnx.ts`) reads, and tests compare it against `@tensorflow/tfjs` itself.
 *
 * Owns: the TF.js file format as far as graph models go, and two ways of finding the files:
 *
 *   - a folder with `model.json` and the shard files it names (what `tensorflowjs_converter` writes);
 *   - JavaScript modules that embed them (what the npm package `nsfwjs` ships: `model.min.js` exports
 *     the parsed model.json, each `group1-shardNofM.min.js` exports its shard as a base64 string).
 *
 * Weights: the manifest lists weight groups; a group's shards are concatenated and the weights follow
 * one another in manifest order. A quantised weight is stored as `quantization.dtype` and restored
 * exactly as tfjs-core's `decodeWeights` restores it: uint8/uint16 `value = q · scale + min`
 * (computed in float64, stored as float32), float16 by IEEE half → single conversion (exact; `cache/codec.ts`).
 */

import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

import { float16BitsToFloat32 } from '../cache/codec.ts';

/** A node attribute as TF.js JSON writes it (a protobuf AttrValue in JSON form). */
export interface TfAttrValue {
  s?: string; // base64
  i?: string | number;
  f?: number;
  b?: boolean;
  type?: string;
  shape?: { dim?: { size?: string | number }[]; unknownRank?: boolean };
  tensor?: unknown;
  list?: { s?: string[]; i?: (string | number)[]; f?: number[]; b?: boolean[]; type?: string[] };
  func?: unknown;
}

export interface TfNode {
  name: string;
  op: string;
  input?: string[];
  attr?: Record<string, TfAttrValue>;
  device?: string;
}

export interface TfWeightSpec {
  name: string;
  shape: number[];
  dtype: 'float32' | 'int32' | 'bool' | 'string' | 'complex64';
  quantization?: { dtype: 'uint8' | 'uint16' | 'float16'; min?: number; scale?: number };
}

export interface TfWeightGroup {
  paths: string[];
  weights: TfWeightSpec[];
}

export interface TfjsModelJson {
  format?: string;
  generatedBy?: string;
  convertedBy?: string;
  modelTopology: { node: TfNode[]; versions?: unknown; library?: unknown };
  weightsManifest: TfWeightGroup[];
  userDefinedMetadata?: Record<string, unknown>;
}

/** A decoded weight: float32 or int32 values, row-major in TF's layout. */
export interface TfWeight {
  name: string;
  shape: number[];
  dtype: 'float32' | 'int32';
  values: Float32Array | Int32Array;
}

/** A graph model with its weights decoded. */
export interface TfjsGraph {
  json: TfjsModelJson;
  nodes: Map<string, TfNode>;
  weights: Map<string, TfWeight>;
  /** Raw concatenated weight bytes per group, in manifest order (what tfjs itself loads). */
  weightData: Uint8Array;
}

// ---------------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------------

function bytesToString(b64: string): string {
  return Buffer.from(b64, 'base64').toString('utf8');
}

export const attrs = {
  string(node: TfNode, name: string, def?: string): string {
    const a = node.attr?.[name];
    if (a?.s !== undefined) return bytesToString(a.s);
    if (def !== undefined) return def;
    throw new Error(`TF node ${node.name} (${node.op}) has no string attribute "${name}"`);
  },
  strings(node: TfNode, name: string): string[] {
    return (node.attr?.[name]?.list?.s ?? []).map(bytesToString);
  },
  ints(node: TfNode, name: string, def?: number[]): number[] {
    const l = node.attr?.[name]?.list?.i;
    if (l !== undefined) return l.map(Number);
    if (def !== undefined) return def;
    throw new Error(`TF node ${node.name} (${node.op}) has no int list attribute "${name}"`);
  },
  int(node: TfNode, name: string, def?: number): number {
    const v = node.attr?.[name]?.i;
    if (v !== undefined) return Number(v);
    if (def !== undefined) return def;
    throw new Error(`TF node ${node.name} (${node.op}) has no int attribute "${name}"`);
  },
  float(node: TfNode, name: string, def: number): number {
    return node.attr?.[name]?.f ?? def;
  },
  bool(node: TfNode, name: string, def: boolean): boolean {
    return node.attr?.[name]?.b ?? def;
  },
};

/** A node input reference: `name`, `name:k` (k-th output) or `^name` (control dependency). */
export function parseInputRef(ref: string): { node: string; output: number; control: boolean } {
  const control = ref.startsWith('^');
  const body = control ? ref.slice(1) : ref;
  const m = /^(.*):(\d+)$/.exec(body);
  return m ? { node: m[1]!, output: Number(m[2]), control } : { node: body, output: 0, control };
}

/** Data inputs of a node (control dependencies dropped). */
export function dataInputs(node: TfNode): string[] {
  return (node.input ?? [])
    .filter((r) => !r.startsWith('^'))
    .map((r) => {
      const p = parseInputRef(r);
      if (p.output !== 0) throw new Error(`TF node ${node.name}: input ${r} reads output ${p.output}; only single-output producers are supported`);
      return p.node;
    });
}

// ---------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------

const STORED_SIZE: Record<string, number> = { float32: 4, int32: 4, bool: 1, uint8: 1, uint16: 2, float16: 2 };

function count(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * Decodes every weight of a manifest from the concatenated bytes of each group's shards. Throws when
 * the bytes do not add up to what the manifest describes.
 */
export function decodeWeights(manifest: readonly TfWeightGroup[], groupBytes: readonly Uint8Array[]): Map<string, TfWeight> {
  const out = new Map<string, TfWeight>();
  manifest.forEach((group, gi) => {
    const bytes = groupBytes[gi]!;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let offset = 0;
    for (const spec of group.weights) {
      const n = count(spec.shape);
      const q = spec.quantization;
      const stored = q ? q.dtype : spec.dtype;
      const size = STORED_SIZE[stored];
      if (size === undefined) throw new Error(`weight ${spec.name}: unsupported stored dtype ${stored}`);
      const byteLength = n * size;
      if (offset + byteLength > bytes.byteLength) {
        throw new Error(`weight ${spec.name} needs bytes ${offset}..${offset + byteLength} but group ${gi} has ${bytes.byteLength}`);
      }
      if (spec.dtype !== 'float32' && spec.dtype !== 'int32') throw new Error(`weight ${spec.name}: dtype ${spec.dtype} is not supported`);
      const values = spec.dtype === 'float32' ? new Float32Array(n) : new Int32Array(n);
      if (q && (q.dtype === 'uint8' || q.dtype === 'uint16')) {
        if (typeof q.scale !== 'number' || typeof q.min !== 'number') throw new Error(`weight ${spec.name}: ${q.dtype} quantisation needs scale and min`);
        const { scale, min } = q;
        for (let i = 0; i < n; i++) {
          const v = q.dtype === 'uint8' ? view.getUint8(offset + i) : view.getUint16(offset + 2 * i, true);
          // tfjs-core rounds to the nearest integer for int32 weights and keeps float32 as is.
          values[i] = spec.dtype === 'int32' ? Math.round(v * scale + min) : v * scale + min;
        }
      } else if (q && q.dtype === 'float16') {
        for (let i = 0; i < n; i++) values[i] = float16BitsToFloat32(view.getUint16(offset + 2 * i, true));
      } else if (q) {
        throw new Error(`weight ${spec.name}: unknown quantisation dtype ${String((q as { dtype: unknown }).dtype)}`);
      } else if (spec.dtype === 'float32') {
        for (let i = 0; i < n; i++) values[i] = view.getFloat32(offset + 4 * i, true);
      } else {
        for (let i = 0; i < n; i++) values[i] = view.getInt32(offset + 4 * i, true);
      }
      out.set(spec.name, { name: spec.name, shape: [...spec.shape], dtype: spec.dtype, values });
      offset += byteLength;
    }
    if (offset !== bytes.byteLength) throw new Error(`weight group ${gi}: manifest describes ${offset} bytes, shards hold ${bytes.byteLength}`);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

/** Where a TF.js graph model lives. */
export type TfjsSource =
  /** A folder holding `model.json` (or `modelFile`) and the shard files the manifest names. */
  | { kind: 'dir'; dir: string; modelFile?: string }
  /**
   * CommonJS modules embedding the files: `modelModule` exports the parsed model.json; the shard named
   * `p` in the manifest is the module `<dir of modelModule>/<p><shardSuffix>`, exporting base64 (or bytes).
   */
  | { kind: 'js-modules'; modelModule: string; shardSuffix: string };

/** The bytes a shard module exports: a base64 string, bytes, a number array, or any of them as `default`. */
function shardExportBytes(value: unknown, where: string): Uint8Array {
  const v = typeof value === 'object' && value !== null && 'default' in value ? (value as { default: unknown }).default : value;
  if (typeof v === 'string') return new Uint8Array(Buffer.from(v, 'base64'));
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (Array.isArray(v) && v.every((x) => typeof x === 'number')) return Uint8Array.from(v as number[]);
  throw new Error(`${where}: a shard module must export base64 text or bytes`);
}

function checkModelJson(value: unknown, where: string): TfjsModelJson {
  const v = (
    typeof value === 'object' && value !== null && 'default' in value && !('modelTopology' in value) ? (value as { default: unknown }).default : value
  ) as Partial<TfjsModelJson>;
  if (!v || typeof v !== 'object' || !v.modelTopology || !Array.isArray(v.modelTopology.node) || !Array.isArray(v.weightsManifest)) {
    throw new Error(`${where}: not a TF.js graph model (needs modelTopology.node and weightsManifest)`);
  }
  return v as TfjsModelJson;
}

/** Reads a TF.js graph model and decodes its weights. */
export async function loadTfjsGraph(source: TfjsSource): Promise<TfjsGraph> {
  let json: TfjsModelJson;
  let groupBytes: Uint8Array[];
  if (source.kind === 'dir') {
    const modelPath = path.join(source.dir, source.modelFile ?? 'model.json');
    json = checkModelJson(JSON.parse(await readFile(modelPath, 'utf8')), modelPath);
    groupBytes = await Promise.all(
      json.weightsManifest.map(async (g) => concat(await Promise.all(g.paths.map(async (p) => new Uint8Array(await readFile(path.join(source.dir, p))))))),
    );
  } else {
    const require = createRequire(import.meta.url);
    json = checkModelJson(require(source.modelModule), source.modelModule);
    const dir = path.dirname(source.modelModule);
    groupBytes = json.weightsManifest.map((g) =>
      concat(
        g.paths.map((p) => {
          const file = path.join(dir, `${p}${source.shardSuffix}`);
          return shardExportBytes(require(file), file);
        }),
      ),
    );
  }
  const weights = decodeWeights(json.weightsManifest, groupBytes);
  const nodes = new Map<string, TfNode>();
  for (const n of json.modelTopology.node) {
    if (nodes.has(n.name)) throw new Error(`TF graph has two nodes named ${n.name}`);
    nodes.set(n.name, n);
  }
  return { json, nodes, weights, weightData: concat(groupBytes) };
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(parts.reduce((s, p) => s + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}
