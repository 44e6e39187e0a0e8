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

export const postResolvers = {
  Post: {
    __resolveReference: (ref: PostRepresentation): PostRepresentation => ref,
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
