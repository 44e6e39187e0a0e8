/**
 * `Post` entity resolvers. Polyray does not own posts: the gateway sends representations carrying
 * `id`, `text` and `imageUrls` (via `@requires`), and `embedding` turns them into a loader call.
 */
import { checkDimensions, checkModelName } from './args.ts';
import type { PolyrayContext } from './context.ts';
import { toEmbedding, type EmbeddingParent } from './embedding.ts';

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
      // Text models read the text; a post without text has nothing for them to embed.
      if (typeof post.text !== 'string' || post.text.trim() === '') return null;
      const result = await ctx.loaders.embeddings(model).load(post.text);
      return toEmbedding(result, dims);
    },
  },
};
