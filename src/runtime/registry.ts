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
import type { Logger } from '../log.ts';
import { parseManifest, type ModelManifest } from './manifest.ts';
import type { Tokenizer } from './tokenizer.ts';
import { loadTokenizer } from './tokenizer-load.ts';
import { isFile } from '../files.ts';
import { checkVocabulary, isHfFolder, readHfFolder, type VariantChoice } from './hf-folder.ts';

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
        const tokenizer = await loadTokenizer(modelDir, manifest.name, manifest.tokenizer);
        checkVocabulary(manifest, tokenizer.vocabSize);
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
