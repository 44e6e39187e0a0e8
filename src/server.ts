/**
 * Composition root: builds every component from the config, wires HTTP + Apollo, and drains on shutdown.
 * No logic lives here beyond the order of things.
 *
 * Lifecycle: `start()` listens at once (so /healthz answers and /readyz says "loading"), then builds
 * missing models, loads them into the inference workers and opens the batchers; `ready` resolves then.
 * `stop()` refuses new work, lets in-flight requests and queued batches finish, then closes workers
 * and cache connections.
 */
import { ApolloServer } from '@apollo/server';
import { ApolloServerPluginLandingPageLocalDefault, ApolloServerPluginLandingPageProductionDefault } from '@apollo/server/plugin/landingPage/default';
import fastifyApollo, { fastifyApolloDrainPlugin } from '@as-integrations/fastify';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import path from 'node:path';
import type { Cache } from './cache/cache.ts';
import { MemoryCache } from './cache/memory.ts';
import { TieredCache } from './cache/tiered.ts';
import { lowerTiersFromConfig } from './cache/from-config.ts';
import type { PolyrayConfig } from './config.ts';
import { createLogger, type Logger } from './log.ts';
import { buildModels } from './models/build.ts';
import { makeFormatError } from './resolvers/format-error.ts';
import { buildSchema } from './resolvers/index.ts';
import { Loaders, type Catalog, type ModelInfo, type PolyrayContext } from './resolvers/context.ts';
import { Batcher } from './runtime/batcher.ts';
import { InferencePool } from './runtime/pool.ts';
import type { ModelManifest } from './runtime/manifest.ts';
import { ModelRegistry } from './runtime/registry.ts';
import { EmbeddingService } from './service/embedding.ts';
import { registerHealthRoutes } from './http/health.ts';
import { Accounting } from './accounting/index.ts';
import { mayUseModel } from './accounting/clients.ts';
import { createPolicyController, createTracer, withTtlControl, type PolicyController, type Tracer } from './policy/index.ts';
import { registerDashboardRoutes } from './http/dashboard.ts';
import { ImageFetcher, readCaFile } from './images/fetch.ts';
import { ImageService } from './images/service.ts';
import { POSTRAY_MODEL } from './models/postray.ts';
import { MediaLoaders } from './resolvers/media-loaders.ts';
import { TensorBatcher } from './runtime/tensor-batcher.ts';
import { PostService } from './service/posts.ts';

export interface PolyrayDeps {
  logger?: Logger;
  /** Cache tiers below memory, in order. Default: built from the config (Redis when configured). */
  lowerTiers?: Cache[];
}

type Lifecycle =
  | { kind: 'created' }
  | { kind: 'loading' }
  | { kind: 'ready' }
  | { kind: 'failed'; reason: string }
  | { kind: 'draining' }
  | { kind: 'stopped' };

export class PolyrayServer {
  readonly config: PolyrayConfig;
  readonly logger: Logger;
  readonly app: FastifyInstance;
  readonly pool: InferencePool;
  readonly memory: MemoryCache;
  readonly cache: TieredCache;
  readonly batchers = new Map<string, Batcher>();
  /** Batchers of image models and task heads (fixed-size float inputs). */
  readonly tensorBatchers = new Map<string, TensorBatcher>();
  registry: ModelRegistry = new ModelRegistry();
  readonly service: EmbeddingService;
  /** Image inputs: fetching, decoding, image embeddings (src/images). */
  readonly images: ImageService;
  /** Post embeddings (postray) and task heads. */
  readonly posts: PostService;
  /** Clients, quotas, cost attribution, metrics (src/accounting). */
  readonly accounting: Accounting;
  /** Request-stream sampling and the live cache policy (src/policy). */
  readonly tracer: Tracer;
  readonly policy: PolicyController;
  readonly #apollo: ApolloServer<PolyrayContext>;
  #state: Lifecycle = { kind: 'created' };
  #ready: Promise<void> | undefined;

