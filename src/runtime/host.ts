/**
 * ModelHost: everything about the models this replica serves — the registry (folders, manifests,
 * tokenizers, lifecycle states), the inference pool, one inference queue per model, and the per-model
 * batching decision. It resolves model names to ModelHandles (src/runtime/handle.ts) with one set of
 * errors for every caller: MODEL_NOT_FOUND for a name it does not serve, MODEL_NOT_READY while loading
 * or after a failure.
 *
 * `load()` builds missing bundled models (when asked), scans the models directory, starts the workers,
 * opens a queue per loaded model and marks each model ready or failed. A task head is served only next
 * to the encoder version it was built for; that check lives here, once.
 */
import path from 'node:path';
import type { PolyrayConfig } from '../config/index.ts';
import { closest, editDistance } from '../config/suggest.ts';
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { buildModels } from '../models/build.ts';
import { POSTRAY_IMAGE_MODEL, POSTRAY_MODEL, POSTRAY_TEXT_MODEL, postrayVersion } from '../models/postray.ts';
import { Batcher } from './batcher.ts';
import type { ImageHandle, ModelHandle, ModelInfo, PostHandle, TextHandle } from './handle.ts';
import type { ModelManifest } from './manifest.ts';
import type { InferencePool } from './pool.ts';
import type { LoadResult, ModelLoadSpec } from './worker-protocol.ts';
import { ModelRegistry, type RegisteredModel } from './registry.ts';
import { TensorBatcher } from './tensor-batcher.ts';
import type { TokenizerPool } from './tokenizer-pool.ts';

/** What a reload changed, by model name; `failed`: folders that could not be read. */
export interface ReloadSummary {
  added: string[];
  updated: string[];
  removed: string[];
  failed: string[];
}

/** A model's inference queue: token sequences (text) or fixed-size tensors (images, heads). */
export type InferenceQueue = Batcher | TensorBatcher;

export interface ModelHostOptions {
  models: PolyrayConfig['models'];
  inference: PolyrayConfig['inference'];
  batching: PolyrayConfig['batching'];
  pool: InferencePool;
  /** Where text models tokenise (src/runtime/tokenizer-pool.ts). */
  tokenizers: TokenizerPool;
  logger: Logger;
  /** The view of the pool the queues run batches through (metrics wrap it). Default: the pool itself. */
  instrument?: (pool: InferencePool) => InferencePool;
  /** Each queued item's wait (ms) as its batch starts, by model (the queue-wait histogram). */
  observeQueueWait?: (model: string, ms: number) => void;
}

const MODEL_NAME_SHOWN = 64;

/** The input a text model takes its attention mask on. */
function attentionMaskOf(manifest: ModelManifest): string {
  const names = manifest.inputs.map((i) => i.name);
  return names.find((n) => n === 'attention_mask') ?? names[1]!;
}

export class ModelHost {
  readonly #o: ModelHostOptions;
  #registry = new ModelRegistry();
  /** One queue per loaded model; the map is live (metrics read it at scrape time). */
  readonly queues = new Map<string, InferenceQueue>();
  readonly #degraded = new Set<string>();
  /** The text handle of each registered model, with the manifest it was made from (see `resolve`). */
  readonly #textHandles = new WeakMap<RegisteredModel, { manifest: RegisteredModel['manifest']; handle: TextHandle }>();
  #reloading: Promise<ReloadSummary> | undefined;

  constructor(options: ModelHostOptions) {
    this.#o = options;
  }

  get registry(): ModelRegistry {
    return this.#registry;
  }

  /** True once every registered model has left the loading state and at least one is ready. */
  ready(): boolean {
    return this.#registry.ready();
  }

