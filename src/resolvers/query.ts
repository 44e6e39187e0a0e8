/**
 * `Query` resolvers: `embed` and `models`.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import { checkDimensions, checkModelName } from './args.ts';
import type { ModelInfo, PolyrayContext } from './context.ts';
import { toEmbedding, type EmbeddingParent } from './embedding.ts';

interface EmbedInput {
  text?: string | null;
}

export const queryResolvers = {
  Query: {
    embed: async (
      _: unknown,
      args: { model: string; inputs: EmbedInput[]; dimensions?: number | null },
      ctx: PolyrayContext,
    ): Promise<EmbeddingParent[]> => {
      const model = checkModelName(args.model);
      const max = ctx.catalog.maxInputsPerRequest;
      if (args.inputs.length > max) {
        throw new PolyrayError(ErrorCode.TOO_MANY_INPUTS, `Argument "inputs" has ${args.inputs.length} items; the limit is ${max} per request (POLYRAY_MAX_INPUTS)`, {
          argument: 'inputs',
          limit: max,
        });
      }
      const dims = checkDimensions(ctx.catalog, model, args.dimensions);
      const texts = args.inputs.map((input, index) => {
        const set = Object.entries(input).filter(([, v]) => v !== null && v !== undefined);
        if (set.length !== 1 || typeof input.text !== 'string') {
          throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `inputs[${index}] must set exactly one field; "text" is the supported kind`, { argument: 'inputs', index });
        }
        return input.text;
      });
      const results = await ctx.loaders.embeddings(model).loadMany(texts);
      return results.map((r, index) => {
        if (r instanceof Error) {
          if (r instanceof PolyrayError) throw new PolyrayError(r.code, r.message, { ...r.extensions, index });
          throw r;
        }
        return toEmbedding(r, dims);
      });
    },
    models: (_: unknown, __: unknown, ctx: PolyrayContext): ModelInfo[] => ctx.catalog.models(),
  },
};
