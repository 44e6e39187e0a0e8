/**
 * `Query` resolvers: `embed` and `models`.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import { checkDimensions, checkModelName } from './args.ts';
import type { ModelInfo, PolyrayContext } from './context.ts';
import { toEmbedding, type EmbeddingParent } from './embedding.ts';
import type { EmbedResult } from '../service/embedding.ts';

function zeroResult(model: string, ctx: PolyrayContext): EmbedResult {
  const info = ctx.catalog.models().find((m) => m.name === model);
  return { vector: new Float32Array(ctx.catalog.dimensionsOf(model)), source: 'MEMORY', model, version: info?.version ?? '', tokens: 0, inferenceMs: 0 };
}

interface EmbedInput {
  text?: string | null;
  imageUrl?: string | null;
  imageBase64?: string | null;
}

/** One validated input: exactly one field set. */
type OneInput = { text: string } | { imageUrl: string } | { imageBase64: string };

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
      const kind = ctx.media.kindOf(model);
      const inputs: OneInput[] = args.inputs.map((input, index) => {
        const set = Object.entries(input).filter(([, v]) => v !== null && v !== undefined);
        if (set.length !== 1 || typeof set[0]![1] !== 'string') {
          throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `inputs[${index}] must set exactly one field: "text", "imageUrl" or "imageBase64"`, { argument: 'inputs', index });
        }
        const isText = 'text' in input && typeof input.text === 'string';
        if ((kind === 'text' && !isText) || (kind === 'image' && isText) || kind === 'head') {
          const reads = kind === 'text' ? 'text ("text")' : kind === 'image' ? 'images ("imageUrl" or "imageBase64")' : 'model outputs: use Post.classify';
          throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `inputs[${index}]: model ${model} reads ${reads}`, { argument: 'inputs', index });
        }
        return input as OneInput;
      });
      // Text models: the text loader (with accounting); image models: the image loader; postray: one-part posts.
      const results = await Promise.all(
        inputs.map((input): Promise<unknown> => {
          if (kind === 'text') return ctx.loaders.embeddings(model).load((input as { text: string }).text).catch((e: unknown) => e as Error);
          if (kind === 'image') return ctx.media.images(model).load(input as { imageUrl: string } | { imageBase64: string }).catch((e: unknown) => e as Error);
          const post = 'text' in input ? { text: input.text } : 'imageUrl' in input ? { imageUrls: [input.imageUrl] } : { imageBase64: input.imageBase64 };
          return ctx.media.posts(model).load(post).catch((e: unknown) => e as Error);
        }),
      ).then((rs) => rs as (EmbedResult | null | Error)[]);
      return results.map((r, index) => {
        if (r instanceof Error) {
          if (r instanceof PolyrayError) throw new PolyrayError(r.code, r.message, { ...r.extensions, index });
          throw r;
        }
        // A postray input with nothing to embed (an empty text) is the zero vector, as for text models.
        if (r === null) return toEmbedding(zeroResult(model, ctx), dims);
        return toEmbedding(r, dims);
      });
    },
    models: (_: unknown, __: unknown, ctx: PolyrayContext): ModelInfo[] => ctx.catalog.models(),
  },
};
