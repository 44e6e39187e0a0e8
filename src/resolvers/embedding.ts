/**
 * Shapes an EmbedResult into the `Embedding` GraphQL type. Truncation happens here, at the edge.
 */
import type { EmbedResult } from '../service/types.ts';
import { encodeWire, type WireEncoding } from '../cache/codec.ts';
import { truncate } from './shape.ts';

export interface EmbeddingParent {
  result: EmbedResult;
  vector: Float32Array;
}

export function toEmbedding(result: EmbedResult, dimensions: number | undefined): EmbeddingParent {
  return { result, vector: truncate(result.vector, dimensions) };
}

export const embeddingResolvers = {
  Embedding: {
    model: (p: EmbeddingParent): string => `${p.result.model}@${p.result.version}`,
    dimensions: (p: EmbeddingParent): number => p.vector.length,
    vector: (p: EmbeddingParent): number[] => Array.from(p.vector),
    base64: (p: EmbeddingParent, args: { encoding?: WireEncoding }): string => encodeWire(p.vector, args.encoding ?? 'FLOAT32'),
    source: (p: EmbeddingParent): string => p.result.source,
  },
};
