/**
 * TF.js graph → ONNX: converts the part of a TensorFlow graph that computes the requested outputs into
 * nodes of an `OnnxGraphBuilder` (opset 18), running convolutions in NCHW.
 *
 * Owns: the op mapping and the layout bookkeeping. TF graphs from TF.js are NHWC; ONNX Runtime's CPU
 * convolutions want NCHW. Rather than wrap every convolution in transposes, the converter keeps each
 * 4-D activation in NCHW and remembers that it stands for an NHWC tensor:
 *
 *   - a 4-D value is `nchw` (ONNX holds it as N,C,H,W; TF means N,H,W,C) or `plain` (same in both);
 *   - convolution filters are transposed once, at conversion time (HWIO → OIHW; depthwise HWCM →
 *     (C·M)1HW with group = C);
 *   - axes of reductions, squeezes, pads, concats and softmax on `nchw` values are mapped
 *     (NHWC axis 0,1,2,3 → NCHW axis 0,2,3,1); where the result's axis order would differ from TF's,
 *     the value is transposed back to NHWC first, so outputs always have TF's layout;
 *   - constants that meet an `nchw` value in an elementwise op are transposed or reshaped to broadcast
 *     the same way.
 *
 * Op mapping (unsupported ops fail the conversion with the op's name):
 *
 *   Conv2D, _FusedConv2D                 → Conv [+ bias] [+ activation]
 *   DepthwiseConv2dNative, FusedDepthwiseConv2dNative → Conv(group = C) [+ bias] [+ activation]
 *     fused_ops: BiasAdd, then one of Relu, Relu6 (→ Clip(0, 6)), Elu, LeakyRelu, Sigmoid, Tanh
 *     padding SAME → auto_pad SAME_UPPER (TF puts the odd pixel at the end, as SAME_UPPER does),
 *     VALID → VALID, EXPLICIT → pads
 *   MatMul, _FusedMatMul                 → MatMul [+ Add] [+ activation] (transpose_a/b honoured)
 *   Add, AddV2, BiasAdd, Sub, Mul, RealDiv, Maximum, Minimum → the ONNX binary op
 *   Relu, Relu6, Elu, Sigmoid, Tanh, Identity, Softmax → the ONNX op (Softmax on the TF last axis)
 *   AvgPool, MaxPool                     → AveragePool / MaxPool (count_include_pad = 0, as TF)
 *   Mean, Max, Sum                       → ReduceMean / ReduceMax / ReduceSum (axes as inputs, opset 18)
 *   Squeeze, Reshape, Pad, PadV2, ConcatV2 → the ONNX op
 *
 * Precision: by default every float constant is float32 and so is the compute. With `precision: 'fp16'`
 * (for GPU providers) every float constant — weights, biases, Clip bounds, scalars — is written as float16
 * (rounded to nearest even), a Cast to float16 follows each graph input and a Cast to float32 precedes each
 * returned output, so the converted part computes in float16 while its interface stays float32. Integer
 * constants (axes, shapes, pads) are unchanged. The fp32 conversion is byte-for-byte what it was before
 * this option existed (the image model's version, and so its cache keys, depend on it).
 *
 * Length: one dense concept; the op table and the layout bookkeeping it depends on.
 */

import { DataType, attr, float16Tensor, float32Tensor, int64Tensor, type Dim, type OnnxGraphBuilder } from './onnx-writer.ts';
import { attrs, dataInputs, type TfNode, type TfWeight, type TfjsGraph } from './tfjs.ts';

/** NHWC axis → NCHW axis. */
const NHWC_TO_NCHW: readonly number[] = [0, 2, 3, 1];

type Layout = 'nchw' | 'plain';
interface Value {
  name: string;
  layout: Layout;
  /** Rank when known (4 for every `nchw` value). */
  rank?: number;
}

export interface ConvertInput {
  /** TF node whose value this graph input replaces (a Placeholder, or any interior node to cut there). */
  tfName: string;
  onnxName: string;
  shape: readonly Dim[];
  /** `nchw`: the ONNX input is N,C,H,W and stands for TF's N,H,W,C. `plain`: same layout in both. */
  layout: Layout;
}

/** Float type of the converted part's constants and compute; inputs and outputs are float32 either way. */
export type ConvertPrecision = 'fp32' | 'fp16';

