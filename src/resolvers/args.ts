/**
 * Argument checks shared by resolvers. Every refusal is a PolyrayError with a stable code and a message
 * that names the argument, what was expected and what arrived.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { ModelHandle } from '../runtime/handle.ts';

const MODEL_NAME_MAX = 64;

export function checkModelName(model: unknown): string {
  if (typeof model !== 'string' || model.length === 0 || model.length > MODEL_NAME_MAX) {
    throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `Argument "model" must be a model name of 1 to ${MODEL_NAME_MAX} characters`, { argument: 'model' });
  }
  return model;
}

/** Validates `dimensions` against the model; returns undefined for "full size". */
export function checkDimensions(handle: ModelHandle, dimensions: number | null | undefined): number | undefined {
  const full = handle.dimensions;
  if (dimensions === null || dimensions === undefined) return undefined;
  if (!Number.isInteger(dimensions) || dimensions < 1 || dimensions > full) {
    throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `Argument "dimensions" must be between 1 and ${full} for model ${handle.name}, received ${dimensions}`, {
      argument: 'dimensions',
      max: full,
    });
  }
  return dimensions === full ? undefined : dimensions;
}
