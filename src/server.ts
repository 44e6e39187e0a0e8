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
import { ModelRegistry } from './runtime/registry.ts';
import { EmbeddingService } from './service/embedding.ts';
import { registerHealthRoutes } from './http/health.ts';

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
  registry: ModelRegistry = new ModelRegistry();
  readonly service: EmbeddingService;
  readonly #apollo: ApolloServer<PolyrayContext>;
  #state: Lifecycle = { kind: 'created' };
  #ready: Promise<void> | undefined;

  constructor(config: PolyrayConfig, deps: PolyrayDeps = {}) {
    this.config = config;
    this.logger = deps.logger ?? createLogger(config.log.level);
    this.pool = new InferencePool({ workers: config.inference.workers, intraOpThreads: config.inference.intraOpThreads, logger: this.logger });
    this.memory = new MemoryCache({ maxBytes: config.cache.memory.maxBytes, ttlMs: config.cache.memory.ttlMs });
    this.cache = new TieredCache([this.memory, ...(deps.lowerTiers ?? lowerTiersFromConfig(config, this.logger))]);
    const self = this;
    this.service = new EmbeddingService({
      get registry() {
        return self.registry;
      },
      cache: this.cache,
      batchers: this.batchers,
      limits: { maxInputBytes: config.limits.maxInputBytes },
      logger: this.logger,
    });
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
      dimensionsOf: (model) => this.service.resolveModel(model).manifest.dimensions,
      models: () => this.modelInfos(),
    };
  }

  modelInfos(): ModelInfo[] {
    return this.registry.list().map((m) => ({
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
    }));
  }

  /** Listens, then loads models in the background; returns the listening URL. */
  async start(): Promise<string> {
    if (this.#state.kind !== 'created') throw new Error(`PolyrayServer.start called in state ${this.#state.kind}`);
    await this.#apollo.start();
    const catalog = this.catalog();
    await this.app.register(fastifyApollo(this.#apollo), {
      path: '/graphql',
      context: async (): Promise<PolyrayContext> => ({
        loaders: new Loaders(this.service, this.config.limits.maxInputsPerRequest),
        catalog,
      }),
    });
    // During shutdown, answers close their connection, so a keep-alive client does not hold the drain
    // open until the keep-alive timeout.
    this.app.addHook('onSend', async (_req, reply, payload) => {
      if (this.#state.kind === 'draining') reply.header('connection', 'close');
      return payload;
    });
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
      this.registry = await ModelRegistry.scan(dir, this.logger);
      const models = this.registry.list();
      if (models.length === 0) throw new Error(`no models found in ${dir}; run \`npm run models:build\``);
      const loaded = await this.pool.start(models.map((m) => ({ name: m.manifest.name, path: path.join(m.dir, m.manifest.file), providers: this.config.inference.providers })));
      for (const l of loaded) {
        const m = this.registry.get(l.name)!;
        for (const f of l.fallbacks) this.logger.warn({ model: l.name, provider: f.provider, reason: f.reason }, 'execution provider unavailable, falling back');
        if (l.ok && l.provider) {
          const output = m.manifest.outputs[0]!.name;
          const names = m.manifest.inputs.map((i) => i.name);
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
              this.pool,
              this.config.batching,
            ),
          );
          this.registry.setState(l.name, { kind: 'ready', provider: l.provider });
          this.logger.info({ model: l.name, version: m.manifest.version, provider: l.provider }, 'model ready');
        } else {
          this.registry.setState(l.name, { kind: 'failed', reason: 'the model could not be loaded by ONNX Runtime' });
          this.logger.error({ model: l.name, reason: l.error }, 'model failed to load');
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

  /** Graceful shutdown: stop taking requests, finish in-flight ones and queued batches, close everything. */
  async stop(): Promise<void> {
    if (this.#state.kind === 'stopped' || this.#state.kind === 'draining') return;
    this.#state = { kind: 'draining' };
    const grace = setTimeout(() => this.logger.warn({ graceMs: this.config.shutdownGraceMs }, 'shutdown grace period exceeded'), this.config.shutdownGraceMs);
    grace.unref();
    try {
      await this.app.close();
      await Promise.all([...this.batchers.values()].map((b) => b.drain()));
      await this.pool.close();
      await this.cache.close();
    } finally {
      clearTimeout(grace);
      this.#state = { kind: 'stopped' };
      this.logger.info('stopped');
    }
  }
}
