/**
 * Composition root: builds every component from the config, wires HTTP + Apollo, and drains on shutdown.
 * No logic lives here beyond the order of things.
 *
 * Lifecycle: `start()` listens at once (so /healthz answers and /readyz says "loading"), then builds
 * missing models, loads them into the inference workers and opens their queues (ModelHost); `ready` resolves then.
 * `stop()` refuses new work, lets in-flight requests and queued batches finish, then closes workers
 * and cache connections.
 */

import type { ServerResponse } from 'node:http';
import { ApolloServer } from '@apollo/server';
import { ApolloServerPluginCacheControlDisabled } from '@apollo/server/plugin/disabled';
import { ApolloServerPluginLandingPageLocalDefault, ApolloServerPluginLandingPageProductionDefault } from '@apollo/server/plugin/landingPage/default';
import { fastifyApolloHandler } from '@as-integrations/fastify';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { Accounting, type AccountContext } from './accounting/index.ts';
import type { Surface } from './accounting/metrics.ts';
import type { Cache } from './cache/cache.ts';
import { lowerTiersFromConfig } from './cache/from-config.ts';
import { MemoryCache } from './cache/memory.ts';
import { TieredCache } from './cache/tiered.ts';
import type { PolyrayConfig } from './config/index.ts';
import { registerDashboardRoutes, type UsageHistoryData } from './http/dashboard.ts';
import { registerExplorerRoutes } from './http/explorer.ts';
import type { HistoryRow } from './usage/report.ts';
import { registerHealthRoutes } from './http/health.ts';
import { ImageFetcher, readCaFile } from './images/fetch.ts';
import { createLogger, type Logger } from './log.ts';
import { createPolicyController, createTracer, withTtlControl, type PolicyController, type Tracer } from './policy/index.ts';
import type { Catalog, PolyrayContext } from './resolvers/context.ts';
import { OperationChecker, operationLimitsPlugin } from './resolvers/limits.ts';
import { warmValidation } from './resolvers/warm.ts';
import { JsonBodyParser, LARGE_BODY_BYTES } from './http/json-body.ts';
import { aliasMap, registerOpenAiRoutes } from './http/openai.ts';
import { registerTeiRoutes } from './http/tei.ts';
import { registerOpenApi } from './http/openapi.ts';
import { AJV_OPTIONS } from './http/validation.ts';
import { serveOptions } from './http/serve.ts';
import { EntityRoute, type FastPathStats } from './resolvers/fast-entities.ts';
import { makeFormatError } from './resolvers/format-error.ts';
import { httpCachePlugin } from './resolvers/http-cache.ts';
import { schemaOptionsOf } from './resolvers/demand-control.ts';
import { buildSchema } from './resolvers/index.ts';
import { ModelHost } from './runtime/host.ts';
import { TokenizerPool } from './runtime/tokenizer-pool.ts';
import { InferencePool } from './runtime/pool.ts';
import { ImageEmbedder } from './service/image.ts';
import { RequestScope, type ScopeServices } from './service/scope.ts';
import { TextEmbedder } from './service/text.ts';
import type { SpanExporter } from '@opentelemetry/sdk-trace-node';
import { registerHttpTracing } from './telemetry/http.ts';
import { graphqlTracingPlugin } from './telemetry/graphql.ts';
import { startTracing, type Tracing } from './telemetry/tracing.ts';
import { packageVersion } from './version.ts';

