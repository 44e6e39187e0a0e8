/**
 * Posts: what Polyray computes for a whole post — its embedding under a post model (postray: text and
 * images fused, src/models/postray.ts), an image model (the normalised mean of its images) or a text model,
 * and task-head scores (`Post.classify`, src/models/heads.ts).
 *
 * Both are assembled from part results that come through the normal pipeline: `PartEmbedders` are the
 * request scope's charged text and image calls, one call each for all posts of a tick, so a page of posts
 * is one text cache read, one image cache read and as few batches as the limits allow. Nothing post-level
 * is cached; head scores are computed from the cached raw image features, so on a hit only the (tiny)
 * head runs, never the encoder.
 *
 * A post whose image cannot be fetched or decoded fails only itself, with the image's error code and
 * `imageIndex` (its position in `imageUrls`).
 */
import type { SubmitOptions } from '../runtime/dispatch-queue.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import { maxPerLabel, type LabelScore } from '../models/heads.ts';
import { fusePost, meanImage } from '../models/postray.ts';
import type { HeadHandle, ImageHandle, ModelHandle, TextHandle } from '../runtime/handle.ts';
import type { ImageInput, ImageResult, ImageWant } from './image.ts';
import type { EmbedResult, Source } from './types.ts';

export interface PostInput {
  text?: string | null;
  images?: readonly ImageInput[];
}

/** The request scope's charged part calls. */
export interface PartEmbedders {
  texts(handle: TextHandle, texts: readonly string[]): Promise<(EmbedResult | PolyrayError)[]>;
  images(handle: ImageHandle, inputs: readonly ImageInput[], want: ImageWant): Promise<(ImageResult | PolyrayError)[]>;
}

export interface PostLimits {
  /** Most images read per post (POLYRAY_MAX_IMAGES_PER_POST). */
  maxImagesPerPost: number;
}

const SOURCE_RANK: Record<Source, number> = { MEMORY: 0, GLOBAL: 1, COMPUTED: 2 };

/** The "least cached" of the parts' sources: COMPUTED if any part was computed, else GLOBAL if any, else MEMORY. */
function combineSources(sources: readonly Source[]): Source {
  return sources.reduce<Source>((a, b) => (SOURCE_RANK[b] > SOURCE_RANK[a] ? b : a), 'MEMORY');
}

/**
 * One embedding per post, for a post, image or text model. `null` for a post with nothing the model reads.
 */
export async function embedPosts(
  handle: Exclude<ModelHandle, HeadHandle>,
  posts: readonly PostInput[],
  parts: PartEmbedders,
  limits: PostLimits,
): Promise<(EmbedResult | null | PolyrayError)[]> {
  const textModel = handle.kind === 'post' ? handle.text : handle.kind === 'text' ? handle : undefined;
  const imageModel = handle.kind === 'post' ? handle.image : handle.kind === 'image' ? handle : undefined;
  const [texts, images] = await Promise.all([postTexts(textModel, posts, parts), postImages(imageModel, posts, 'embedding', parts, limits)]);
  return posts.map((_, p) => {
    const t = texts[p];
    const imgs = images[p] ?? [];
    if (t instanceof PolyrayError) return t;
    if (imgs instanceof PolyrayError) return imgs;
    const sources = [...(t ? [t.source] : []), ...imgs.map((i) => i.source)];
    const charge = { tokens: t?.tokens ?? 0, inferenceMs: (t?.inferenceMs ?? 0) + imgs.reduce((s, i) => s + i.inferenceMs, 0) };
    switch (handle.kind) {
      case 'text':
        return t ?? null;
      case 'image': {
        const m = imgs[0]
          ? meanImage(
              imgs.map((i) => i.vector),
              imgs[0].vector.length,
            )
          : undefined;
        return m ? { vector: m, source: combineSources(sources), model: handle.name, version: imgs[0]!.version, ...charge } : null;
      }
      case 'post': {
        const v = fusePost(
          t?.vector,
          imgs.map((i) => i.vector),
          { text: handle.text.dimensions, image: handle.image.dimensions },
        );
        return v ? { vector: v, source: combineSources(sources), model: handle.name, version: handle.version, ...charge } : null;
      }
      default: {
        const never: never = handle;
        throw new Error(`unknown handle ${JSON.stringify(never)}`);
      }
    }
  });
}

