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

/** Longest prompt a request may give inline, in characters. */
export const PROMPT_MAX_CHARS = 1024;

/**
 * The prompt to prepend to every text input (as sentence-transformers does): `promptName` picks one of the
 * model's prompts, `prompt` gives one inline, neither means the model's default prompt (or none).
 */
export function checkPrompt(handle: ModelHandle, prompt: string | null | undefined, promptName: string | null | undefined): string {
  const asked = (prompt !== null && prompt !== undefined) || (promptName !== null && promptName !== undefined);
  if (handle.kind !== 'text') {
    if (asked)
      throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `Prompts apply to text models; ${handle.name} is not one`, {
        argument: prompt != null ? 'prompt' : 'promptName',
      });
    return '';
  }
  if (prompt != null && promptName != null) throw new PolyrayError(ErrorCode.BAD_USER_INPUT, 'Give "prompt" or "promptName", not both', { argument: 'prompt' });
  if (prompt != null) {
    if (prompt.length > PROMPT_MAX_CHARS) {
      throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `Argument "prompt" must be at most ${PROMPT_MAX_CHARS} characters, received ${prompt.length}`, {
        argument: 'prompt',
        limit: PROMPT_MAX_CHARS,
      });
    }
    return prompt;
  }
  const name = promptName ?? handle.defaultPromptName;
  if (name === undefined) return '';
  // Own keys only: "constructor" or "__proto__" must be unknown names, not members of Object.prototype.
  const text = Object.hasOwn(handle.prompts, name) ? handle.prompts[name] : undefined;
  if (typeof text !== 'string') {
    const names = Object.keys(handle.prompts);
    throw new PolyrayError(
      ErrorCode.BAD_USER_INPUT,
      `Model ${handle.name} has no prompt "${name.slice(0, 64)}"; its prompts: ${names.length > 0 ? names.join(', ') : 'none'}`,
      { argument: 'promptName', prompts: names },
    );
  }
  return text;
}