export interface PolyrayDeps {
  logger?: Logger;
  /** Cache tiers below memory, in order. Default: built from the config (Redis when configured). */
  lowerTiers?: Cache[];
  /** Milliseconds since the epoch, for usage hours and budget periods (src/usage). Default `Date.now`. */
  clock?: () => number;
  /** Where spans go (tests: an in-memory exporter); default the OTLP endpoint of POLYRAY_OTEL_ENDPOINT, if set. */
  spanExporter?: SpanExporter;
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
  /** Operations answered by the compiled `_entities` route (src/resolvers/fast-entities.ts). */
  readonly entityFastPath: FastPathStats = { served: 0 };
  /** The compiled `_entities` route, in front of Apollo (unset when off, or while OpenTelemetry tracing is on). */
  readonly #entityRoute: EntityRoute | undefined;
  /** Warms the validator and the operation checker while the models load (src/resolvers/warm.ts). */
  readonly #warm: () => Promise<string[]>;
  /** Each GraphQL request's scope (or the error that refused it), made once for the route and Apollo's context. */
  readonly #graphqlScopes = new WeakMap<FastifyRequest, { scope: RequestScope<AccountContext> } | { error: unknown }>();
  /** Tokenizer threads: cache misses are tokenised off the event loop (src/runtime/tokenizer-pool.ts). */
  readonly tokenizers: TokenizerPool;
  /** The served models: registry, inference queues, handles (src/runtime/host.ts). */
  readonly host: ModelHost;
  readonly memory: MemoryCache;
  readonly cache: TieredCache;
  /** The text pipeline (src/service/text.ts). */
  readonly text: TextEmbedder;
  /** The image pipeline: fetching, decoding, image embeddings (src/service/image.ts). */
  readonly images: ImageEmbedder;
  /** Clients, quotas, cost attribution, metrics (src/accounting). */
  readonly accounting: Accounting;
  /** Request-stream sampling and the live cache policy (src/policy). */
  readonly tracer: Tracer;
  readonly policy: PolicyController;
  readonly #scopes: ScopeServices;
  readonly #jsonBodies: JsonBodyParser;
  readonly #apollo: ApolloServer<PolyrayContext>;
  /** Wall clock, ms since the epoch (usage hours, budget periods, the dashboard's history). */
  readonly #clock: () => number;
  /** OpenTelemetry, while POLYRAY_OTEL_ENDPOINT is set (src/telemetry). */
  readonly #tracing: Tracing | undefined;
  #state: Lifecycle = { kind: 'created' };
  #ready: Promise<void> | undefined;