export interface ConvertOptions {
  /** Default 'fp32'. 'fp16': float16 weights and compute between float32 inputs and outputs. */
  precision?: ConvertPrecision;
}

export interface ConvertResult {
  /** ONNX value names of the requested TF outputs (float32), in TF (NHWC) layout. */
  outputs: string[];
  /** TF ops converted, by op type (for build logs and tests). */
  ops: Record<string, number>;
}

const ACTIVATIONS = new Set(['Relu', 'Relu6', 'Elu', 'LeakyRelu', 'Sigmoid', 'Tanh']);

/**
 * Converts the subgraph of `tf` between `inputs` and `outputs` into `g`. Only the nodes the outputs
 * depend on are converted; a node named in `inputs` is replaced by that graph input.
 */
export function convertTfjsGraph(
  g: OnnxGraphBuilder,
  tf: TfjsGraph,
  inputs: readonly ConvertInput[],
  outputs: readonly string[],
  options: ConvertOptions = {},
): ConvertResult {
  const precision = options.precision ?? 'fp32';
  if (precision !== 'fp32' && precision !== 'fp16')
    throw new TypeError(`convertTfjsGraph: option "precision" must be "fp32" or "fp16", received ${JSON.stringify(precision)}`);
  return new Converter(g, tf, precision === 'fp16').run(inputs, outputs);
}

class Converter {
  readonly #g: OnnxGraphBuilder;
  readonly #tf: TfjsGraph;
  readonly #values = new Map<string, Value>();
  readonly #constNames = new Map<string, string>();
  readonly #ops: Record<string, number> = {};
  /** Float constants and compute in float16 (see the file header). */
  readonly #fp16: boolean;

  constructor(g: OnnxGraphBuilder, tf: TfjsGraph, fp16: boolean) {
    this.#g = g;
    this.#tf = tf;
    this.#fp16 = fp16;
  }

  run(inputs: readonly ConvertInput[], outputs: readonly string[]): ConvertResult {
    for (const i of inputs) {
      if (!this.#tf.nodes.has(i.tfName)) throw new Error(`TF graph has no node ${i.tfName}`);
      let name = this.#g.input(i.onnxName, 'float32', i.shape);
      if (this.#fp16)
        name = this.#g.op('Cast', [name], { to: attr.int(DataType.float16) }, { name: `${i.onnxName}_float16`, outputs: [`${i.onnxName}_float16`] });
      this.#values.set(i.tfName, { name, layout: i.layout, rank: i.shape.length });
    }
    // Topological order of what the outputs need (iterative DFS: graphs can be deep).
    const order: TfNode[] = [];
    const state = new Map<string, 'visiting' | 'done'>();
    for (const out of outputs) {
      const stack: { name: string; expanded: boolean }[] = [{ name: out, expanded: false }];
      while (stack.length > 0) {
        const top = stack[stack.length - 1]!;
        if (this.#values.has(top.name) || state.get(top.name) === 'done') {
          stack.pop();
          continue;
        }
        const node = this.#tf.nodes.get(top.name);
        if (!node) throw new Error(`TF graph has no node ${top.name}`);
        if (top.expanded) {
          stack.pop();
          state.set(top.name, 'done');
          order.push(node);
          continue;
        }
        if (state.get(top.name) === 'visiting') throw new Error(`TF graph has a cycle through ${top.name}`);
        state.set(top.name, 'visiting');
        top.expanded = true;
        for (const dep of node.op === 'Const' ? [] : dataInputs(node)) stack.push({ name: dep, expanded: false });
      }
    }
    for (const node of order) {
      if (node.op === 'Const') continue; // materialised by the consumers, in the layout they need
      if (node.op === 'Placeholder') throw new Error(`TF placeholder ${node.name} is needed but no graph input replaces it`);
      this.#ops[node.op] = (this.#ops[node.op] ?? 0) + 1;
      this.#values.set(node.name, this.#convert(node));
    }
    let names = outputs.map((o) => this.#toNhwc(this.#value(o)).name);
    if (this.#fp16) names = names.map((n) => this.#g.op('Cast', [n], { to: attr.int(DataType.float32) }, { name: this.#g.uniqueName('output_float32') }));
    return { outputs: names, ops: { ...this.#ops } };
  }

  // ---- values and constants ------------------------------------------------------------------

  #value(tfName: string): Value {
    const v = this.#values.get(tfName);
    if (v) return v;
    const node = this.#tf.nodes.get(tfName);
    if (node?.op === 'Const') {
      const w = this.#weight(tfName);
      return { name: this.#constant(tfName, w.values, w.shape, w.dtype), layout: 'plain', rank: w.shape.length };
    }
    throw new Error(`TF value ${tfName} is used before it is defined`);
  }

  #isConst(tfName: string): boolean {
    return !this.#values.has(tfName) && this.#tf.nodes.get(tfName)?.op === 'Const';
  }

  #weight(tfName: string): TfWeight {
    const w = this.#tf.weights.get(tfName);
    if (w) return w;
    throw new Error(`TF constant ${tfName} has no weight in the manifest (inline constants are not supported)`);
  }

  /** An initializer, created once per (name, variant). */
  #constant(key: string, values: Float32Array | Int32Array | BigInt64Array, dims: readonly number[], dtype: 'float32' | 'int32' | 'int64' = 'float32'): string {
    const existing = this.#constNames.get(key);
    if (existing) return existing;
    const name = this.#g.uniqueName(sanitise(key));
    if (dtype === 'float32') {
      const floats = values instanceof Float32Array ? values : Float32Array.from(values as Int32Array);
      this.#g.initializer(this.#fp16 ? float16Tensor(name, floats, dims) : float32Tensor(name, floats, dims));
    } else
      this.#g.initializer(
        int64Tensor(name, values instanceof BigInt64Array ? values : BigInt64Array.from(Array.from(values as ArrayLike<number>, (x) => BigInt(x))), dims),
      );
    this.#constNames.set(key, name);
    return name;
  }

  #ints(key: string, values: readonly number[]): string {
    return this.#constant(`${key}:${values.join(',')}`, BigInt64Array.from(values.map((v) => BigInt(v))), [values.length], 'int64');
  }

  #scalar(v: number): string {
    return this.#constant(`scalar:${v}`, Float32Array.of(v), []);
  }

