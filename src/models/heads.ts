/**
 * Task heads: small models that read another model's output and return one score per label
 * (MultiRay's "task-specific models on top of a shared embedding"). A head is an ordinary model folder
 * whose manifest carries `head: { input, inputOutput, inputVersion, labels }`; the first one,
 * `head-nsfw`, is built with the image encoder (`mobilenet.ts`).
 *
 * Owns: how a post's per-image head outputs become one answer. `Post.classify(head)` returns, for each
 * label in the head's order, the highest score any of the post's images gets — a post is as "Porn" as
 * its most explicit image, which is the reading moderation needs (a mean would let one explicit image
 * hide among harmless ones). For a head on a text model there is one input per post and its scores are
 * returned as they are.
 */
import type { HeadSpec } from '../runtime/manifest.ts';

export interface LabelScore {
  label: string;
  score: number;
}

/** Per-label maximum over the rows (one row of `labels.length` scores per image). */
export function maxPerLabel(head: Pick<HeadSpec, 'labels'>, rows: readonly Float32Array[]): LabelScore[] {
  return head.labels.map((label, k) => {
    let best = -Infinity;
    for (const r of rows) if (r[k]! > best) best = r[k]!;
    return { label, score: best };
  });
}
