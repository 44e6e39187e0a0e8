/**
 * Shapes an EmbedResult into the `Embedding` GraphQL type. Truncation happens here, at the edge.
 */
import type { EmbedResult, TokenCount } from '../service/types.ts';
import { encodeWire, type WireEncoding } from '../cache/codec.ts';
import type { PolyrayContext } from './context.ts';
import { truncate } from './shape.ts';

export interface EmbeddingParent {
  result: EmbedResult;
  vector: Float32Array;
  /** Text inputs: counts the input's tokens (for answers from the cache, which carry no count). */
  count?: () => Promise<TokenCount>;
}

export function toEmbedding(result: EmbedResult, dimensions: number | undefined, count?: () => Promise<TokenCount>): EmbeddingParent {
  return { result, vector: truncate(result.vector, dimensions), ...(count ? { count } : {}) };
}

/** The input's token count: carried by a computed answer, else counted when asked; null for non-text inputs. */
async function tokensOf(p: EmbeddingParent): Promise<TokenCount | null> {
  return p.result.inputTokens ?? (p.count ? p.count() : null);
}

export const embeddingResolvers = {
  Embedding: {
    model: (p: EmbeddingParent): string => `${p.result.model}@${p.result.version}`,
    dimensions: (p: EmbeddingParent): number => p.vector.length,
    vector: (p: EmbeddingParent): number[] => Array.from(p.vector),
    base64: (p: EmbeddingParent, args: { encoding?: WireEncoding }): string => encodeWire(p.vector, args.encoding ?? 'FLOAT32'),
    source: (p: EmbeddingParent, _: unknown, ctx: PolyrayContext): string | null => (ctx.scope.account.showSource ? p.result.source : null),
    inputTokens: async (p: EmbeddingParent): Promise<number | null> => (await tokensOf(p))?.kept ?? null,
    truncated: async (p: EmbeddingParent): Promise<boolean | null> => {
      const t = await tokensOf(p);
      return t ? t.total > t.kept : null;
    },
  },
};
