/**
 * Per-request loaders for images, posts and task heads (the text loaders are in context.ts).
 *
 * As with text, every load of one tick becomes one service call: `Post.embedding` on N posts is one
 * `PostService.embedPosts` (one text cache read, one image cache read), `Post.classify` on N posts one
 * `classifyPosts`, and image inputs of `Query.embed` one `ImageService.embedImages`.
 */
import DataLoader from 'dataloader';
import { ErrorCode, PolyrayError } from '../errors.ts';
import { decodeBase64Image } from '../images/fetch.ts';
import type { ImageInput, ImageResult, ImageService } from '../images/service.ts';
import type { LabelScore } from '../models/heads.ts';
import type { EmbeddingService, EmbedResult } from '../service/embedding.ts';
import type { ModelKind, PostInput, PostService } from '../service/posts.ts';

export interface MediaServices {
  images: ImageService;
  posts: PostService;
}

export interface MediaLoaderOptions {
  /** Largest DataLoader batch. */
  maxBatch: number;
  /** Embeds the text parts of posts: the request's accounting wrapper when there is one. */
  textEmbedder?: Pick<EmbeddingService, 'embedMany'>;
  /** Embeds images (image inputs, post images, head features): the request's accounting wrapper when there is one. */
  imageEmbedder?: Pick<ImageService, 'embedImages'>;
  clientId?: string;
  /** Whether the request's client may use a model (image model, postray, head). Default: any. */
  mayUse?: (model: string) => boolean;
}

/** A post as the loaders see it; `key` identifies equal posts within the request. */
export interface PostKey {
  text?: string | null;
  imageUrls?: readonly string[] | null;
  /** A one-image post given inline (`Query.embed` with `postray`). */
  imageBase64?: string;
}

/** An image input of `Query.embed`. */
export type ImageKey = { imageUrl: string } | { imageBase64: string };

const postCacheKey = (p: PostKey): string => JSON.stringify([p.text ?? null, p.imageUrls ?? [], p.imageBase64 ?? null]);
const imageCacheKey = (k: ImageKey): string => ('imageUrl' in k ? `u:${k.imageUrl}` : `b:${k.imageBase64}`);

export class MediaLoaders {
  readonly #s: MediaServices;
  readonly #o: MediaLoaderOptions;
  readonly #images = new Map<string, DataLoader<ImageKey, ImageResult>>();
  readonly #posts = new Map<string, DataLoader<PostKey, EmbedResult | null>>();
  readonly #heads = new Map<string, DataLoader<PostKey, LabelScore[] | null>>();

  constructor(services: MediaServices, options: MediaLoaderOptions) {
    this.#s = services;
    this.#o = options;
  }

  /** What a model name is (text, image, post, head); throws MODEL_NOT_FOUND. */
  kindOf(model: string): ModelKind {
    return this.#s.posts.kindOf(model);
  }

  /** FORBIDDEN unless the client may use the model (the text parts are checked by the request's account). */
  #permit(model: string): void {
    if (this.#o.mayUse && !this.#o.mayUse(model)) {
      throw new PolyrayError(ErrorCode.FORBIDDEN, `This client may not use model "${model.slice(0, 64)}"`, { model: model.slice(0, 64) });
    }
  }

  /** A post key as service input; an inline image that cannot be decoded is that post's error. */
  #postInput(k: PostKey): PostInput | PolyrayError {
    if (k.imageBase64 === undefined) return { text: k.text ?? null, images: urls(k) };
    try {
      return { text: k.text ?? null, images: [...urls(k), { kind: 'bytes', bytes: decodeBase64Image(k.imageBase64, this.#s.images.maxBytes) }] };
    } catch (e) {
      return e as PolyrayError;
    }
  }

  #opts(): { textEmbedder?: Pick<EmbeddingService, 'embedMany'>; imageEmbedder?: Pick<ImageService, 'embedImages'>; clientId?: string } {
    return {
      ...(this.#o.textEmbedder ? { textEmbedder: this.#o.textEmbedder } : {}),
      ...(this.#o.imageEmbedder ? { imageEmbedder: this.#o.imageEmbedder } : {}),
      ...(this.#o.clientId ? { clientId: this.#o.clientId } : {}),
    };
  }

  /** Image embeddings of one image model; keys are URL or base64 inputs. */
  images(model: string): DataLoader<ImageKey, ImageResult> {
    let l = this.#images.get(model);
    if (!l) {
      l = new DataLoader<ImageKey, ImageResult, string>(
        async (keys) => {
          this.#permit(model);
          const maxBytes = this.#s.images.maxBytes;
          const inputs: (ImageInput | PolyrayError)[] = keys.map((k) => {
            if ('imageUrl' in k) return { kind: 'url', url: k.imageUrl };
            try {
              return { kind: 'bytes', bytes: decodeBase64Image(k.imageBase64, maxBytes) };
            } catch (e) {
              return e as PolyrayError;
            }
          });
          const ok = inputs.filter((i): i is ImageInput => !(i instanceof PolyrayError));
          const results = ok.length > 0 ? await (this.#o.imageEmbedder ?? this.#s.images).embedImages(model, ok, this.#opts()) : [];
          let j = 0;
          return inputs.map((i) => (i instanceof PolyrayError ? i : results[j++]!));
        },
        { maxBatchSize: this.#o.maxBatch, cacheKeyFn: imageCacheKey },
      );
      this.#images.set(model, l);
    }
    return l;
  }

  /** Post embeddings of one model (postray, an image model or a text model). */
  posts(model: string): DataLoader<PostKey, EmbedResult | null> {
    let l = this.#posts.get(model);
    if (!l) {
      l = new DataLoader<PostKey, EmbedResult | null, string>(
        async (keys) => {
          this.#permit(model);
          const inputs = keys.map((k) => this.#postInput(k));
          const ok = inputs.filter((i): i is PostInput => !(i instanceof PolyrayError));
          const results = ok.length > 0 ? await this.#s.posts.embedPosts(model, ok, this.#opts()) : [];
          let j = 0;
          return inputs.map((i) => (i instanceof PolyrayError ? i : results[j++]!));
        },
        { maxBatchSize: this.#o.maxBatch, cacheKeyFn: postCacheKey },
      );
      this.#posts.set(model, l);
    }
    return l;
  }

  /** Head scores of posts. */
  classify(head: string): DataLoader<PostKey, LabelScore[] | null> {
    let l = this.#heads.get(head);
    if (!l) {
      l = new DataLoader<PostKey, LabelScore[] | null, string>(
        async (keys) => {
          this.#permit(head);
          return this.#s.posts.classifyPosts(head, keys.map((k) => ({ text: k.text ?? null, images: urls(k) })), this.#opts());
        },
        { maxBatchSize: this.#o.maxBatch, cacheKeyFn: postCacheKey },
      );
      this.#heads.set(head, l);
    }
    return l;
  }
}

function urls(p: PostKey): ImageInput[] {
  return (p.imageUrls ?? []).map((url) => ({ kind: 'url' as const, url }));
}
