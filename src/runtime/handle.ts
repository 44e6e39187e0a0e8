/**
 * ModelHandle: a served model as the request path sees it, resolved once per field by the request scope
 * (src/service/scope.ts) from the ModelHost. A handle says what the model reads (its `kind`), carries what
 * pricing and validation need (version, dimensions, cost factor, token limit), and holds the model's
 * inference queue, so nothing downstream looks the model up again.
 *
 * `post` is a virtual model (postray): two part handles and a fusion formula (src/models/postray.ts).
 */
import type { HeadSpec, PreprocessSpec } from './manifest.ts';
import type { Batcher } from './batcher.ts';
import type { TensorBatcher } from './tensor-batcher.ts';
import type { TokenizedBatch, TokenizeOptions, Tokenizer } from './tokenizer.ts';
import type { ViewedBatch, ViewOptions } from './view-batch.ts';

interface HandleBase {
  name: string;
  version: string;
  dimensions: number;
  /** Cost units per computed token (per 1000 input pixels for image models). */
  costFactor: number;
  maxTokens: number;
}

export interface TextHandle extends HandleBase {
  kind: 'text';
  /** The event loop's copy of the tokenizer: its limits and special tokens (it does not tokenise requests). */
  tokenizer: Tokenizer;
  /** Tokenises texts for this model, off the event loop (src/runtime/tokenizer-pool.ts). */
  tokenize(texts: readonly string[], options: TokenizeOptions): Promise<TokenizedBatch>;
  /** `POST /tokenize`: each text's tokens with offsets, as JSON, off the event loop. */
  viewTokens(texts: readonly string[], options: ViewOptions): Promise<ViewedBatch>;
  /** False when the pooling leaves the prompt's tokens out (1_Pooling/config.json `include_prompt: false`). */
  includePrompt: boolean;
  /** Named prompts and the default one (manifest `prompts`, `defaultPromptName`). */
  prompts: Readonly<Record<string, string>>;
  defaultPromptName: string | undefined;
  /** Which end of an over-long input `truncate` cuts (tokenizer_config.json `truncation_side`; default right). */
  truncationSide: 'left' | 'right';
  queue: Batcher;
}

export interface ImageHandle extends HandleBase {
  kind: 'image';
  preprocess: PreprocessSpec;
  queue: TensorBatcher;
}

export interface HeadHandle extends HandleBase {
  kind: 'head';
  head: HeadSpec;
  queue: TensorBatcher;
  /** The model whose output the head reads. */
  input: TextHandle | ImageHandle;
}

export interface PostHandle extends HandleBase {
  kind: 'post';
  text: TextHandle;
  image: ImageHandle;
}

export type ModelHandle = TextHandle | ImageHandle | HeadHandle | PostHandle;
export type ModelKind = ModelHandle['kind'];

/** The model list as `Query.models` and `/readyz` show it. */
export interface ModelInfo {
  name: string;
  version: string;
  modality: 'TEXT' | 'IMAGE' | 'MULTIMODAL';
  dimensions: number;
  maxTokens: number;
  costFactor: number;
  synthetic: boolean;
  state: 'LOADING' | 'READY' | 'FAILED' | 'DISPOSED';
  executionProvider: string | null;
  error: string | null;
  description: string;
  prompts: string[];
  defaultPromptName: string | null;
  /** Sizes the model was trained to be cut to (Matryoshka), largest first; empty when not declared. */
  matryoshkaDimensions: number[];
  /** How its vectors are compared: cosine (default), dot, euclidean or manhattan. */
  similarity: string;
}
