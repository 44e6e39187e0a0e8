/**
 * `Query` resolvers: `embed` and `models`.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import { checkDimensions, checkModelName, checkPrompt } from './args.ts';
import type { ModelInfo, PolyrayContext } from './context.ts';
import { toEmbedding, type EmbeddingParent } from './embedding.ts';
import type { ModelHandle } from '../runtime/handle.ts';
import type { EmbedResult } from '../service/types.ts';

function zeroResult(handle: ModelHandle): EmbedResult {
  return { vector: new Float32Array(handle.dimensions), source: 'MEMORY', model: handle.name, version: handle.version, tokens: 0, inferenceMs: 0 };
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
      args: { model: string; inputs: EmbedInput[]; dimensions?: number | null; prompt?: string | null; promptName?: string | null; truncate?: boolean | null },
      ctx: PolyrayContext,
    ): Promise<EmbeddingParent[]> => {
      const model = checkModelName(args.model);
      const max = ctx.catalog.maxInputsPerRequest;
      if (args.inputs.length > max) {
        throw new PolyrayError(
          ErrorCode.TOO_MANY_INPUTS,
          `Argument "inputs" has ${args.inputs.length} items; the limit is ${max} per request (POLYRAY_MAX_INPUTS)`,
          {
            argument: 'inputs',
            limit: max,
          },
        );
      }
      const handle = ctx.scope.model(model);
      const dims = checkDimensions(handle, args.dimensions);
      const prompt = checkPrompt(handle, args.prompt, args.promptName);
      const kind = handle.kind;
      const textOptions = { prompt, truncate: args.truncate === true };
      const inputs: OneInput[] = args.inputs.map((input, index) => {
        const set = Object.entries(input).filter(([, v]) => v !== null && v !== undefined);
        if (set.length !== 1 || typeof set[0]![1] !== 'string') {
          throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `inputs[${index}] must set exactly one field: "text", "imageUrl" or "imageBase64"`, {
            argument: 'inputs',
            index,
          });
        }
        const isText = 'text' in input && typeof input.text === 'string';
        if ((kind === 'text' && !isText) || (kind === 'image' && isText) || kind === 'head') {
          const reads = kind === 'text' ? 'text ("text")' : kind === 'image' ? 'images ("imageUrl" or "imageBase64")' : 'model outputs: use Post.classify';
          throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `inputs[${index}]: model ${model} reads ${reads}`, { argument: 'inputs', index });
        }
        return input as OneInput;
      });
      // Text models: the text loader; image models: the image loader; postray: one-part posts.
      const results = await Promise.all(
        inputs.map((input): Promise<EmbedResult | null | Error> => {
          const caught = (e: unknown): Error => e as Error;
          if (handle.kind === 'text')
            return ctx.scope
              .texts(handle, textOptions)
              .load((input as { text: string }).text)
              .catch(caught);
          if (handle.kind === 'image')
            return ctx.scope
              .images(handle)
              .load(input as { imageUrl: string } | { imageBase64: string })
              .catch(caught);
          const post = 'text' in input ? { text: input.text } : 'imageUrl' in input ? { imageUrls: [input.imageUrl] } : { imageBase64: input.imageBase64 };
          return ctx.scope.posts(handle).load(post).catch(caught);
        }),
      );
      return results.map((r, index) => {
        if (r instanceof Error) {
          if (r instanceof PolyrayError) throw new PolyrayError(r.code, r.message, { ...r.extensions, index });
          throw r;
        }
        // A postray input with nothing to embed (an empty text) is the zero vector, as for text models.
        if (r === null) return toEmbedding(zeroResult(handle), dims);
        if (handle.kind !== 'text') return toEmbedding(r, dims);
        const text = (inputs[index] as { text: string }).text;
        return toEmbedding(r, dims, () => ctx.scope.tokenCounts(handle, textOptions).load(text));
      });
    },
    models: (_: unknown, __: unknown, ctx: PolyrayContext): ModelInfo[] => ctx.catalog.models(),
  },
};