  constructor(config: PolyrayConfig, deps: PolyrayDeps = {}) {
    this.config = config;
    this.#clock = deps.clock ?? Date.now;
    this.logger = deps.logger ?? createLogger(config.log.level);
    this.#jsonBodies = new JsonBodyParser(LARGE_BODY_BYTES, this.logger, config.inference.niceness);
    const { inference } = config;
    this.pool = new InferencePool({
      workers: inference.workers,
      intraOpThreads: inference.intraOpThreads,
      niceness: inference.niceness,
      pipelineDepth: inference.pipelineDepth,
      isolation: inference.isolation,
      logger: this.logger,
    });
    this.tokenizers = new TokenizerPool({ threads: inference.tokenizerThreads, niceness: inference.niceness, logger: this.logger });
    this.host = new ModelHost({
      models: config.models,
      inference,
      batching: config.batching,
      pool: this.pool,
      tokenizers: this.tokenizers,
      logger: this.logger,
      instrument: (pool) => this.accounting.metrics.instrumentPool(pool),
      observeQueueWait: (model, ms) => this.accounting.metrics.queueWait.observe({ model }, ms / 1000),
    });
    this.pool.onReplaced((results) => this.host.workerReplaced(results));
    this.memory = new MemoryCache({ maxBytes: config.cache.memory.maxBytes, ttlMs: config.cache.memory.ttlMs });
    // Each tier is wrapped so the cache policy can change the TTL of new entries (src/policy).
    const tiers = withTtlControl([this.memory, ...(deps.lowerTiers ?? lowerTiersFromConfig(config, this.logger))]);
    this.cache = new TieredCache(tiers);
    this.tracer = createTracer(config, this.logger);
    this.text = new TextEmbedder({ cache: this.cache, logger: this.logger, trace: this.tracer, maxInputBytes: config.limits.maxInputBytes });
    const img = config.images;
    this.images = new ImageEmbedder({
      cache: this.cache,
      logger: this.logger,
      trace: this.tracer,
      fetcher: new ImageFetcher({
        allow: img.fetchAllow,
        maxBytes: img.maxBytes,
        timeoutMs: img.fetchTimeoutMs,
        maxRedirects: img.maxRedirects,
        ca: img.caFile === undefined ? undefined : readCaFile(img.caFile),
      }),
      maxPixels: img.maxPixels,
      urlCacheTtlMs: img.urlCacheTtlMs,
      urlCacheMaxEntries: img.urlCacheMaxEntries,
      urlCacheMaxBytes: img.urlCacheMaxBytes,
    });
    this.#scopes = {
      resolve: (name) => this.host.resolve(name),
      text: this.text,
      images: this.images,
      limits: { maxBatch: config.limits.maxInputsPerRequest, maxImagesPerPost: img.maxImagesPerPost },
    };
    this.policy = createPolicyController(config, this.logger, { tracer: this.tracer, tiers, stats: () => this.text.stats() });
    this.accounting = new Accounting({
      config: config.accounting,
      usage: config.usage,
      logger: this.logger,
      queues: this.host.queues,
      ...(deps.clock ? { clock: deps.clock } : {}),
    });
    // Per-request access logs are off: at embedding-service rates they would dominate the log volume.
    this.app = Fastify({
      loggerInstance: this.logger as FastifyBaseLogger,
      logController: new LogController({ disableRequestLogging: true }),
      bodyLimit: config.http.bodyLimitBytes,
      ajv: { customOptions: AJV_OPTIONS },
    });
    this.#jsonBodies.register(this.app, config.http.bodyLimitBytes);
    this.#tracing = startTracing(config.telemetry, packageVersion(), deps.spanExporter);
    if (this.#tracing) registerHttpTracing(this.app, this.logger);
    const schema = buildSchema(schemaOptionsOf(config));
    const checker = new OperationChecker(
      {
        maxInputs: config.limits.maxInputsPerOperation,
        maxResponseBytes: config.limits.maxResponseBytes,
        maxFields: config.limits.maxFields,
        maxDepth: config.limits.maxDepth,
      },
      this.catalog(),
    );
    this.#warm = () => warmValidation(schema, checker, config.models.defaultPostModel);
    this.#entityRoute =
      config.limits.entityFastPath && !this.#tracing
        ? new EntityRoute({
            schema,
            limits: checker,
            maxDocumentTokens: config.limits.maxDocumentTokens,
            cacheMaxAgeS: config.http.cacheMaxAgeS,
            defaultPostModel: config.models.defaultPostModel,
            logger: this.logger,
            stats: this.entityFastPath,
            vectorTextMemoBytes: config.limits.vectorTextMemoBytes,
          })
        : undefined;
    this.#apollo = new ApolloServer<PolyrayContext>({
      schema,
      formatError: makeFormatError(this.logger),
      logger: this.logger,
      includeStacktraceInErrorResponses: false,
      parseOptions: { maxTokens: config.limits.maxDocumentTokens },
      introspection: true,
      plugins: [
        // No drain plugin: @as-integrations/fastify's cuts connections after a fixed 10 s; stop() drains within
        // POLYRAY_SHUTDOWN_GRACE_MS instead.
        this.accounting.apolloPlugin(),
        ...(this.#tracing ? [graphqlTracingPlugin()] : []),
        operationLimitsPlugin(checker),
        // Cache control (on by default) wraps every field resolver to collect hints nobody reads here: an
        // entity's embedding is computed per request scope, never cached by HTTP (bench:hit, issue 27).
        ApolloServerPluginCacheControlDisabled(),
        httpCachePlugin(config.http.cacheMaxAgeS),
        config.env === 'production'
          ? ApolloServerPluginLandingPageProductionDefault({ footer: false })
          : ApolloServerPluginLandingPageLocalDefault({ footer: false }),
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
      models: () => this.host.models(),
      reloadModels: () => this.host.reload(),
    };
  }

  /**
   * The request scope of one operation, from its headers (UNAUTHENTICATED for a missing or wrong key).
   * Every entry point builds one: the GraphQL context here, a REST route the same way.
   */
  requestScope(headers: Record<string, string | string[] | undefined>, surface: Surface = 'graphql', response?: ServerResponse): RequestScope<AccountContext> {
    const account = this.accounting.authenticate(headers, surface);
    return new RequestScope(this.#scopes, account, serveOptions(account.client, headers, this.config.limits.requestTimeoutMs, response, performance.now()));
  }

  /** The request scope of a GraphQL request, made on first call; a refusal is thrown again on the next. */
  #graphqlScope(request: FastifyRequest, reply: FastifyReply): RequestScope<AccountContext> {
    let made = this.#graphqlScopes.get(request);
    if (!made) {
      try {
        made = { scope: this.requestScope(request.headers, 'graphql', reply.raw) };
      } catch (error) {
        made = { error };
      }
      this.#graphqlScopes.set(request, made);
    }
    if ('error' in made) throw made.error;
    return made.scope;
  }

  /** Listens, then loads models in the background; returns the listening URL. */
  async start(): Promise<string> {
    if (this.#state.kind !== 'created') throw new Error(`PolyrayServer.start called in state ${this.#state.kind}`);
    await this.accounting.start();
    await this.#jsonBodies.start();
    await this.#apollo.start();
    const catalog = this.catalog();
    const apollo = fastifyApolloHandler(this.#apollo, {
      // Authentication happens here (UNAUTHENTICATED before any resolver runs); the request scope admits
      // every pipeline call through the request's account (reserve → run → settle).
      context: async (request, reply): Promise<PolyrayContext> => ({ scope: this.#graphqlScope(request, reply), catalog, policy: this.policy }),
    });
    const route = this.#entityRoute;
    const app = this.app;
    this.app.route({
      method: ['GET', 'POST', 'OPTIONS'],
      url: '/graphql',
      handler: async (request, reply) => {
        if (route && request.method === 'POST') {
          const answer = await route.answer(request.body, request.headers, () => this.#graphqlScope(request, reply));
          if (answer) return reply.header('content-type', answer.contentType).header('cache-control', answer.cacheControl).send(answer.body);
        }
        // The integration types its handler's route (a string reply); the request and reply are the same objects.
        return apollo.call(app, request as Parameters<typeof apollo>[0], reply as Parameters<typeof apollo>[1]);
      },
    });
    // During shutdown, answers close their connection, so a keep-alive client does not hold the drain
    // open until the keep-alive timeout.
    // A callback hook, not an async one: it runs on every answer, and an async hook costs a promise each.
    this.app.addHook('onSend', (_req, reply, payload, done) => {
      if (this.#state.kind === 'draining') reply.header('connection', 'close');
      done(null, payload);
    });
    this.accounting.metrics.instrumentTiers(() => this.cache.stats());
    this.cache.observeReads((tier, ms) => this.accounting.metrics.tierRead.observe({ tier }, ms / 1000));
    this.accounting.metrics.instrumentEventLoop();
    this.accounting.metrics.instrumentMemos(() => [...this.text.memos(), ...this.images.memos(), ...(this.#entityRoute ? [this.#entityRoute.memo()] : [])]);
    this.accounting.registerRoutes(this.app);
    await registerOpenApi(this.app);
    const aliases = aliasMap(this.config.models.aliases);
    registerOpenAiRoutes(this.app, {
      scope: (headers, response) => this.requestScope(headers, 'openai', response),
      models: () => this.host.models(),
      maxInputs: this.config.limits.maxInputsPerRequest,
      aliases,
    });
    registerTeiRoutes(this.app, {
      scope: (headers, response) => this.requestScope(headers, 'tei', response),
      defaultModel: this.config.models.defaultPostModel,
      maxInputs: this.config.limits.maxInputsPerRequest,
      maxInputBytes: this.config.limits.maxInputBytes,
      aliases,
    });
    registerDashboardRoutes(this.app, {
      authenticate: (headers) => this.accounting.directory().authenticate(headers),
      policy: this.policy,
      tracer: this.tracer,
      stats: () => this.text.stats(),
      usage: async () => {
        const books = await this.accounting.ledger.read(await this.accounting.ledger.clientIds());
        const rows = books.flatMap((b) => b.rows.map((r) => ({ client: b.clientId, model: r.model, items: r.items, cost: r.cost })));
        return { unit: 'cost units', fleetWide: books.every((b) => b.fleetWide), rows };
      },
      ...(this.accounting.db ? { history: () => this.#dashboardHistory() } : {}),
    });
    registerExplorerRoutes(this.app);
    this.policy.start();
    registerHealthRoutes(this.app, {
      live: () => this.#state.kind !== 'stopped',
      // A model that failed after start (a replacement worker could not load it) makes the replica unready.
      ready: () => this.#state.kind === 'ready' && this.host.degraded().length === 0,
      detail: () => ({
        state: this.#state.kind,
        models: this.host.models().map((m) => ({ name: m.name, state: m.state, provider: m.executionProvider })),
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
    try {
      const [, problems] = await Promise.all([this.host.load(), this.#warm()]);
      if (problems.length > 0) this.logger.warn({ problems }, 'warm-up documents do not fit the schema');
      if (this.#state.kind === 'loading') this.#state = { kind: 'ready' };
    } catch (e) {
      const reason = (e as Error).message;
      if (this.#state.kind === 'loading') this.#state = { kind: 'failed', reason };
      this.logger.error({ reason }, 'start-up failed');
      throw e;
    }
  }

  /**
   * Graceful shutdown, in this order: `/readyz` 503 and no new connections at once; in-flight requests finish
   * within POLYRAY_SHUTDOWN_GRACE_MS; past it, queued inputs are dropped (SHUTTING_DOWN, not run, not charged),
   * their requests answer, and connections still open are closed; then the books are flushed — before the
   * workers, the caches and anything else that could hang — and the rest is closed.
   */
  async stop(): Promise<void> {
    if (this.#state.kind === 'stopped' || this.#state.kind === 'draining') return;
    this.#state = { kind: 'draining' };
    const graceMs = this.config.shutdownGraceMs;
    try {
      const closed = this.app.close();
      if (!(await settlesWithin(closed, graceMs))) {
        const dropped = this.host.cancelQueued();
        this.logger.warn({ graceMs, dropped }, 'shutdown grace period exceeded: queued inputs dropped (not charged), open connections closed');
        // The requests whose inputs were dropped answer now; a moment for those answers to leave.
        await settlesWithin(closed, 1000);
        this.app.server.closeAllConnections();
        await settlesWithin(closed, 1000);
      }
      await this.host.drain();
      // Books first: everything after this may hang or be killed, and what was delivered must be billed.
      await this.accounting.close();
      await this.pool.close();
      await this.tokenizers.close();
      await this.#jsonBodies.close();
      this.policy.stop();
      await this.tracer.close();
      await this.cache.close();
      await this.#tracing?.shutdown().catch((e: unknown) => this.logger.warn({ err: (e as Error).message }, 'the last spans could not be exported'));
    } finally {
      this.#state = { kind: 'stopped' };
      this.logger.info('stopped');
    }
  }

  /** The dashboard's cost over time: the last 24 h by hour and the last 30 days by day, from the usage database. */
  async #dashboardHistory(): Promise<UsageHistoryData> {
    const HOUR = 3_600_000;
    const now = this.#clock();
    const hour = Math.floor(now / HOUR) * HOUR;
    const day = Math.floor(now / (24 * HOUR)) * 24 * HOUR;
    const points = (rows: HistoryRow[]) => rows.map((r) => ({ client: r.clientId, start: r.key, items: r.items, cost: r.cost }));
    const [last24h, last30d] = await Promise.all([
      this.accounting.history({ from: new Date(hour - 23 * HOUR), to: new Date(hour + HOUR), by: 'hour' }),
      this.accounting.history({ from: new Date(day - 29 * 24 * HOUR), to: new Date(day + 24 * HOUR), by: 'day' }),
    ]);
    return { unit: 'cost units', last24h: points(last24h), last30d: points(last30d) };
  }

  /** Flushes the usage books now (a forced exit's last step): the Redis ledger, and the database batches into the outbox. */
  async flushBooks(): Promise<void> {
    await Promise.all([this.accounting.ledger.flush(), this.accounting.books?.flush()]);
  }
}

/** Whether `p` settles within `ms` (it keeps running either way). */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  try {
    return await Promise.race([
      p.then(
        () => true,
        () => true,
      ),
      late,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