  constructor(config: PolyrayConfig, deps: PolyrayDeps = {}) {
    this.config = config;
    this.logger = deps.logger ?? createLogger(config.log.level);
    this.pool = new InferencePool({ workers: config.inference.workers, intraOpThreads: config.inference.intraOpThreads, niceness: config.inference.niceness, pipelineDepth: config.inference.pipelineDepth, logger: this.logger });
    this.memory = new MemoryCache({ maxBytes: config.cache.memory.maxBytes, ttlMs: config.cache.memory.ttlMs });
    // Each tier is wrapped so the cache policy can change the TTL of new entries (src/policy).
    const tiers = withTtlControl([this.memory, ...(deps.lowerTiers ?? lowerTiersFromConfig(config, this.logger))]);
    this.cache = new TieredCache(tiers);
    this.tracer = createTracer(config, this.logger);
    const self = this;
    this.service = new EmbeddingService({
      get registry() {
        return self.registry;
      },
      cache: this.cache,
      batchers: this.batchers,
      limits: { maxInputBytes: config.limits.maxInputBytes },
      logger: this.logger,
      trace: this.tracer,
    });
    this.images = new ImageService({
      get registry() {
        return self.registry;
      },
      trace: this.tracer,
      cache: this.cache,
      batchers: this.tensorBatchers,
      fetcher: new ImageFetcher({
        allow: config.images.fetchAllow,
        maxBytes: config.images.maxBytes,
        timeoutMs: config.images.fetchTimeoutMs,
        maxRedirects: config.images.maxRedirects,
        ca: config.images.caFile === undefined ? undefined : readCaFile(config.images.caFile),
      }),
      maxPixels: config.images.maxPixels,
      urlCacheTtlMs: config.images.urlCacheTtlMs,
      urlCacheMaxEntries: config.images.urlCacheMaxEntries,
      logger: this.logger,
    });
    this.posts = new PostService({
      get registry() {
        return self.registry;
      },
      text: this.service,
      images: this.images,
      batchers: this.tensorBatchers,
      maxImagesPerPost: config.images.maxImagesPerPost,
    });
    this.policy = createPolicyController(config, this.logger, { tracer: this.tracer, tiers, stats: () => this.service.stats() });
    this.accounting = new Accounting({ config: config.accounting, logger: this.logger, service: this.service, images: this.images, batchers: this.batchers });
    // Per-request access logs are off: at embedding-service rates they would dominate the log volume.
    this.app = Fastify({
      loggerInstance: this.logger as FastifyBaseLogger,
      logController: new LogController({ disableRequestLogging: true }),
      bodyLimit: config.http.bodyLimitBytes,
    });
    this.#apollo = new ApolloServer<PolyrayContext>({
      schema: buildSchema(),
      formatError: makeFormatError(this.logger),
      logger: this.logger,
      includeStacktraceInErrorResponses: false,
      introspection: true,
      plugins: [
        fastifyApolloDrainPlugin(this.app),
        this.accounting.apolloPlugin(),
        config.env === 'production' ? ApolloServerPluginLandingPageProductionDefault({ footer: false }) : ApolloServerPluginLandingPageLocalDefault({ footer: false }),
      ],
    });
  }

  get state(): Lifecycle['kind'] {
    return this.#state.kind;
  }

  /** Resolves when models are loaded (rejects if none could be). */
  get ready(): Promise<void> {
    return this.#ready ?? Promise.reject(new Error('PolyrayServer.start() has not been called'));
  }

  catalog(): Catalog {
    return {
      defaultPostModel: this.config.models.defaultPostModel,
      maxInputsPerRequest: this.config.limits.maxInputsPerRequest,
      dimensionsOf: (model) => this.posts.dimensionsOf(model) ?? this.service.resolveModel(model).manifest.dimensions,
      models: () => this.modelInfos(),
    };
  }

  modelInfos(): ModelInfo[] {
    return [...this.registry.list().map((m) => ({
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
    })), ...this.#virtualModels()];
  }

  /** `postray` is computed from two models; it is listed when both are registered. */
  #virtualModels(): ModelInfo[] {
    const p = this.posts.postrayInfo();
    if (!p) return [];
    const loading = this.registry.list().some((m) => m.state.kind === 'loading');
    return [
      {
        name: POSTRAY_MODEL,
        version: p.version,
        modality: 'MULTIMODAL',
        dimensions: p.dimensions,
        maxTokens: this.registry.get('text-glove')?.manifest.maxTokens ?? 0,
        costFactor: 0,
        synthetic: false,
        state: p.ready ? 'READY' : loading ? 'LOADING' : 'FAILED',
        executionProvider: null,
        error: p.ready || loading ? null : 'text-glove or image-mobilenet is not available',
        description:
          'Post embedding: the text-glove embedding of the text and the mean image-mobilenet embedding of the images, ' +
          'fused as [t/√2, i/√2] (or one part alone), L2-normalised; 100 text + 1792 image components. Computed from ' +
          'cached part embeddings; costs what its parts cost. See docs/POSTRAY.md.',
      },
    ];
  }

  /** Listens, then loads models in the background; returns the listening URL. */
  async start(): Promise<string> {
    if (this.#state.kind !== 'created') throw new Error(`PolyrayServer.start called in state ${this.#state.kind}`);
    await this.accounting.start();
    await this.#apollo.start();
    const catalog = this.catalog();
    await this.app.register(fastifyApollo(this.#apollo), {
      path: '/graphql',
      // Authentication happens here (UNAUTHENTICATED before any resolver runs); the loaders call the
      // request's account, which checks the model, reserves quota, calls the service and settles.
      context: async (request): Promise<PolyrayContext> => {
        const account = this.accounting.authenticate(request.headers);
        const media = new MediaLoaders(
          { images: this.images, posts: this.posts },
          { maxBatch: this.config.limits.maxInputsPerRequest, textEmbedder: account, imageEmbedder: account, clientId: account.client.id, mayUse: (m) => mayUseModel(account.client, m) },
        );
        return { loaders: new Loaders(account, this.config.limits.maxInputsPerRequest), catalog, clientId: account.client.id, account, policy: this.policy, media };
      },
    });
    // During shutdown, answers close their connection, so a keep-alive client does not hold the drain
    // open until the keep-alive timeout.
    this.app.addHook('onSend', async (_req, reply, payload) => {
      if (this.#state.kind === 'draining') reply.header('connection', 'close');
      return payload;
    });
    this.accounting.metrics.instrumentTiers(() => this.cache.stats());
    this.accounting.registerRoutes(this.app);
    registerDashboardRoutes(this.app, {
      authenticate: (headers) => this.accounting.directory().authenticate(headers),
      policy: this.policy,
      tracer: this.tracer,
      stats: () => this.service.stats(),
      usage: async () => {
        const books = await this.accounting.ledger.read(await this.accounting.ledger.clientIds());
        const rows = books.flatMap((b) => b.rows.map((r) => ({ client: b.clientId, model: r.model, items: r.items, cost: r.cost })));
        return { unit: 'cost units', fleetWide: books.every((b) => b.fleetWide), rows };
      },
    });
    this.policy.start();
    registerHealthRoutes(this.app, {
      live: () => this.#state.kind !== 'stopped',
      ready: () => this.#state.kind === 'ready',
      detail: () => ({
        state: this.#state.kind,
        models: this.modelInfos().map((m) => ({ name: m.name, state: m.state, provider: m.executionProvider })),
        // A failing cache tier does not make the replica unready (requests still succeed), but it shows here.
        tiers: this.cache.stats().map((t) => ({ tier: t.tier, healthy: t.healthy })),
      }),
    });
    const url = await this.app.listen({ host: this.config.http.host, port: this.config.http.port });
    this.#state = { kind: 'loading' };
    this.#ready = this.#load();
    this.#ready.catch(() => undefined);
    this.logger.info({ url }, 'listening');
    return url;
  }

  async #load(): Promise<void> {
    const { dir, buildMissing } = this.config.models;
    try {
      if (buildMissing) {
        const summary = await buildModels({ modelsDir: dir });
        for (const s of summary) this.logger.info(s, 'model build');
      }
      const serve = this.config.models.serve;
      this.registry = await ModelRegistry.scan(dir, this.logger, serve.includes('*') ? undefined : serve);
      const models = this.registry.list();
      if (models.length === 0) throw new Error(`no models found in ${dir}; run \`npm run models:build\``);
      const spin = this.config.inference.allowSpinning;
      const spinOf = (m: ModelManifest): boolean => (spin === 'auto' ? m.runtime?.allowSpinning === true : spin);
      const loaded = await this.pool.start(
        models.map((m) => ({
          name: m.manifest.name,
          path: path.join(m.dir, m.manifest.file),
          providers: this.config.inference.providers,
          allowSpinning: spinOf(m.manifest),
        })),
      );
      const { workers, intraOpThreads, niceness } = this.config.inference;
      const actualNiceness = this.pool.stats().niceness;
      this.logger.info({ workers, intraOpThreads, niceness: actualNiceness }, 'inference pool started');
      if (niceness > 0 && actualNiceness < niceness) {
        this.logger.warn({ requested: niceness, actual: actualNiceness }, 'inference threads could not be given the configured nice value; the event loop competes with them as equals');
      }
      for (const l of loaded) {
        const m = this.registry.get(l.name)!;
        for (const f of l.fallbacks) this.logger.warn({ model: l.name, provider: f.provider, reason: f.reason }, 'execution provider unavailable, falling back');
        if (l.ok && l.provider && (m.manifest.preprocess || m.manifest.head)) {
          // Image models and heads take fixed-size float tensors: one tensor batcher each.
          this.tensorBatchers.set(l.name, this.#tensorBatcher(m.manifest));
          this.registry.setState(l.name, { kind: 'ready', provider: l.provider });
          this.logger.info({ model: l.name, version: m.manifest.version, provider: l.provider, allowSpinning: spinOf(m.manifest) }, 'model ready');
        } else if (l.ok && l.provider) {
          const output = m.manifest.outputs[0]!.name;
          const names = m.manifest.inputs.map((i) => i.name);
          // An accelerator wants large batches; the CPU bound would cap it at a few items.
          const batching = l.provider === 'cpu' ? this.config.batching : { ...this.config.batching, maxTokens: this.config.batching.acceleratorMaxTokens };
          this.batchers.set(
            l.name,
            new Batcher(
              {
                name: l.name,
                inputIds: names.find((n) => n === 'input_ids') ?? names[0]!,
                attentionMask: names.find((n) => n === 'attention_mask') ?? names[1]!,
                ...(names.includes('token_type_ids') ? { tokenTypeIds: 'token_type_ids' } : {}),
                output,
                dimensions: m.manifest.dimensions,
              },
              this.accounting.metrics.instrumentPool(this.pool),
              batching,
            ),
          );
          this.registry.setState(l.name, { kind: 'ready', provider: l.provider });
          this.logger.info({ model: l.name, version: m.manifest.version, provider: l.provider, allowSpinning: spinOf(m.manifest), maxTokensPerBatch: batching.maxTokens }, 'model ready');
        } else {
          this.registry.setState(l.name, { kind: 'failed', reason: 'the model could not be loaded by ONNX Runtime' });
          this.logger.error({ model: l.name, reason: l.error }, 'model failed to load');
        }
      }
      for (const m of this.registry.list()) {
        // A head is served only next to the encoder version it was built for.
        const h = m.manifest.head;
        if (h && m.state.kind === 'ready' && this.registry.get(h.input)?.manifest.version !== h.inputVersion) {
          this.registry.setState(m.manifest.name, { kind: 'failed', reason: `built for ${h.input}@${h.inputVersion}, which this replica does not serve` });
        }
      }
      if (!this.registry.ready()) throw new Error('no model could be loaded');
      if (this.#state.kind === 'loading') this.#state = { kind: 'ready' };
    } catch (e) {
      const reason = (e as Error).message;
      if (this.#state.kind === 'loading') this.#state = { kind: 'failed', reason };
      this.logger.error({ reason }, 'start-up failed');
      throw e;
    }
  }

  #tensorBatcher(manifest: ModelManifest): TensorBatcher {
    const pre = manifest.preprocess;
    const input = manifest.inputs[0]!;
    const outputs = manifest.outputs.filter((o) => o.shape.length === 2 && typeof o.shape[1] === 'number').map((o) => ({ name: o.name, width: o.shape[1] as number }));
    const { maxItems, maxWaitUs, maxQueueItems, maxPixels } = this.config.batching;
    return new TensorBatcher(
      {
        name: manifest.name,
        input: input.name,
        itemShape: pre ? (pre.layout === 'nchw' ? [3, pre.size, pre.size] : [pre.size, pre.size, 3]) : input.shape.slice(1).map(Number),
        outputs,
      },
      this.accounting.metrics.instrumentPool(this.pool),
      // Image batches are bounded by pixels; head inputs cost 1 each, so only maxItems bounds them.
      { maxItems, maxWaitUs, maxQueueItems, maxCost: pre ? maxPixels : maxItems },
    );
  }

  /** Graceful shutdown: stop taking requests, finish in-flight ones and queued batches, close everything. */
  async stop(): Promise<void> {
    if (this.#state.kind === 'stopped' || this.#state.kind === 'draining') return;
    this.#state = { kind: 'draining' };
    const grace = setTimeout(() => this.logger.warn({ graceMs: this.config.shutdownGraceMs }, 'shutdown grace period exceeded'), this.config.shutdownGraceMs);
    grace.unref();
    try {
      await this.app.close();
      await Promise.all([...this.batchers.values(), ...this.tensorBatchers.values()].map((b) => b.drain()));
      await this.pool.close();
      await this.accounting.close();
      this.policy.stop();
      await this.tracer.close();
      await this.cache.close();
    } finally {
      clearTimeout(grace);
      this.#state = { kind: 'stopped' };
      this.logger.info('stopped');
    }
  }
}
