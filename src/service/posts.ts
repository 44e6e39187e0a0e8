/**
 * PostService: what Polyray computes for a whole post — its `postray` embedding (text + images, see
 * src/models/postray.ts) and task-head scores (`Post.classify`, see src/models/heads.ts).
 *
 * Both are assembled from part results that go through the normal paths: text through
 * `EmbeddingService.embedMany` (or the request's accounting wrapper around it), images through
 * `ImageService` — one call each for all posts of a request, so a page of posts is one text cache read,
 * one image cache read, and as few inference batches as the batch limits allow. Nothing post-level is
 * cached: a post whose parts are cached is fused without any inference. Head scores are computed from
 * the cached raw image features; on a cache hit only the (tiny) head runs, never the encoder.
 *
 * A post whose image cannot be fetched or decoded fails only itself, with the image's error code and
 * `imageIndex` (its position in `imageUrls`); the other posts of the query are unaffected.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { ImageInput, ImageResult, ImageService } from '../images/service.ts';
import { maxPerLabel, type LabelScore } from '../models/heads.ts';
import { POSTRAY_IMAGE_MODEL, POSTRAY_MODEL, POSTRAY_TEXT_MODEL, fusePost, meanImage, postrayVersion } from '../models/postray.ts';
import type { HeadSpec } from '../runtime/manifest.ts';
import type { ModelRegistry, RegisteredModel } from '../runtime/registry.ts';
import type { TensorBatcher } from '../runtime/tensor-batcher.ts';
import type { EmbeddingService, EmbedResult, Source } from './embedding.ts';

export interface PostInput {
  text?: string | null;
  images?: readonly ImageInput[];
}

export interface PostOptions {
  /** Embeds texts; the request's accounting wrapper when there is one. Default: the EmbeddingService. */
  textEmbedder?: Pick<EmbeddingService, 'embedMany'>;
  /** Embeds images; the request's accounting wrapper when there is one. Default: the ImageService. */
  imageEmbedder?: Pick<ImageService, 'embedImages'>;
  clientId?: string;
}

export interface PostServiceOptions {
  registry: ModelRegistry;
  text: Pick<EmbeddingService, 'embedMany'>;
  images: ImageService;
  /** Tensor batchers by model name (heads among them). */
  batchers: ReadonlyMap<string, TensorBatcher>;
  /** Most images read per post. */
  maxImagesPerPost: number;
}

export type ModelKind = 'text' | 'image' | 'post' | 'head';

export interface PostServiceStats {
  posts: number;
  classified: number;
  /** Head inputs run (one per distinct image feature). */
  headItems: number;
}

const SOURCE_RANK: Record<Source, number> = { MEMORY: 0, GLOBAL: 1, COMPUTED: 2 };

/** The "least cached" of the parts' sources: COMPUTED if any part was computed, else GLOBAL if any, else MEMORY. */
function combineSources(sources: readonly Source[]): Source {
  return sources.reduce<Source>((a, b) => (SOURCE_RANK[b] > SOURCE_RANK[a] ? b : a), 'MEMORY');
}

export class PostService {
  readonly #o: PostServiceOptions;
  readonly #stats: PostServiceStats = { posts: 0, classified: 0, headItems: 0 };

  constructor(options: PostServiceOptions) {
    this.#o = options;
  }