  /** The model behind `name`, ready to serve; MODEL_NOT_FOUND or MODEL_NOT_READY otherwise. */
  resolve(name: string): ModelHandle {
    if (name === POSTRAY_MODEL) return this.#postray();
    const m = this.#registered(name);
    if (m.manifest.head) {
      const h = m.manifest.head;
      const input = this.resolve(h.input);
      if (input.kind !== 'text' && input.kind !== 'image') {
        throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Head "${name}" reads ${h.input}, which is not an encoder`, { model: name });
      }
      return { kind: 'head', ...this.#base(m), head: h, queue: this.#queue(m, TensorBatcher), input };
    }
    if (m.manifest.preprocess) return { kind: 'image', ...this.#base(m), preprocess: m.manifest.preprocess, queue: this.#queue(m, TensorBatcher) };
    // One handle per model while its manifest and queue stay (a new one per request cost the hit path its
    // closures and copies, and the text pipeline keys its per-handle calls on it).
    const queue = this.#queue(m, Batcher);
    const cached = this.#textHandles.get(m);
    if (cached && cached.manifest === m.manifest && cached.handle.queue === queue && cached.handle.tokenizer === m.tokenizer) return cached.handle;
    const source = { key: `${m.manifest.name}@${m.manifest.version}`, name: m.manifest.name, dir: m.dir, spec: m.manifest.tokenizer };
    const handle: TextHandle = {
      kind: 'text',
      ...this.#base(m),
      tokenizer: m.tokenizer,
      tokenize: (texts, options) => this.#o.tokenizers.tokenize(source, m.tokenizer, texts, options),
      viewTokens: (texts, options) => this.#o.tokenizers.view(source, m.tokenizer, texts, options),
      includePrompt: m.manifest.pooling?.includePrompt !== false,
      prompts: m.manifest.prompts ?? {},
      defaultPromptName: m.manifest.defaultPromptName,
      truncationSide: m.manifest.truncationSide ?? 'right',
      queue,
    };
    this.#textHandles.set(m, { manifest: m.manifest, handle });
    return handle;
  }

  /** Every served model, `postray` included when its parts are registered. */
  models(): ModelInfo[] {
    const real = this.#registry.list().map(
      (m): ModelInfo => ({
        name: m.manifest.name,
        version: m.manifest.version,
        modality: m.manifest.modality.toUpperCase() as ModelInfo['modality'],
        dimensions: m.manifest.dimensions,
        maxTokens: m.manifest.maxTokens,
        costFactor: m.manifest.costFactor,
        synthetic: m.manifest.synthetic,
        state: m.state.kind.toUpperCase() as ModelInfo['state'],
        executionProvider: m.state.kind === 'ready' ? m.state.provider : null,
        error: m.state.kind === 'failed' ? m.state.reason : null,
        description: m.manifest.description,
        prompts: Object.keys(m.manifest.prompts ?? {}),
        defaultPromptName: m.manifest.defaultPromptName ?? null,
        matryoshkaDimensions: m.manifest.matryoshkaDimensions ?? [],
        similarity: m.manifest.similarity ?? 'cosine',
      }),
    );
    const text = this.#registry.get(POSTRAY_TEXT_MODEL);
    const image = this.#registry.get(POSTRAY_IMAGE_MODEL);
    if (!text || !image) return real;
    const ready = text.state.kind === 'ready' && image.state.kind === 'ready';
    const loading = this.#registry.list().some((m) => m.state.kind === 'loading');
    return [
      ...real,
      {
        name: POSTRAY_MODEL,
        version: postrayVersion(text.manifest.version, image.manifest.version),
        modality: 'MULTIMODAL',
        dimensions: text.manifest.dimensions + image.manifest.dimensions,
        maxTokens: text.manifest.maxTokens,
        costFactor: 0,
        synthetic: false,
        state: ready ? 'READY' : loading ? 'LOADING' : 'FAILED',
        executionProvider: null,
        error: ready || loading ? null : `${POSTRAY_TEXT_MODEL} or ${POSTRAY_IMAGE_MODEL} is not available`,
        description:
          `Post embedding: the ${POSTRAY_TEXT_MODEL} embedding of the text and the mean ${POSTRAY_IMAGE_MODEL} embedding of the images, ` +
          `fused as [t/√2, i/√2] (or one part alone), L2-normalised; ${text.manifest.dimensions} text + ${image.manifest.dimensions} image components. Computed from ` +
          'cached part embeddings; costs what its parts cost. See docs/POSTRAY.md.',
        prompts: [],
        defaultPromptName: null,
        matryoshkaDimensions: [],
        similarity: 'cosine',
      },
    ];
  }

  /** Builds what is missing (if configured), scans the models directory, loads every model into the workers. */
  async load(): Promise<void> {
    const { dir, buildMissing } = this.#o.models;
    const logger = this.#o.logger;
    if (buildMissing) {
      // A first start builds the bundled models (tens of seconds): say what is built and how far, at most
      // every 2 s per model and at each step's end, so the log shows progress instead of silence.
      const started = performance.now();
      const last = new Map<string, { at: number; step: string }>();
      const summary = await buildModels({
        modelsDir: dir,
        onProgress: (p) => {
          const now = performance.now();
          const prev = last.get(p.model);
          if (prev && prev.step === p.step && p.done < p.total && now - prev.at < 2000) return;
          last.set(p.model, { at: now, step: p.step });
          logger.info({ model: p.model, step: p.step, done: p.done, total: p.total, elapsedS: Math.round((now - started) / 100) / 10 }, 'building model');
        },
      });
      for (const s of summary) logger.info(s, 'model build');
    }
    this.#registry = await this.#scan();
    const models = this.#registry.list();
    if (models.length === 0) throw new Error(`no models found in ${dir}; run \`npm run models:build\``);
    const { pool, inference } = this.#o;
    const loaded = await pool.start(models.map((m) => this.#spec(m)));
    const actualNiceness = pool.stats().niceness;
    logger.info({ workers: inference.workers, intraOpThreads: inference.intraOpThreads, niceness: actualNiceness }, 'inference pool started');
    if (inference.niceness > 0 && actualNiceness < inference.niceness) {
      logger.warn(
        { requested: inference.niceness, actual: actualNiceness },
        'inference threads could not be given the configured nice value; the event loop competes with them as equals',
      );
    }
    this.#adopt(loaded);
    if (!this.#registry.ready()) throw new Error('no model could be loaded');
  }

  /**
   * Picks up model folders added, changed or removed since start, without a restart: a changed model
   * (new version) stops taking requests (MODEL_NOT_READY, retry shortly), drains its queue and is loaded
   * again under its new version — its cache keys are new with it; a removed one drains and is unloaded;
   * an added one is loaded. Unchanged models keep serving throughout.
   */
  reload(): Promise<ReloadSummary> {
    // One reload at a time: a second call while one runs gets the same outcome.
    this.#reloading ??= this.#reload().finally(() => {
      this.#reloading = undefined;
    });
    return this.#reloading;
  }

  async #reload(): Promise<ReloadSummary> {
    const next = await this.#scan();
    const cur = this.#registry;
    const summary: ReloadSummary = { added: [], updated: [], removed: [], failed: next.failedFolders().map((f) => f.folder) };
    const incoming: RegisteredModel[] = [];
    for (const m of next.list()) {
      const old = cur.get(m.manifest.name);
      if (!old) summary.added.push(m.manifest.name);
      else if (old.manifest.version !== m.manifest.version || old.dir !== m.dir) summary.updated.push(m.manifest.name);
      else continue;
      incoming.push(m);
    }
    for (const m of cur.list()) if (!next.get(m.manifest.name)) summary.removed.push(m.manifest.name);
    const leaving = [...summary.updated, ...summary.removed];
    for (const name of leaving) cur.setState(name, { kind: 'loading' });
    await Promise.all(leaving.map((name) => this.queues.get(name)?.drain()));
    for (const name of leaving) this.queues.delete(name);
    if (leaving.length > 0) {
      this.#o.pool.unload(leaving);
      this.#o.tokenizers.forget(leaving.map((name) => `${name}@${cur.get(name)!.manifest.version}`));
    }
    for (const name of summary.removed) cur.remove(name);
    for (const m of incoming) cur.put(m);
    cur.setFailedFolders(next.failedFolders());
    if (incoming.length > 0) this.#adopt(await this.#o.pool.load(incoming.map((m) => this.#spec(m))));
    this.#o.logger.info(summary, 'models reloaded');
    return summary;
  }

  #scan(): Promise<ModelRegistry> {
    const { dir, serve } = this.#o.models;
    const { providers, cpuVariant } = this.#o.inference;
    return ModelRegistry.scan(dir, this.#o.logger, serve.includes('*') ? undefined : serve, { provider: providers[0] ?? 'cpu', cpuVariant });
  }

  #spinOf(m: ModelManifest): boolean {
    const spin = this.#o.inference.allowSpinning;
    return spin === 'auto' ? m.runtime?.allowSpinning === true : spin;
  }