/**
 * Scores of a task head for each post: for an image head, the per-label maximum over the post's images
 * (null for a post without images); for a text head, the scores of the post's text.
 */
export async function classifyPosts(
  handle: HeadHandle,
  posts: readonly PostInput[],
  parts: PartEmbedders,
  limits: PostLimits,
  clientId: string | undefined,
  serve: SubmitOptions = {},
): Promise<(LabelScore[] | null | PolyrayError)[]> {
  const { head, input } = handle;
  // Each post's head inputs: image features (or embeddings), or its text embedding.
  let rows: (Float32Array[] | PolyrayError)[];
  if (input.kind === 'image') {
    const want = head.inputOutput === 'embedding' ? 'embedding' : 'feature';
    const images = await postImages(input, posts, want, parts, limits);
    rows = images.map((r) => (r instanceof PolyrayError ? r : r.map((i) => (want === 'feature' ? i.feature! : i.vector))));
  } else if (head.inputOutput === 'embedding') {
    const texts = await postTexts(input, posts, parts);
    rows = texts.map((t) => (t instanceof PolyrayError ? t : t ? [t.vector] : []));
  } else {
    throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Head "${handle.name}" reads ${head.input}.${head.inputOutput}, which this replica cannot provide`, {
      model: handle.name,
    });
  }
  // Run the head once per distinct input vector.
  const distinct = new Map<Float32Array, Promise<Float32Array>>();
  const fresh = [...new Set(rows.flatMap((r) => (r instanceof PolyrayError ? [] : r)))];
  if (fresh.length > 0) {
    const results = handle.queue.submit(
      fresh.map((data) => ({ data, cost: 1, ...(clientId ? { tag: clientId } : {}) })),
      { ...serve, client: clientId },
    );
    fresh.forEach((v, j) => {
      distinct.set(
        v,
        results[j]!.then((r) => r.outputs[0]!),
      );
    });
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

/** Text embeddings of the posts with text (undefined for those without), in one call. */
async function postTexts(
  handle: TextHandle | undefined,
  posts: readonly PostInput[],
  parts: PartEmbedders,
): Promise<(EmbedResult | undefined | PolyrayError)[]> {
  const out: (EmbedResult | undefined | PolyrayError)[] = posts.map(() => undefined);
  if (!handle) return out;
  const idx: number[] = [];
  const texts: string[] = [];
  posts.forEach((p, i) => {
    if (typeof p.text === 'string' && p.text.trim() !== '') {
      idx.push(i);
      texts.push(p.text);
    }
  });
  if (texts.length === 0) return out;
  const results = await parts.texts(handle, texts);
  results.forEach((r, j) => {
    out[idx[j]!] = r;
  });
  return out;
}

/** Image results per post (all images of all posts in one call); a post with a failed image gets that error. */
async function postImages(
  handle: ImageHandle | undefined,
  posts: readonly PostInput[],
  want: ImageWant,
  parts: PartEmbedders,
  limits: PostLimits,
): Promise<(ImageResult[] | PolyrayError)[]> {
  const out: (ImageResult[] | PolyrayError)[] = posts.map(() => []);
  if (!handle) return out;
  const flat: ImageInput[] = [];
  const owner: { post: number; image: number }[] = [];
  posts.forEach((p, i) => {
    const imgs = p.images ?? [];
    if (imgs.length > limits.maxImagesPerPost) {
      out[i] = new PolyrayError(
        ErrorCode.INPUT_TOO_LARGE,
        `A post has ${imgs.length} images; at most ${limits.maxImagesPerPost} are read (POLYRAY_MAX_IMAGES_PER_POST)`,
        {
          images: imgs.length,
          limit: limits.maxImagesPerPost,
        },
      );
      return;
    }
    imgs.forEach((img, k) => {
      flat.push(img);
      owner.push({ post: i, image: k });
    });
  });
  if (flat.length === 0) return out;
  const results = await parts.images(handle, flat, want);
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