  /** What a model name is; throws MODEL_NOT_FOUND for unknown names. */
  kindOf(model: string): ModelKind {
    if (model === POSTRAY_MODEL) return 'post';
    const m = this.#o.registry.get(model);
    if (!m) {
      const known = [POSTRAY_MODEL, ...this.#o.registry.list().map((x) => x.manifest.name)].join(', ');
      throw new PolyrayError(ErrorCode.MODEL_NOT_FOUND, `Unknown model "${model.slice(0, 64)}"; available models: ${known}`, { model: model.slice(0, 64) });
    }
    if (m.manifest.head) return 'head';
    return m.manifest.preprocess ? 'image' : 'text';
  }

  /** The postray parts, both ready; otherwise MODEL_NOT_READY. */
  #postrayParts(): { text: RegisteredModel; image: RegisteredModel; version: string } {
    const text = this.#o.registry.get(POSTRAY_TEXT_MODEL);
    const image = this.#o.registry.get(POSTRAY_IMAGE_MODEL);
    if (text?.state.kind !== 'ready' || image?.state.kind !== 'ready') {
      throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model "${POSTRAY_MODEL}" needs ${POSTRAY_TEXT_MODEL} and ${POSTRAY_IMAGE_MODEL}, which are not both ready on this replica`, {
        model: POSTRAY_MODEL,
        retryAfterMs: 1000,
      });
    }
    return { text, image, version: postrayVersion(text.manifest.version, image.manifest.version) };
  }

  /** Dimensions and version of `postray`, or undefined when its parts are not ready. */
  postrayInfo(): { version: string; dimensions: number; ready: boolean } | undefined {
    const text = this.#o.registry.get(POSTRAY_TEXT_MODEL);
    const image = this.#o.registry.get(POSTRAY_IMAGE_MODEL);
    if (!text || !image) return undefined;
    return {
      version: postrayVersion(text.manifest.version, image.manifest.version),
      dimensions: text.manifest.dimensions + image.manifest.dimensions,
      ready: text.state.kind === 'ready' && image.state.kind === 'ready',
    };
  }

  dimensionsOf(model: string): number | undefined {
    if (model !== POSTRAY_MODEL) return undefined;
    const { text, image } = this.#postrayParts();
    return text.manifest.dimensions + image.manifest.dimensions;
  }

  /**
   * One embedding per post, for `postray` or an image model (the normalised mean of the post's image
   * embeddings) or a text model (the text's embedding). `null` for a post with nothing the model reads.
   */
  async embedPosts(model: string, posts: readonly PostInput[], options: PostOptions = {}): Promise<(EmbedResult | null | PolyrayError)[]> {
    this.#stats.posts += posts.length;
    const kind = this.kindOf(model);
    if (kind === 'head') throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${model} is a task head; use Post.classify(head: "${model}")`, { model });
    const textModel = kind === 'post' ? POSTRAY_TEXT_MODEL : kind === 'text' ? model : undefined;
    const imageModel = kind === 'post' ? POSTRAY_IMAGE_MODEL : kind === 'image' ? model : undefined;
    const parts = kind === 'post' ? this.#postrayParts() : undefined;
    const [texts, images] = await Promise.all([this.#texts(textModel, posts, options), this.#images(imageModel, posts, 'embedding', options)]);
    return posts.map((_, p) => {
      const t = texts[p];
      const imgs = images[p] ?? [];
      if (t instanceof PolyrayError) return t;
      if (imgs instanceof PolyrayError) return imgs;
      const sources = [...(t ? [t.source] : []), ...imgs.map((i) => i.source)];
      const charge = { tokens: t?.tokens ?? 0, inferenceMs: (t?.inferenceMs ?? 0) + imgs.reduce((s, i) => s + i.inferenceMs, 0) };
      if (kind === 'text') return t ?? null;
      if (kind === 'image') {
        const m = imgs[0] ? meanImage(imgs.map((i) => i.vector), imgs[0].vector.length) : undefined;
        if (!m) return null;
        return { vector: m, source: combineSources(sources), model, version: imgs[0]!.version, ...charge };
      }
      const dims = { text: parts!.text.manifest.dimensions, image: parts!.image.manifest.dimensions };
      const v = fusePost(t?.vector, imgs.map((i) => i.vector), dims);
      if (!v) return null;
      return { vector: v, source: combineSources(sources), model: POSTRAY_MODEL, version: parts!.version, ...charge };
    });
  }

  /**
   * Scores of a task head for each post: for an image head, the per-label maximum over the post's
   * images (null for a post without images); for a text head, the scores of the post's text.
   */
  async classifyPosts(headName: string, posts: readonly PostInput[], options: PostOptions = {}): Promise<(LabelScore[] | null | PolyrayError)[]> {
    const headModel = this.#head(headName);
    const head = headModel.manifest.head!;
    const batcher = this.#o.batchers.get(headName);
    if (!batcher) throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Head "${headName}" has no inference queue on this replica`, { model: headName });
    this.#stats.classified += posts.length;
    const inputKind = this.kindOf(head.input);
    // Each post's head inputs: image features (or embeddings), or its text embedding.
    let rows: (Float32Array[] | PolyrayError)[];
    if (inputKind === 'image') {
      const want = head.inputOutput === 'embedding' ? 'embedding' : 'feature';
      const images = await this.#images(head.input, posts, want, options);
      rows = images.map((r) => (r instanceof PolyrayError ? r : r.map((i) => (want === 'feature' ? i.feature! : i.vector))));
    } else if (inputKind === 'text' && head.inputOutput === 'embedding') {
      const texts = await this.#texts(head.input, posts, options);
      rows = texts.map((t) => (t instanceof PolyrayError ? t : t ? [t.vector] : []));
    } else {
      throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Head "${headName}" reads ${head.input}.${head.inputOutput}, which this replica cannot provide`, { model: headName });
    }
    // Run the head once per distinct input vector.
    const distinct = new Map<Float32Array, Promise<Float32Array>>();
    const all = rows.flatMap((r) => (r instanceof PolyrayError ? [] : r));
    const fresh = [...new Set(all)];
    if (fresh.length > 0) {
      this.#stats.headItems += fresh.length;
      const results = batcher.submit(fresh.map((data) => ({ data, cost: 1, ...(options.clientId ? { tag: options.clientId } : {}) })));
      fresh.forEach((v, j) => distinct.set(v, results[j]!.then((r) => r.outputs[0]!)));
    }
    return Promise.all(
      rows.map(async (r) => {
        if (r instanceof PolyrayError) return r;
        if (r.length === 0) return null;
        try {
          return maxPerLabel(head, await Promise.all(r.map((v) => distinct.get(v)!)));
        } catch (e) {
          return e instanceof PolyrayError ? e : new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed; the request can be retried');
        }
      }),
    );
  }