  /** A TF constant as an operand of an elementwise op with a value of the given layout. */
  #operandConst(tfName: string, partner: Layout): Value {
    const w = this.#weight(tfName);
    const vals = w.dtype === 'float32' ? (w.values as Float32Array) : Float32Array.from(w.values);
    if (partner !== 'nchw' || w.shape.length === 0 || count(w.shape) === 1) {
      return { name: this.#constant(tfName, vals, w.shape), layout: 'plain', rank: w.shape.length };
    }
    if (w.shape.length === 4) {
      return {
        name: this.#constant(`${tfName}#nchw`, transpose(vals, w.shape, [0, 3, 1, 2]), [w.shape[0]!, w.shape[3]!, w.shape[1]!, w.shape[2]!]),
        layout: 'nchw',
        rank: 4,
      };
    }
    if (w.shape.length === 1) {
      // [C] broadcasts over NHWC's last axis; in NCHW it must be [C,1,1].
      return { name: this.#constant(`${tfName}#c11`, vals, [w.shape[0]!, 1, 1]), layout: 'nchw', rank: 4 };
    }
    throw new Error(`constant ${tfName} of rank ${w.shape.length} cannot broadcast against an NHWC activation`);
  }

  /** The value in TF's own layout (a Transpose back from NCHW when needed). */
  #toNhwc(v: Value): Value {
    if (v.layout !== 'nchw') return v;
    return { name: this.#g.op('Transpose', [v.name], { perm: attr.ints([0, 2, 3, 1]) }), layout: 'plain', rank: 4 };
  }

  // ---- nodes -----------------------------------------------------------------------------------

  #convert(node: TfNode): Value {
    const ins = dataInputs(node);
    const op = node.op;
    switch (op) {
      case 'Identity':
      case 'StopGradient':
        return this.#value(ins[0]!);
      case 'Conv2D':
      case '_FusedConv2D':
      case 'DepthwiseConv2dNative':
      case 'FusedDepthwiseConv2dNative':
        return this.#conv(node, ins);
      case 'MatMul':
      case '_FusedMatMul':
        return this.#matmul(node, ins);
      case 'Add':
      case 'AddV2':
      case 'BiasAdd':
      case 'Sub':
      case 'Mul':
      case 'RealDiv':
      case 'Maximum':
      case 'Minimum':
        return this.#binary(node, ins);
      case 'Relu':
      case 'Relu6':
      case 'Elu':
      case 'LeakyRelu':
      case 'Sigmoid':
      case 'Tanh': {
        const x = this.#value(ins[0]!);
        return { ...x, name: this.#activation(op, x.name, node) };
      }
      case 'Softmax': {
        const x = this.#value(ins[0]!);
        const axis = x.layout === 'nchw' ? 1 : -1;
        return { ...x, name: this.#g.op('Softmax', [x.name], { axis: attr.int(axis) }, { name: node.name }) };
      }
      case 'AvgPool':
      case 'MaxPool':
        return this.#pool(node, ins);
      case 'Mean':
      case 'Max':
      case 'Sum':
        return this.#reduce(node, ins);
      case 'Squeeze':
        return this.#squeeze(node, ins);
      case 'Reshape': {
        const x = this.#toNhwc(this.#value(ins[0]!));
        const shape = this.#constInts(ins[1]!);
        return { name: this.#g.op('Reshape', [x.name, this.#ints('shape', shape)], {}, { name: node.name }), layout: 'plain', rank: shape.length };
      }
      case 'Pad':
      case 'PadV2':
        return this.#pad(node, ins);
      case 'ConcatV2':
        return this.#concat(node, ins);
      default:
        throw new Error(`TF op ${op} (node ${node.name}) has no ONNX mapping in this converter`);
    }
  }

  #constInts(tfName: string): number[] {
    if (!this.#isConst(tfName)) throw new Error(`TF value ${tfName} must be a constant`);
    return Array.from(this.#weight(tfName).values, (v) => Math.round(v));
  }

  #activation(kind: string, x: string, node: TfNode): string {
    const name = `${node.name}/${kind}`;
    switch (kind) {
      case 'Relu':
        return this.#g.op('Relu', [x], {}, { name });
      case 'Relu6':
        return this.#g.op('Clip', [x, this.#scalar(0), this.#scalar(6)], {}, { name });
      case 'Elu':
        return this.#g.op('Elu', [x], { alpha: attr.float(1) }, { name });
      case 'LeakyRelu':
        return this.#g.op('LeakyRelu', [x], { alpha: attr.float(attrs.float(node, 'alpha', 0.2)) }, { name });
      case 'Sigmoid':
        return this.#g.op('Sigmoid', [x], {}, { name });
      case 'Tanh':
        return this.#g.op('Tanh', [x], {}, { name });
      default:
        throw new Error(`activation ${kind} (node ${node.name}) is not supported`);
    }
  }

  /** Splits `fused_ops` into the bias flag and the optional activation; refuses anything else. */
  #fused(node: TfNode): { bias: boolean; activation: string | undefined } {
    const ops = attrs.strings(node, 'fused_ops');
    let bias = false;
    let activation: string | undefined;
    for (const f of ops) {
      if (f === 'BiasAdd' && !bias && activation === undefined) bias = true;
      else if (ACTIVATIONS.has(f) && activation === undefined) activation = f;
      else throw new Error(`fused op sequence [${ops.join(', ')}] of ${node.name} is not supported (BiasAdd then one activation)`);
    }
    const numArgs = attrs.int(node, 'num_args', bias ? 1 : 0);
    if (numArgs !== (bias ? 1 : 0)) throw new Error(`${node.name}: num_args ${numArgs} does not match fused ops [${ops.join(', ')}]`);
    return { bias, activation };
  }

  #conv(node: TfNode, ins: string[]): Value {
    const format = attrs.string(node, 'data_format', 'NHWC');
    if (format !== 'NHWC') throw new Error(`${node.name}: data_format ${format} is not supported`);
    const x = this.#value(ins[0]!);
    if (x.layout !== 'nchw') throw new Error(`${node.name}: convolution input must be a 4-D image activation`);
    const depthwise = node.op.includes('Depthwise');
    const fused = node.op.startsWith('_Fused') || node.op.startsWith('Fused') ? this.#fused(node) : { bias: false, activation: undefined };
    const w = this.#weight(ins[1]!);
    const [kh, kw, cin, cm] = w.shape as [number, number, number, number];
    if (w.shape.length !== 4) throw new Error(`${node.name}: filter must be 4-D`);
    const vals = w.values as Float32Array;
    let weightName: string;
    let group = 1;
    if (depthwise) {
      // TF depthwise filter [kh, kw, C, M] → ONNX [C·M, 1, kh, kw]; output channel c·M + m.
      const out = new Float32Array(vals.length);
      for (let y = 0; y < kh; y++)
        for (let xx = 0; xx < kw; xx++)
          for (let c = 0; c < cin; c++) for (let m = 0; m < cm; m++) out[((c * cm + m) * kh + y) * kw + xx] = vals[((y * kw + xx) * cin + c) * cm + m]!;
      weightName = this.#constant(`${ins[1]}#dw`, out, [cin * cm, 1, kh, kw]);
      group = cin;
    } else {
      // TF filter [kh, kw, in, out] (HWIO) → ONNX [out, in, kh, kw] (OIHW).
      weightName = this.#constant(`${ins[1]}#oihw`, transpose(vals, w.shape, [3, 2, 0, 1]), [cm, cin, kh, kw]);
    }
    const strides = attrs.ints(node, 'strides', [1, 1, 1, 1]);
    const dilations = attrs.ints(node, 'dilations', [1, 1, 1, 1]);
    if (strides[0] !== 1 || strides[3] !== 1 || dilations[0] !== 1 || dilations[3] !== 1)
      throw new Error(`${node.name}: strides/dilations over batch or channels are not supported`);
    const convAttrs: Record<string, ReturnType<typeof attr.int>> = {
      kernel_shape: attr.ints([kh, kw]),
      strides: attr.ints([strides[1]!, strides[2]!]),
      dilations: attr.ints([dilations[1]!, dilations[2]!]),
      group: attr.int(group),
      ...this.#padding(node),
    };
    const convInputs = [x.name, weightName];
    if (fused.bias) {
      const b = this.#weight(ins[2]!);
      convInputs.push(this.#constant(ins[2]!, b.values as Float32Array, b.shape));
    }
    let y = this.#g.op('Conv', convInputs, convAttrs, { name: fused.activation ? `${node.name}/Conv` : node.name });
    if (fused.activation) y = this.#activation(fused.activation, y, node);
    return { name: y, layout: 'nchw', rank: 4 };
  }

  #padding(node: TfNode): Record<string, ReturnType<typeof attr.int>> {
    const padding = attrs.string(node, 'padding');
    switch (padding) {
      case 'SAME':
        return { auto_pad: attr.string('SAME_UPPER') };
      case 'VALID':
        return { auto_pad: attr.string('VALID') };
      case 'EXPLICIT': {
        const p = attrs.ints(node, 'explicit_paddings'); // NHWC pairs: [n0,n1,h0,h1,w0,w1,c0,c1]
        return { pads: attr.ints([p[2]!, p[4]!, p[3]!, p[5]!]) };
      }
      default:
        throw new Error(`${node.name}: padding ${padding} is not supported`);
    }
  }

  #matmul(node: TfNode, ins: string[]): Value {
    const fused = node.op === '_FusedMatMul' ? this.#fused(node) : { bias: false, activation: undefined };
    const ta = attrs.bool(node, 'transpose_a', false);
    const tb = attrs.bool(node, 'transpose_b', false);
    let a = this.#toNhwc(this.#value(ins[0]!)).name;
    if (ta) a = this.#g.op('Transpose', [a], { perm: attr.ints([1, 0]) });
    let b: string;
    if (this.#isConst(ins[1]!)) {
      const w = this.#weight(ins[1]!);
      const [r, c] = w.shape as [number, number];
      b = tb
        ? this.#constant(`${ins[1]}#T`, transpose(w.values as Float32Array, w.shape, [1, 0]), [c, r])
        : this.#constant(ins[1]!, w.values as Float32Array, w.shape);
    } else {
      b = this.#toNhwc(this.#value(ins[1]!)).name;
      if (tb) b = this.#g.op('Transpose', [b], { perm: attr.ints([1, 0]) });
    }
    const last = !fused.bias && !fused.activation;
    let y = this.#g.op('MatMul', [a, b], {}, { name: last ? node.name : `${node.name}/MatMul` });
    if (fused.bias) {
      const bias = this.#weight(ins[2]!);
      y = this.#g.op(
        'Add',
        [y, this.#constant(ins[2]!, bias.values as Float32Array, bias.shape)],
        {},
        { name: fused.activation ? `${node.name}/BiasAdd` : node.name },
      );
    }
    if (fused.activation) y = this.#activation(fused.activation, y, node);
    return { name: y, layout: 'plain', rank: 2 };
  }

