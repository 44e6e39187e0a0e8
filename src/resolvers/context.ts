/**
 * The per-request GraphQL context and its DataLoaders.
 *
 * Loaders are built per request, so nothing one client loads is memoised for another. All `load` calls
 * of one tick (e.g. `embedding` on every Post of an `_entities` call) become one `embedMany` call:
 * one cache read and one submit to the batcher.
 */
import DataLoader from 'dataloader';
import type { AccountContext } from '../accounting/request.ts';
import type { PolicyController } from '../policy/controller.ts';
import type { EmbeddingService, EmbedResult } from '../service/embedding.ts';
import type { MediaLoaders } from './media-loaders.ts';

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
}

/** What resolvers may ask of the service besides loaders: validation data and the model list. */
export interface Catalog {
  /** Dimensions of a ready model; throws MODEL_NOT_FOUND / MODEL_NOT_READY otherwise. */
  dimensionsOf(model: string): number;
  models(): ModelInfo[];
  defaultPostModel: string;
  maxInputsPerRequest: number;
}

export interface PolyrayContext {
  loaders: Loaders;
  catalog: Catalog;
  /** The authenticated client, when there is one (see the accounting middleware). */
  clientId?: string;
  /** The request's accounting: client, quota, usage (src/accounting). */
  account?: AccountContext;
  /** Loaders for images, posts (postray) and task heads. */
  media: MediaLoaders;
  /** The live cache policy, for the admin query `cachePolicy` (src/policy). */
  policy?: PolicyController;
}

export class Loaders {
  readonly #service: Pick<EmbeddingService, 'embedMany'>;
  readonly #maxBatch: number;
  readonly #clientId: string | undefined;
  readonly #byModel = new Map<string, DataLoader<string, EmbedResult>>();

  /** `service` is the EmbeddingService or the request's accounting wrapper around it. */
  constructor(service: Pick<EmbeddingService, 'embedMany'>, maxBatch: number, clientId?: string) {
    this.#service = service;
    this.#maxBatch = maxBatch;
    this.#clientId = clientId;
  }

  /** The loader for one model: keys are input texts, values their embeddings. */
  embeddings(model: string): DataLoader<string, EmbedResult> {
    let l = this.#byModel.get(model);
    if (!l) {
      l = new DataLoader<string, EmbedResult>(
        (texts) => this.#service.embedMany(model, texts, this.#clientId ? { clientId: this.#clientId } : {}),
        { maxBatchSize: this.#maxBatch },
      );
      this.#byModel.set(model, l);
    }
    return l;
  }
}