  #head(name: string): RegisteredModel & { manifest: { head: HeadSpec } } {
    const m = this.#o.registry.get(name);
    if (!m || !m.manifest.head) {
      const heads = this.#o.registry
        .list()
        .filter((x) => x.manifest.head)
        .map((x) => x.manifest.name);
      throw new PolyrayError(ErrorCode.MODEL_NOT_FOUND, `Unknown head "${name.slice(0, 64)}"; available heads: ${heads.join(', ') || 'none'}`, { head: name.slice(0, 64) });
    }
    if (m.state.kind !== 'ready') throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Head "${name}" is not available on this replica`, { model: name, retryAfterMs: 1000 });
    const input = this.#o.registry.get(m.manifest.head.input);
    if (!input || input.manifest.version !== m.manifest.head.inputVersion) {
      throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Head "${name}" was built for ${m.manifest.head.input}@${m.manifest.head.inputVersion}, which this replica does not serve`, { model: name });
    }
    return m as RegisteredModel & { manifest: { head: HeadSpec } };
  }

  /** Text embeddings of the posts with text (undefined for those without), in one call. */
  async #texts(model: string | undefined, posts: readonly PostInput[], options: PostOptions): Promise<(EmbedResult | undefined | PolyrayError)[]> {
    if (!model) return posts.map(() => undefined);
    const idx: number[] = [];
    const texts: string[] = [];
    posts.forEach((p, i) => {
      if (typeof p.text === 'string' && p.text.trim() !== '') {
        idx.push(i);
        texts.push(p.text);
      }
    });
    const out: (EmbedResult | undefined | PolyrayError)[] = posts.map(() => undefined);
    if (texts.length === 0) return out;
    const results = await (options.textEmbedder ?? this.#o.text).embedMany(model, texts);
    results.forEach((r, j) => (out[idx[j]!] = r));
    return out;
  }

  /** Image results per post (all images of all posts in one call); a post with a failed image gets that error. */
  async #images(model: string | undefined, posts: readonly PostInput[], want: 'embedding' | 'feature', options: PostOptions): Promise<(ImageResult[] | PolyrayError)[]> {
    if (!model) return posts.map(() => []);
    const flat: ImageInput[] = [];
    const owner: { post: number; image: number }[] = [];
    const out: (ImageResult[] | PolyrayError)[] = posts.map(() => []);
    posts.forEach((p, i) => {
      const imgs = p.images ?? [];
      if (imgs.length > this.#o.maxImagesPerPost) {
        out[i] = new PolyrayError(ErrorCode.INPUT_TOO_LARGE, `A post has ${imgs.length} images; at most ${this.#o.maxImagesPerPost} are read (POLYRAY_MAX_IMAGES_PER_POST)`, {
          images: imgs.length,
          limit: this.#o.maxImagesPerPost,
        });
        return;
      }
      imgs.forEach((img, k) => {
        flat.push(img);
        owner.push({ post: i, image: k });
      });
    });
    if (flat.length === 0) return out;
    const results = await (options.imageEmbedder ?? this.#o.images).embedImages(model, flat, { want, ...(options.clientId ? { clientId: options.clientId } : {}) });
    results.forEach((r, j) => {
      const { post, image } = owner[j]!;
      const cur = out[post]!;
      if (cur instanceof PolyrayError) return; // the post's first failing image decides its error
      if (r instanceof PolyrayError) {
        const { index: _drop, ...ext } = r.extensions;
        out[post] = new PolyrayError(r.code, r.message, { ...ext, imageIndex: image });
      } else {
        cur[image] = r;
      }
    });
    return out;
  }

  stats(): PostServiceStats {
    return { ...this.#stats };
  }
}