  #binary(node: TfNode, ins: string[]): Value {
    const onnxOp = { Add: 'Add', AddV2: 'Add', BiasAdd: 'Add', Sub: 'Sub', Mul: 'Mul', RealDiv: 'Div', Maximum: 'Max', Minimum: 'Min' }[node.op]!;
    const [an, bn] = ins as [string, string];
    const aConst = this.#isConst(an);
    const bConst = this.#isConst(bn);
    let a: Value;
    let b: Value;
    if (aConst && bConst) throw new Error(`${node.name}: both operands are constants (fold it before converting)`);
    if (aConst) {
      b = this.#value(bn);
      a = this.#operandConst(an, b.layout);
    } else if (bConst) {
      a = this.#value(an);
      b = this.#operandConst(bn, a.layout);
    } else {
      a = this.#value(an);
      b = this.#value(bn);
      if (a.layout !== b.layout) {
        a = this.#toNhwc(a);
        b = this.#toNhwc(b);
      }
    }
    const layout: Layout = a.layout === 'nchw' || b.layout === 'nchw' ? 'nchw' : 'plain';
    return { name: this.#g.op(onnxOp, [a.name, b.name], {}, { name: node.name }), layout, rank: Math.max(a.rank ?? 0, b.rank ?? 0) };
  }

