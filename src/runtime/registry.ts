/**
 * The model registry: every model folder under the models directory, its manifest (ours, or derived
 * from a Hugging Face folder as it is: hf-folder.ts), its tokenizer and its lifecycle state.
 *
 * A folder whose manifest is invalid, or whose session fails to load, is registered as `failed` with
 * the reason (shown by Query.models); the other models are served regardless.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ExecutionProviderName } from '../config/index.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { parseManifest, type ModelManifest } from './manifest.ts';
import { WordTokenizer, type Tokenizer } from './tokenizer.ts';
import { WordPieceTokenizer } from './wordpiece.ts';
import { isFile } from '../files.ts';
import { isHfFolder, readHfFolder, type VariantChoice } from './hf-folder.ts';
import { loadHfTokenizer } from './hf-tokenizer.ts';

export type ModelState = { kind: 'loading' } | { kind: 'ready'; provider: ExecutionProviderName } | { kind: 'failed'; reason: string } | { kind: 'disposed' };

export interface RegisteredModel {
  manifest: ModelManifest;
  dir: string;
  tokenizer: Tokenizer;
  state: ModelState;
}

export interface FailedFolder {
  folder: string;
  reason: string;
}

export class ModelRegistry {
  readonly #models = new Map<string, RegisteredModel>();
  readonly #failed: FailedFolder[] = [];

  /** Reads every `<dir>/<folder>/manifest.json` and its tokenizer. */
  static async scan(dir: string, logger: Logger, only?: readonly string[], variant: VariantChoice = {}): Promise<ModelRegistry> {
    const reg = new ModelRegistry();
    let entries: string[] = [];
    try {
      entries = (await readdir(dir, { withFileTypes: true })).filter((d) => d.isDirectory() && !d.name.startsWith('.')).map((d) => d.name);
    } catch (e) {
      logger.warn({ dir, err: (e as Error).message }, 'models directory cannot be read');
    }
    for (const folder of entries.sort()) {
      const modelDir = path.join(dir, folder);
      try {
        // Our manifest when the folder has one; else a Hugging Face folder read as it is (hf-folder.ts).
        const hf = !(await isFile(path.join(modelDir, 'manifest.json'))) && (await isHfFolder(modelDir));
        const manifest = hf
          ? await readHfFolder(modelDir, undefined, variant)
          : parseManifest(JSON.parse(await readFile(path.join(modelDir, 'manifest.json'), 'utf8')), `${folder}/manifest.json`);
        if (only && !only.includes(manifest.name)) continue;
        if (reg.#models.has(manifest.name)) throw new TypeError(`model name "${manifest.name}" is used by two folders`);
        const tokenizer = await loadTokenizer(modelDir, manifest);
        reg.#models.set(manifest.name, { manifest, dir: modelDir, tokenizer, state: { kind: 'loading' } });
      } catch (e) {
        const reason = (e as Error).message;
        reg.#failed.push({ folder, reason });
        logger.error({ folder, reason }, 'model folder skipped');
      }
    }
    return reg;
  }

  get(name: string): RegisteredModel | undefined {
    return this.#models.get(name);
  }

  list(): RegisteredModel[] {
    return [...this.#models.values()];
  }

  failedFolders(): FailedFolder[] {
    return [...this.#failed];
  }

  /** Adds or replaces a model (a reload). */
  put(model: RegisteredModel): void {
    this.#models.set(model.manifest.name, model);
  }

  remove(name: string): void {
    this.#models.delete(name);
  }

  setFailedFolders(failed: readonly FailedFolder[]): void {
    this.#failed.splice(0, this.#failed.length, ...failed);
  }

  setState(name: string, state: ModelState): void {
    const m = this.#models.get(name);
    if (m) m.state = state;
  }

  /** True once every registered model has left the loading state and at least one is ready. */
  ready(): boolean {
    const all = this.list();
    return all.length > 0 && all.every((m) => m.state.kind !== 'loading') && all.some((m) => m.state.kind === 'ready');
  }
}

async function loadTokenizer(dir: string, manifest: ModelManifest): Promise<Tokenizer> {
  if (!manifest.tokenizer) return noTextTokenizer(manifest.name);
  const file = path.join(dir, manifest.tokenizer.file);
  switch (manifest.tokenizer.kind) {
    case 'word':
      return WordTokenizer.load(file, { lowercase: manifest.tokenizer.lowercase });
    case 'hf':
      // Any tokenizer.json family; tokenizer_config.json beside it is read too.
      return loadHfTokenizer(dir, manifest.tokenizer.file);
    case 'wordpiece':
      // A Hugging Face tokenizer.json; its normalizer (not manifest.tokenizer.lowercase) decides casing.
      return WordPieceTokenizer.load(file);
    default: {
      const never: never = manifest.tokenizer.kind;
      throw new TypeError(`unknown tokenizer kind ${String(never)}`);
    }
  }
}

/** Image models and heads read no text: their tokenizer refuses every input with a client-facing error. */
function noTextTokenizer(model: string): Tokenizer {
  return {
    vocabSize: 0,
    encode: () => {
      throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${model} does not read text; give it image inputs (imageUrl or imageBase64)`, { model });
    },
  };
}
