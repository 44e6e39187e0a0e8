/**
 * `Post` entity resolvers. Polyray does not own posts: the gateway sends representations carrying
 * `id`, `text` and `imageUrls` (via `@requires`), and `embedding` / `classify` turn them into loader calls
 * of the request scope.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { LabelScore } from '../models/heads.ts';
import { checkDimensions, checkModelName, checkPrompt } from './args.ts';
import type { PolyrayContext } from './context.ts';
import { toEmbedding, type EmbeddingParent } from './embedding.ts';

export interface PostRepresentation {
  __typename: 'Post';
  id: string;
  text?: string | null;
  imageUrls?: string[] | null;
}

/**
 * A representation as the gateway sent it, checked field by field: a wrong type is BAD_USER_INPUT naming
 * the field, at this entity's own path (the other entities of the batch are served), never a silent null
 * and never an internal error.
 */
function checkRepresentation(ref: PostRepresentation): PostRepresentation {
  const bad = (field: string, expected: string, got: unknown): never => {
    const type = Array.isArray(got) ? 'an array' : got === null ? 'null' : typeof got;
    throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `Post representation field "${field}" must be ${expected}, received ${type}`, { field });
  };
  const r = ref as unknown as Record<string, unknown>;
  if (typeof r['id'] !== 'string' && typeof r['id'] !== 'number') bad('id', 'a string', r['id']);
  if (String(r['id']).length > 1024)
    throw new PolyrayError(ErrorCode.BAD_USER_INPUT, 'Post representation field "id" is longer than 1024 characters', { field: 'id' });
  const text = r['text'];
  if (text !== undefined && text !== null && typeof text !== 'string') bad('text', 'a string or null', text);
  const urls = r['imageUrls'];
  if (urls !== undefined && urls !== null) {
    if (!Array.isArray(urls)) bad('imageUrls', 'a list of strings or null', urls);
    (urls as unknown[]).forEach((u, i) => {
      if (typeof u !== 'string') bad(`imageUrls[${i}]`, 'a string', u);
    });
  }
  return ref;
}

export const postResolvers = {
  Post: {
    // Async on purpose: @apollo/subgraph maps the representations synchronously, so a throw here would fail
    // the whole `_entities` list; a rejected promise fails only this entity, at its own path.
    __resolveReference: async (ref: PostRepresentation): Promise<PostRepresentation> => checkRepresentation(ref),
    embedding: async (
      post: PostRepresentation,
      args: { model?: string | null; dimensions?: number | null; prompt?: string | null; promptName?: string | null; truncate?: boolean | null },
      ctx: PolyrayContext,
    ): Promise<EmbeddingParent | null> => {
      const handle = ctx.scope.model(checkModelName(args.model ?? ctx.catalog.defaultPostModel));
      const dims = checkDimensions(handle, args.dimensions);
      const prompt = checkPrompt(handle, args.prompt, args.promptName);
      if (handle.kind === 'text') {
        // Text models read the text; a post without text has nothing for them to embed.
        if (typeof post.text !== 'string' || post.text.trim() === '') return null;
        const options = { prompt, truncate: args.truncate === true };
        const text = post.text;
        return toEmbedding(await ctx.scope.texts(handle, options).load(text), dims, () => ctx.scope.tokenCounts(handle, options).load(text));
      }
      // postray and image models read the images too (one pipeline call per part for all posts of the tick).
      const result = await ctx.scope.posts(handle).load({ text: post.text ?? null, imageUrls: post.imageUrls ?? [] });
      return result ? toEmbedding(result, dims) : null;
    },
    classify: async (post: PostRepresentation, args: { head: string }, ctx: PolyrayContext): Promise<LabelScore[] | null> => {
      const name = checkModelName(args.head);
      const handle = ctx.scope.model(name);
      if (handle.kind !== 'head')
        throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${name} is not a task head; Post.classify reads heads such as those Query.models lists`, {
          model: name,
        });
      return ctx.scope.classify(handle).load({ text: post.text ?? null, imageUrls: post.imageUrls ?? [] });
    },
  },
};
