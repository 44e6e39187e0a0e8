/**
 * `Post` entity resolvers. Polyray does not own posts: the gateway sends representations carrying
 * `id`, `text` and `imageUrls` (via `@requires`), and `embedding` turns them into a loader call.
 */
import { checkDimensions, checkModelName } from './args.ts';
import type { PolyrayContext } from './context.ts';
import { toEmbedding, type EmbeddingParent } from './embedding.ts';
import type { LabelScore } from '../models/heads.ts';

export interface PostRepresentation {
  __typename: 'Post';
  id: string;
  text?: string | null;
  imageUrls?: string[] | null;
}

export const postResolvers = {
  Post: {
    __resolveReference: (ref: PostRepresentation): PostRepresentation => ref,
    embedding: async (
      post: PostRepresentation,
      args: { model?: string | null; dimensions?: number | null },
      ctx: PolyrayContext,
    ): Promise<EmbeddingParent | null> => {
      const model = checkModelName(args.model ?? ctx.catalog.defaultPostModel);
      const dims = checkDimensions(ctx.catalog, model, args.dimensions);
      if (ctx.media.kindOf(model) === 'text') {
        // Text models read the text; a post without text has nothing for them to embed.
        if (typeof post.text !== 'string' || post.text.trim() === '') return null;
        const result = await ctx.loaders.embeddings(model).load(post.text);
        return toEmbedding(result, dims);
      }
      // postray and image models read the images too (PostService: one call for all posts of the tick).
      const result = await ctx.media.posts(model).load({ text: post.text ?? null, imageUrls: post.imageUrls ?? [] });
      return result ? toEmbedding(result, dims) : null;
    },
    classify: async (post: PostRepresentation, args: { head: string }, ctx: PolyrayContext): Promise<LabelScore[] | null> => {
      const head = checkModelName(args.head);
      return ctx.media.classify(head).load({ text: post.text ?? null, imageUrls: post.imageUrls ?? [] });
    },
  },
};
