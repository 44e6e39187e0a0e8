/**
 * Messages between the inference pool (main thread) and its workers. Tensors travel as typed arrays
 * whose buffers are transferred, not copied.
 */
import type { ExecutionProviderName } from '../config/index.ts';
import type { PoolingSpec } from './pooling.ts';

export interface ModelLoadSpec {
  name: string;
  /** Absolute path of the .onnx file. */
  path: string;
  /** Providers to try in order; the worker falls back to the next one when a session cannot be created. */
  providers: ExecutionProviderName[];
  /** Let this session's intra-op threads spin between parallel sections. */
  allowSpinning: boolean;
  /**
   * Pool the first output ([batch, sequence, hidden]) into [batch, hidden] in the worker, under the mask
   * fed as `mask` (models exported without their pooling; src/runtime/pooling.ts).
   */
  pool?: PoolingSpec & { mask: string };
}

export interface FeedSpec {
  name: string;
  type: 'int64' | 'float32';
  data: BigInt64Array | Float32Array;
  dims: number[];
}

export interface RunOptions {
  /** Per row: leading tokens the worker's pooling leaves out (a prompt, under `include_prompt: false`). */
  poolSkip?: Int32Array;
}

export type ToWorker =
  /** `niceness`: nice value the worker gives itself before creating sessions (0: leave it). */
  | { type: 'load'; models: ModelLoadSpec[]; intraOpThreads: number; niceness: number }
  /** `output`: one output name, or several (the first is the primary result, the rest come back in `extra`). */
  | { type: 'run'; id: number; model: string; feeds: FeedSpec[]; output: string | readonly string[]; poolSkip?: Int32Array }
  /** Releases these models' sessions (after the runs queued before it). */
  | { type: 'unload'; names: string[] }
  | { type: 'close' };

export interface LoadResult {
  name: string;
  ok: boolean;
  /** Provider that runs the session, when ok. */
  provider?: ExecutionProviderName;
  /** Providers that were tried and failed, with the reason. */
  fallbacks: { provider: ExecutionProviderName; reason: string }[];
  error?: string;
}

/** An output beyond the first of a multi-output run. */
export interface ExtraOutput {
  name: string;
  data: Float32Array;
  dims: number[];
}

export type FromWorker =
  /** `niceness`: the worker thread's nice value after loading, as the OS reports it. */
  | { type: 'loaded'; results: LoadResult[]; niceness: number }
  | { type: 'result'; id: number; data: Float32Array; dims: number[]; runMs: number; extra?: ExtraOutput[] }
  | { type: 'error'; id: number; message: string };
