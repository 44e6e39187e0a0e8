/**
 * The model build registry: which models Polyray can build from shipped weights, and a runner that
 * builds the ones that are missing or stale into a models directory.
 *
 * Owns: the list of builders and the per-model summary `polyray models build` prints. Each builder
 * owns its own idempotence (it decides "up to date" from its `build-info.json`), so calling
 * `buildModels` repeatedly is cheap. What builders share lives in `builder.ts`, which this registry
 * and every builder import (never this file), so the imports have no cycle.
 */

import { mkdir } from 'node:fs/promises';
import path from 'node:path';

import { ErrorCode, PolyrayError } from '../errors.ts';
import { BERT_FP16_MODEL, BERT_MODELS, buildBertSynthetic } from './bert.ts';
import type { ModelBuildResult } from './builder.ts';
import { buildGlove } from './glove.ts';
import { HEAD_MODEL, IMAGE_FP16_MODEL, IMAGE_MODEL, buildMobilenet } from './mobilenet.ts';
import type { ModelBuildProgress, ProgressListener } from './progress.ts';

/** One line of the summary `buildModels` returns. */
export interface ModelBuildSummary extends ModelBuildResult {
  /** Wall time spent on this model, including the up-to-date check. */
  ms: number;
}

export interface ModelBuilder {
  /** Public model name, also the folder name. */
  name: string;
  build(options: { outDir: string; force: boolean; onProgress: ProgressListener }): Promise<ModelBuildResult>;
}

/** Every model we can build, in build order. */
export const MODEL_BUILDERS: readonly ModelBuilder[] = [
  { name: 'text-glove', build: (o) => buildGlove(o) },
  // Synthetic BERT encoders (random weights, real cost): one builder per variant, same weights.
  { name: BERT_MODELS.plain, build: (o) => buildBertSynthetic({ ...o, variant: 'plain' }) },
  { name: BERT_MODELS.fused, build: (o) => buildBertSynthetic({ ...o, variant: 'fused' }) },
  { name: BERT_MODELS.int8, build: (o) => buildBertSynthetic({ ...o, variant: 'int8' }) },
  // The plain graph in float16, for GPU providers (CUDA, WebGPU); same weights.
  { name: BERT_FP16_MODEL, build: (o) => buildBertSynthetic({ ...o, variant: 'plain', precision: 'fp16' }) },
  // MobileNetV2 image encoder and its NSFW head, converted from the TF.js model shipped in npm `nsfwjs`.
  { name: IMAGE_MODEL, build: (o) => buildMobilenet({ ...o, only: IMAGE_MODEL }) },
  { name: HEAD_MODEL, build: (o) => buildMobilenet({ ...o, only: HEAD_MODEL }) },
  // The same encoder in float16, for GPU providers (CUDA, WebGPU); heads and postray stay on the fp32 one.
  { name: IMAGE_FP16_MODEL, build: (o) => buildMobilenet({ ...o, only: IMAGE_FP16_MODEL }) },
];

export interface BuildModelsOptions {
  /** The models directory (created if missing). */
  modelsDir: string;
  /** Build only these models (names as in MODEL_BUILDERS). Absent or empty: all. */
  only?: readonly string[];
  /** Rebuild even when up to date. */
  force?: boolean;
  onProgress?: ProgressListener<ModelBuildProgress>;
}

/**
 * Builds every selected model that is missing or stale; sequential, because each build holds a
 * large weight file in memory. Unknown names in `only` are refused before anything is built.
 */
export async function buildModels(options: BuildModelsOptions): Promise<ModelBuildSummary[]> {
  const known = MODEL_BUILDERS.map((b) => b.name);
  const unknown = (options.only ?? []).filter((n) => !known.includes(n));
  if (unknown.length > 0) {
    throw new PolyrayError(
      ErrorCode.BAD_USER_INPUT,
      `Unknown model ${unknown.map((n) => JSON.stringify(n)).join(', ')}; buildable models are: ${known.join(', ')}.`,
      { unknown, known },
    );
  }
  const only = options.only ?? [];
  const selected = only.length > 0 ? MODEL_BUILDERS.filter((b) => only.includes(b.name)) : MODEL_BUILDERS;
  const outDir = path.resolve(options.modelsDir);
  await mkdir(outDir, { recursive: true });

  const summaries: ModelBuildSummary[] = [];
  for (const builder of selected) {
    const started = performance.now();
    const result = await builder.build({
      outDir,
      force: options.force ?? false,
      onProgress: (p) => options.onProgress?.({ ...p, model: builder.name }),
    });
    summaries.push({ ...result, ms: Math.round(performance.now() - started) });
  }
  return summaries;
}