  #spec(m: RegisteredModel): ModelLoadSpec {
    return {
      name: m.manifest.name,
      path: path.join(m.dir, m.manifest.file),
      providers: this.#o.inference.providers,
      allowSpinning: this.#spinOf(m.manifest),
      // Models exported without their pooling are pooled in the worker (src/runtime/pooling.ts).
      ...(m.manifest.pooling ? { pool: { ...m.manifest.pooling, mask: attentionMaskOf(m.manifest) } } : {}),
    };
  }

  /** Opens a queue for every model that loaded and sets each one's state; heads only beside their encoder version. */
  #adopt(loaded: readonly LoadResult[]): void {
    const { pool, logger } = this.#o;
    const view = this.#o.instrument ? this.#o.instrument(pool) : pool;
    for (const l of loaded) {
      const m = this.#registry.get(l.name)!;
      for (const f of l.fallbacks) logger.warn({ model: l.name, provider: f.provider, reason: f.reason }, 'execution provider unavailable, falling back');
      if (!l.ok || !l.provider) {
        this.#registry.setState(l.name, { kind: 'failed', reason: 'the model could not be loaded by ONNX Runtime' });
        logger.error({ model: l.name, reason: l.error }, 'model failed to load');
        continue;
      }
      const { queue, detail } = this.#openQueue(m.manifest, l.provider, view);
      this.queues.set(l.name, queue);
      this.#registry.setState(l.name, { kind: 'ready', provider: l.provider });
      this.#degraded.delete(l.name);
      logger.info({ model: l.name, version: m.manifest.version, provider: l.provider, allowSpinning: this.#spinOf(m.manifest), ...detail }, 'model ready');
    }
    for (const m of this.#registry.list()) {
      const h = m.manifest.head;
      if (h && m.state.kind === 'ready' && this.#registry.get(h.input)?.manifest.version !== h.inputVersion) {
        this.#registry.setState(m.manifest.name, { kind: 'failed', reason: `built for ${h.input}@${h.inputVersion}, which this replica does not serve` });
      }
    }
  }

  /** The batching decision: token batches for text (larger on accelerators), tensor batches for images and heads. */
  #waitObserver(model: string): ((ms: number) => void) | undefined {
    const observe = this.#o.observeQueueWait;
    return observe ? (ms) => observe(model, ms) : undefined;
  }

  #openQueue(manifest: ModelManifest, provider: string, pool: InferencePool): { queue: InferenceQueue; detail: Record<string, number> } {
    const b = this.#o.batching;
    if (manifest.preprocess || manifest.head) {
      const pre = manifest.preprocess;
      const input = manifest.inputs[0]!;
      const outputs = manifest.outputs
        .filter((o) => o.shape.length === 2 && typeof o.shape[1] === 'number')
        .map((o) => ({ name: o.name, width: o.shape[1] as number }));
      const itemShape = pre ? (pre.layout === 'nchw' ? [3, pre.size, pre.size] : [pre.size, pre.size, 3]) : input.shape.slice(1).map(Number);
      // Image batches are bounded by pixels; head inputs cost 1 each, so only maxItems bounds them.
      const options = {
        maxItems: b.maxItems,
        maxWaitUs: b.maxWaitUs,
        maxQueueItems: b.maxQueueItems,
        maxQueueItemsPerClient: b.maxQueueItemsPerClient,
        maxQueueWaitMs: b.maxQueueWaitMs,
        refusalPaceMs: b.refusalPaceMs,
        maxCost: pre ? b.maxPixels : b.maxItems,
        observeWait: this.#waitObserver(manifest.name),
      };
      return { queue: new TensorBatcher({ name: manifest.name, input: input.name, itemShape, outputs }, pool, options), detail: {} };
    }
    const names = manifest.inputs.map((i) => i.name);
    // An accelerator wants large batches; the CPU bound would cap it at a few items.
    const batching = { ...(provider === 'cpu' ? b : { ...b, maxTokens: b.acceleratorMaxTokens }), observeWait: this.#waitObserver(manifest.name) };
    const io = {
      name: manifest.name,
      inputIds: names.find((n) => n === 'input_ids') ?? names[0]!,
      attentionMask: attentionMaskOf(manifest),
      ...(names.includes('token_type_ids') ? { tokenTypeIds: 'token_type_ids' } : {}),
      ...(names.includes('position_ids') ? { positionIds: 'position_ids' } : {}),
      output: manifest.outputs[0]!.name,
      dimensions: manifest.dimensions,
    };
    return { queue: new Batcher(io, pool, batching), detail: { maxTokensPerBatch: batching.maxTokens } };
  }

  /** The token queue of a loaded text model. */
  tokenQueue(name: string): Batcher | undefined {
    const q = this.queues.get(name);
    return q instanceof Batcher ? q : undefined;
  }

  /** The tensor queue of a loaded image model or head. */
  tensorQueue(name: string): TensorBatcher | undefined {
    const q = this.queues.get(name);
    return q instanceof TensorBatcher ? q : undefined;
  }

  /** Lets every queued batch finish. */
  async drain(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.drain()));
  }

  /**
   * A replacement worker's load results: a serving model it could not load is FAILED (its callers get
   * MODEL_NOT_READY, `/readyz` answers 503) instead of failing every batch that reaches that worker.
   */
  workerReplaced(results: readonly LoadResult[]): void {
    for (const l of results) {
      const m = this.#registry.get(l.name);
      if (l.ok || !m || m.state.kind !== 'ready') continue;
      const reason = `a replacement inference worker could not load it: ${(l.error ?? 'unknown error').slice(0, 300)}`;
      this.#registry.setState(l.name, { kind: 'failed', reason });
      this.#degraded.add(l.name);
      this.queues.get(l.name)?.cancel(new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model ${l.name} is not ready: ${reason}`, { model: l.name }));
      this.#o.logger.error({ model: l.name, reason: l.error }, 'model failed on a replacement worker');
    }
  }

  /** Models that were serving and failed since (a replacement worker could not load them): the replica is not ready. */
  degraded(): string[] {
    return [...this.#degraded];
  }

  /** Drops every queued item of every model (shutdown past its grace period); returns how many. */
  cancelQueued(): number {
    const e = new PolyrayError(ErrorCode.SHUTTING_DOWN, 'The service is shutting down; this input was not computed (not charged); retry on another replica');
    let n = 0;
    for (const q of this.queues.values()) n += q.cancel(e);
    return n;
  }

  #registered(name: string): RegisteredModel {
    const m = this.#registry.get(name);
    if (!m) {
      const known = this.models().map((x) => x.name);
      const shown = name.slice(0, MODEL_NAME_SHOWN);
      const near = closest(shown, known);
      const hint = near !== undefined && editDistance(shown, near) <= 3 ? ` (did you mean "${near}"?)` : '';
      throw new PolyrayError(ErrorCode.MODEL_NOT_FOUND, `Unknown model "${shown}"${hint}; available models: ${known.join(', ') || 'none'}`, { model: shown });
    }
    switch (m.state.kind) {
      case 'ready':
        return m;
      case 'loading':
        throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model "${name}" is still loading; retry shortly`, { model: name, retryAfterMs: 1000 });
      case 'failed':
      case 'disposed':
        throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model "${name}" is not available on this replica`, { model: name });
      default: {
        const never: never = m.state;
        throw new Error(`unknown state ${JSON.stringify(never)}`);
      }
    }
  }

  #base(m: RegisteredModel): { name: string; version: string; dimensions: number; costFactor: number; maxTokens: number } {
    const { name, version, dimensions, costFactor, maxTokens } = m.manifest;
    return { name, version, dimensions, costFactor, maxTokens };
  }

  #queue<Q extends InferenceQueue>(m: RegisteredModel, kind: new (...args: never[]) => Q): Q {
    const q = this.queues.get(m.manifest.name);
    if (!(q instanceof kind))
      throw new PolyrayError(ErrorCode.MODEL_NOT_READY, `Model "${m.manifest.name}" has no inference queue on this replica`, { model: m.manifest.name });
    return q;
  }

  #postray(): PostHandle {
    let text: ModelHandle;
    let image: ModelHandle;
    try {
      text = this.resolve(POSTRAY_TEXT_MODEL);
      image = this.resolve(POSTRAY_IMAGE_MODEL);
    } catch {
      throw new PolyrayError(
        ErrorCode.MODEL_NOT_READY,
        `Model "${POSTRAY_MODEL}" needs ${POSTRAY_TEXT_MODEL} and ${POSTRAY_IMAGE_MODEL}, which are not both ready on this replica`,
        {
          model: POSTRAY_MODEL,
          retryAfterMs: 1000,
        },
      );
    }
    if (text.kind !== 'text' || image.kind !== 'image') throw new Error(`postray parts have kinds ${text.kind} and ${image.kind}`);
    return {
      kind: 'post',
      name: POSTRAY_MODEL,
      version: postrayVersion(text.version, image.version),
      dimensions: text.dimensions + image.dimensions,
      costFactor: 0,
      maxTokens: text.maxTokens,
      text: text as TextHandle,
      image: image as ImageHandle,
    };
  }
}
