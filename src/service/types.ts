/**
 * The types the request path speaks in: where an answer came from, what one embedding result carries,
 * and the trace sink the pipeline reports to. They live apart from the pipeline so that consumers
 * (tracing, accounting, resolvers) depend on these shapes, not on the classes that produce them.
 */

/**
 * Token ids given instead of a text (`/v1/embeddings` with token-id input): the model reads exactly these
 * ids, special tokens included, with no prompt added; every id must be in the model's vocabulary.
 */
export interface TokenIds {
  readonly ids: readonly number[];
}

/** What a text model embeds: a text, or token ids of that model's own tokenizer. */
export type TextInput = string | TokenIds;

/** Which tier answered, or COMPUTED when this request's inference (or a joined one) produced it. */
export type Source = 'MEMORY' | 'GLOBAL' | 'COMPUTED';

export const SOURCES: readonly Source[] = ['MEMORY', 'GLOBAL', 'COMPUTED'];

export interface EmbedResult {
  /** Full-precision, L2-normalised vector as the model produced it. Do not mutate. */
  vector: Float32Array;
  source: Source;
  model: string;
  version: string;
  /** Tokens computed for this input (0 for cache hits and joined computations). */
  tokens: number;
  /** Share of inference time charged to this input (0 for cache hits and joined computations). */
  inferenceMs: number;
  /**
   * Text computed for this answer: tokens the model read (`kept`, after truncation) and tokens of the whole
   * input (`total`). Absent for cache hits, whose counts are taken on demand (`RequestScope.tokenCounts`).
   */
  inputTokens?: TokenCount;
}

/** Tokens a text model read for an input (`kept`) and tokens of the whole input before truncation (`total`). */
export interface TokenCount {
  kept: number;
  total: number;
}

/** An entry a computation stored beside the one its input read (an image's feature beside its embedding). */
export interface TracedFill {
  key: string;
  /** Bytes of the stored vector. */
  bytes: number;
}

/** What the pipeline hands the trace sink for each input of one call. */
export type TracedResult = Pick<EmbedResult, 'vector' | 'source' | 'tokens' | 'inferenceMs'> & {
  /** COMPUTED by a computation another call started (single-flight, or one that just finished): no tier lookup of its own. */
  joined?: boolean;
  /** Other entries this input's computation wrote to the tiers (only on the input that owned it). */
  fills?: readonly TracedFill[];
};

/** Receives every assembled call of the pipeline (src/policy/trace.ts samples it). Must never throw. */
export interface TraceSink {
  observe(model: string, clientId: string | undefined, keys: readonly (string | undefined)[], results: readonly (TracedResult | Error)[], user?: string): void;
}

/** Counters of one modality's pipeline (text, image). */
export interface PipelineStats {
  /** Calls of the pipeline. */
  calls: number;
  /** Tiered cache reads (one per call that had anything to look up). */
  cacheLookups: number;
  items: number;
  bySource: Record<Source, number>;
  /** Misses that joined a computation already in flight. */
  joined: number;
  /** Answers per model and source. */
  byModel: Record<string, Record<Source, number>>;
  /** Per-input failures by error code. */
  errors: Record<string, number>;
}

/** A bounded in-process memo (a join table, a URL → hash memory): what it holds now and its bound. */
export interface MemoStats {
  memo: string;
  entries: number;
  bytes: number;
  maxBytes: number;
}

/** The counters the cache policy reads of the text pipeline. */
export type ServiceStats = Omit<PipelineStats, 'errors'>;

export function emptyBySource(): Record<Source, number> {
  return { MEMORY: 0, GLOBAL: 0, COMPUTED: 0 };
}