  #pool(node: TfNode, ins: string[]): Value {
    const x = this.#value(ins[0]!);
    if (x.layout !== 'nchw') throw new Error(`${node.name}: pooling input must be a 4-D image activation`);
    const k = attrs.ints(node, 'ksize');
    const s = attrs.ints(node, 'strides');
    if (k[0] !== 1 || k[3] !== 1 || s[0] !== 1 || s[3] !== 1) throw new Error(`${node.name}: pooling over batch or channels is not supported`);
    const a: Record<string, ReturnType<typeof attr.int>> = {
      kernel_shape: attr.ints([k[1]!, k[2]!]),
      strides: attr.ints([s[1]!, s[2]!]),
      ...this.#padding(node),
    };
    // TF's SAME average pooling divides by the number of real pixels, which is ONNX's count_include_pad = 0.
    if (node.op === 'AvgPool') a['count_include_pad'] = attr.int(0);
    return { name: this.#g.op(node.op === 'AvgPool' ? 'AveragePool' : 'MaxPool', [x.name], a, { name: node.name }), layout: 'nchw', rank: 4 };
  }

  /**
   * Axes removal on an `nchw` value: fine in NCHW when the kept axes come out in TF's order,
   * otherwise transpose back to NHWC first.
   */
  #mapAxes(x: Value, tfAxes: readonly number[], keep: boolean): { x: Value; axes: number[]; layout: Layout } {
    const rank = x.rank ?? 4;
    const norm = tfAxes.map((a) => (a < 0 ? a + rank : a));
    if (x.layout !== 'nchw') return { x, axes: norm, layout: x.layout };
    if (keep) return { x, axes: norm.map((a) => NHWC_TO_NCHW[a]!), layout: 'nchw' };
    const keptTf = [0, 1, 2, 3].filter((a) => !norm.includes(a)); // TF order of what remains
    const mapped = norm.map((a) => NHWC_TO_NCHW[a]!);
    const keptNchw = [0, 1, 2, 3].filter((a) => !mapped.includes(a)).map((a) => NHWC_TO_NCHW.indexOf(a));
    if (keptTf.join() === keptNchw.join()) return { x, axes: mapped, layout: 'plain' };
    return { x: this.#toNhwc(x), axes: norm, layout: 'plain' };
  }

