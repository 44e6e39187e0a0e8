/**
 * Pooling of token embeddings into one vector per input, as sentence-transformers' `Pooling` and
 * `Normalize` modules do it, for graphs exported without them (their output is `last_hidden_state` or
 * `token_embeddings`, [batch, sequence, hidden]). Runs in the inference worker, beside `run()`, so the
 * event loop never loops over token vectors.
 *
 * Modes (1_Pooling/config.json): `cls` (the first token), `mean` (mean over tokens whose mask is 1),
 * `max` (per-dimension maximum over those tokens), `last` (the last token whose mask is 1: with right
 * padding and causal attention this is the same vector left padding gives), and `none` for an output
 * that is already pooled ([batch, hidden]) and only needs normalising.
 */

export type PoolingMode = 'cls' | 'mean' | 'max' | 'last' | 'none';

export interface PoolingSpec {
  mode: PoolingMode;
  /** L2-normalise the pooled vector (a `Normalize` module follows the pooling). */
  normalize: boolean;
  /**
   * False: the prompt's tokens take no part in pooling (1_Pooling/config.json `include_prompt: false`);
   * the caller passes how many leading tokens of each row they are. Default true.
   */
  includePrompt?: boolean;
}

export const POOLING_MODES: readonly PoolingMode[] = ['cls', 'mean', 'max', 'last', 'none'];

/**
 * Pools `tokens` ([batch, seq, hidden], row-major) under `mask` ([batch, seq], 1 = real token).
 * Returns [batch, hidden]. A row with no real token pools to zeros (and stays zero when normalised).
 * `skip[b]`: leading tokens of row b left out, as sentence-transformers masks a prompt out of pooling
 * (`attention_mask[:, :prompt_length] = 0`; the rows are right-padded, so they are the row's first tokens).
 */
export function pool(
  tokens: Float32Array,
  dims: readonly number[],
  mask: ArrayLike<number | bigint>,
  spec: PoolingSpec,
  skip?: ArrayLike<number>,
): Float32Array<ArrayBuffer> {
  if (spec.mode === 'none') return normalised(tokens, dims, spec.normalize);
  if (dims.length !== 3) throw new TypeError(`pooling needs a [batch, sequence, hidden] output, got dims [${dims.join(', ')}]`);
  const [batch, seq, hidden] = dims as [number, number, number];
  if (tokens.length !== batch * seq * hidden) throw new TypeError(`pooling: output has ${tokens.length} values, dims say ${batch * seq * hidden}`);
  if (mask.length !== batch * seq) throw new TypeError(`pooling: mask has ${mask.length} values for ${batch} × ${seq} tokens`);
  const out = new Float32Array(batch * hidden);
  for (let b = 0; b < batch; b++) {
    const row = out.subarray(b * hidden, (b + 1) * hidden);
    const at = (t: number): number => (b * seq + t) * hidden;
    const first = skip?.[b] ?? 0;
    const real = (t: number): boolean => t >= first && Number(mask[b * seq + t]) !== 0;
    switch (spec.mode) {
      case 'cls':
        row.set(tokens.subarray(at(0), at(0) + hidden));
        break;
      case 'last': {
        let last = -1;
        for (let t = 0; t < seq; t++) if (real(t)) last = t;
        if (last >= 0) row.set(tokens.subarray(at(last), at(last) + hidden));
        break;
      }
      case 'mean': {
        let n = 0;
        for (let t = 0; t < seq; t++) {
          if (!real(t)) continue;
          n++;
          const o = at(t);
          for (let h = 0; h < hidden; h++) row[h]! += tokens[o + h]!;
        }
        if (n > 0) for (let h = 0; h < hidden; h++) row[h] = row[h]! / n;
        break;
      }
      case 'max': {
        let any = false;
        for (let t = 0; t < seq; t++) {
          if (!real(t)) continue;
          const o = at(t);
          for (let h = 0; h < hidden; h++) row[h] = any ? Math.max(row[h]!, tokens[o + h]!) : tokens[o + h]!;
          any = true;
        }
        break;
      }
      default: {
        const never: never = spec.mode;
        throw new TypeError(`unknown pooling mode ${String(never)}`);
      }
    }
    if (spec.normalize) normalizeInPlace(row);
  }
  return out;
}

/** An already pooled [batch, hidden] output, each row L2-normalised when asked. */
function normalised(data: Float32Array, dims: readonly number[], normalize: boolean): Float32Array<ArrayBuffer> {
  if (dims.length !== 2 || data.length !== dims[0]! * dims[1]!)
    throw new TypeError(`pooling "none" needs a [batch, hidden] output, got dims [${dims.join(', ')}]`);
  const out = new Float32Array(data);
  if (normalize) for (let b = 0; b < dims[0]!; b++) normalizeInPlace(out.subarray(b * dims[1]!, (b + 1) * dims[1]!));
  return out;
}

/** Scales `row` to unit L2 length in place (a zero row stays zero). */
export function normalizeInPlace(row: Float32Array): void {
  let s = 0;
  for (let h = 0; h < row.length; h++) s += row[h]! * row[h]!;
  const n = Math.sqrt(s);
  if (n > 0) for (let h = 0; h < row.length; h++) row[h] = row[h]! / n;
}