  #reduce(node: TfNode, ins: string[]): Value {
    const keep = attrs.bool(node, 'keep_dims', false);
    const m = this.#mapAxes(this.#value(ins[0]!), this.#constInts(ins[1]!), keep);
    const onnxOp = { Mean: 'ReduceMean', Max: 'ReduceMax', Sum: 'ReduceSum' }[node.op]!;
    const rank = (m.x.rank ?? 4) - (keep ? 0 : m.axes.length);
    return {
      name: this.#g.op(onnxOp, [m.x.name, this.#ints('axes', m.axes)], { keepdims: attr.int(keep ? 1 : 0) }, { name: node.name }),
      layout: m.layout,
      rank,
    };
  }

  #squeeze(node: TfNode, ins: string[]): Value {
    const x = this.#value(ins[0]!);
    const dims = attrs.ints(node, 'squeeze_dims', []);
    if (dims.length === 0) throw new Error(`${node.name}: Squeeze without squeeze_dims needs static shapes; not supported`);
    const m = this.#mapAxes(x, dims, false);
    return {
      name: this.#g.op('Squeeze', [m.x.name, this.#ints('axes', m.axes)], {}, { name: node.name }),
      layout: m.layout,
      rank: (m.x.rank ?? 4) - m.axes.length,
    };
  }

  #pad(node: TfNode, ins: string[]): Value {
    const x = this.#value(ins[0]!);
    const p = this.#constInts(ins[1]!); // [[before, after] per TF axis]
    const rank = p.length / 2;
    const before = new Array<number>(rank);
    const after = new Array<number>(rank);
    for (let a = 0; a < rank; a++) {
      const target = x.layout === 'nchw' ? NHWC_TO_NCHW[a]! : a;
      before[target] = p[2 * a]!;
      after[target] = p[2 * a + 1]!;
    }
    const inputs = [x.name, this.#ints('pads', [...before, ...after])];
    if (node.op === 'PadV2') {
      const c = this.#weight(ins[2]!);
      inputs.push(this.#constant(`${ins[2]}#scalar`, Float32Array.of(c.values[0]!), []));
    }
    return { name: this.#g.op('Pad', inputs, { mode: attr.string('constant') }, { name: node.name }), layout: x.layout, rank };
  }

  #concat(node: TfNode, ins: string[]): Value {
    const axisName = ins[ins.length - 1]!;
    let axis = this.#constInts(axisName)[0]!;
    let values = ins.slice(0, -1).map((n) => this.#value(n));
    const allNchw = values.every((v) => v.layout === 'nchw');
    if (!allNchw) values = values.map((v) => this.#toNhwc(v));
    const rank = values[0]!.rank ?? 4;
    if (axis < 0) axis += rank;
    if (allNchw) axis = NHWC_TO_NCHW[axis]!;
    return {
      name: this.#g.op(
        'Concat',
        values.map((v) => v.name),
        { axis: attr.int(axis) },
        { name: node.name },
      ),
      layout: allNchw ? 'nchw' : 'plain',
      rank,
    };
  }
}

function count(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Row-major transpose of a dense tensor: `out` axis i is `input` axis perm[i]. */
export function transpose(values: Float32Array, shape: readonly number[], perm: readonly number[]): Float32Array {
  const rank = shape.length;
  const outShape = perm.map((p) => shape[p]!);
  const inStrides = new Array<number>(rank);
  let s = 1;
  for (let i = rank - 1; i >= 0; i--) {
    inStrides[i] = s;
    s *= shape[i]!;
  }
  const stridesByOut = perm.map((p) => inStrides[p]!);
  const out = new Float32Array(values.length);
  const idx = new Array<number>(rank).fill(0);
  for (let o = 0; o < out.length; o++) {
    let src = 0;
    for (let i = 0; i < rank; i++) src += idx[i]! * stridesByOut[i]!;
    out[o] = values[src]!;
    for (let i = rank - 1; i >= 0; i--) {
      if (++idx[i]! < outShape[i]!) break;
      idx[i] = 0;
    }
  }
  return out;
}

/** A TF node name as a short ONNX value-name prefix. */
function sanitise(name: string): string {
  const parts = name.split('/').filter((p) => p !== 'StatefulPartitionedCall' && p !== 'predict');
  return (
    parts
      .slice(-3)
      .join('/')
      .replace(/[^A-Za-z0-9_./#:-]/g, '_') || 'const'
  );
}
