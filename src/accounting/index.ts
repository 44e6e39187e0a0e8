/**
 * Accounting: clients, quotas, cost attribution and metrics, as one component the server composes.
 *
 *   - `authenticate(headers)` (the GraphQL context function) → a `RequestAccount`, or UNAUTHENTICATED
 *   - the request scope admits every pipeline call through the account (reserve → run → settle + ledger)
 *   - `apolloPlugin()` puts `extensions.cost` on every response and counts requests
 *   - `registerRoutes(app)` serves `/metrics`
 *
 * Redis (quota buckets + the usage ledger): `config.accounting.redis`, a standalone Redis or a Redis
 * Cluster (redis-client.ts; key layout in keys.ts); `none` keeps everything per replica, which is what
 * the embedded default wants.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { unwatchFile, watchFile } from 'node:fs';
import type { ApolloServerPlugin } from '@apollo/server';
import type { FastifyInstance } from 'fastify';
import { GraphQLError } from 'graphql';
import type { PolyrayConfig } from '../config/index.ts';
import { ErrorCode, PolyrayError, httpStatusOf, isPolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { PolyrayContext } from '../resolvers/context.ts';
import type { InferenceQueue } from '../runtime/host.ts';
import { ClientDirectory, DEV_CLIENT, readClientsFileSync } from './clients.ts';
import { CostModel } from './cost.ts';
import { Ledger } from './ledger.ts';
import { AccountingMetrics, type Surface } from './metrics.ts';
import { QuotaManager } from './quota.ts';
import { RedisBuckets } from './redis-bucket.ts';
import { createAccountingRedis, type AccountingRedis } from './redis-client.ts';
import { RequestAccount, type AccountingCore } from './request.ts';
import { UsageBooks } from '../usage/books.ts';
import { Budgets } from '../usage/budget.ts';
import type { UsageConfig } from '../usage/config.ts';
import { createUsageDatabase, migrateUsageDatabase } from '../usage/database.ts';
import { checkRange, type HistoryQuery, type HistoryRow, knownClient, usageHistory } from '../usage/report.ts';
import type pg from 'pg';

export type { AccountContext, ClientUsage, CostSummary } from './request.ts';

export interface AccountingOptions {
  config: PolyrayConfig['accounting'];
  logger: Logger;
  /** The models' inference queues, read at scrape time for the queue metrics. Default: none. */
  queues?: ReadonlyMap<string, InferenceQueue>;
  /** How often the clients file is checked for changes. Default 2000 ms. */
  clientsPollMs?: number;
  /** The usage database (src/usage): books of record, history, budgets. Default: none. */
  usage?: UsageConfig;
  /** Milliseconds since the epoch, for the hours of the usage rows and budget periods. Default `Date.now`. */
  clock?: () => number;
}

export class Accounting implements AccountingCore {
  readonly logger: Logger;
  readonly metrics: AccountingMetrics;
  readonly costModel: CostModel;
  readonly quota: QuotaManager;
  readonly ledger: Ledger;
  readonly redis: AccountingRedis | undefined;
  /** The usage database and what lives on it; unset without POLYRAY_USAGE_DATABASE_URL. */
  readonly db: pg.Pool | undefined;
  readonly books: UsageBooks | undefined;
  readonly budgets: Budgets | undefined;
  readonly budgetRejections: { inc(labels: { client: string }): void } | undefined;
  readonly #o: AccountingOptions;
  #migrateRetry: NodeJS.Timeout | undefined;
  #directory: ClientDirectory = new ClientDirectory('dev');
  #watcher: ((cur: { mtimeMs: number; size: number }, prev: { mtimeMs: number; size: number }) => void) | undefined;

  constructor(options: AccountingOptions) {
    this.#o = options;
    const c = options.config;
    this.logger = options.logger;
    this.metrics = new AccountingMetrics(options.queues ?? new Map());
    this.costModel = new CostModel({ memoryHitCost: c.memoryHitCost, globalHitCost: c.globalHitCost });
    if (c.redis.kind !== 'none') {
      this.redis = createAccountingRedis(c.redis, { timeoutMs: c.redisTimeoutMs });
      let warned = false;
      this.redis.on('error', (e: Error) => {
        if (!warned) this.logger.warn({ reason: e.message, store: c.redis.kind }, 'accounting Redis connection error');
        warned = true;
      });
      this.redis.on('ready', () => {
        warned = false;
      });
    }
    this.quota = new QuotaManager({
      redis: this.redis ? new RedisBuckets(this.redis, c.keyPrefix, { timeoutMs: c.redisTimeoutMs }) : undefined,
      failureMode: c.failureMode,
      replicas: c.replicas,
      logger: this.logger,
    });
    this.metrics.instrumentQuota(this.quota);
    this.ledger = new Ledger({
      redis: this.redis,
      keyPrefix: c.keyPrefix,
      flushMs: c.ledgerFlushMs,
      logger: this.logger,
      timeoutMs: c.redisTimeoutMs,
      onReset: () => {
        this.metrics.usageResets.inc();
        // The outbox went with the books: this replica's batches waiting for the database go there again.
        this.books?.outboxLost();
      },
    });
    const u = options.usage;
    if (u?.databaseUrl) {
      this.db = createUsageDatabase(u.databaseUrl, u.timeoutMs, this.logger);
      this.books = new UsageBooks({
        db: this.db,
        redis: this.redis,
        keyPrefix: c.keyPrefix,
        flushMs: u.flushMs,
        maxUnconfirmed: u.maxUnconfirmed,
        redisTimeoutMs: c.redisTimeoutMs,
        retentionDays: u.retentionDays,
        batchRetentionDays: u.batchRetentionDays,
        logger: this.logger,
        clock: options.clock,
      });
      const counters = this.metrics.instrumentBooks(this.books);
      this.budgetRejections = counters.rejections;
      this.budgets = new Budgets({
        db: this.db,
        books: this.books,
        clients: () => this.#directory.list(),
        refreshMs: u.budgetRefreshMs,
        logger: this.logger,
        clock: options.clock,
        onAlert: (client, threshold) => counters.alerts.inc({ client: this.metrics.clientLabel(client), threshold: String(threshold) }),
      });
    }
  }

  directory(): ClientDirectory {
    return this.#directory;
  }

  /** Loads the clients (an invalid file stops start-up), connects Redis, starts the ledger flusher. */
  async start(): Promise<void> {
    const c = this.#o.config;
    if (c.clientsFile) {
      this.#setDirectory(new ClientDirectory(readClientsFileSync(c.clientsFile).clients));
      this.logger.info({ clientsFile: c.clientsFile, clients: this.#directory.list().length }, 'clients loaded; requests need an API key');
      const file = c.clientsFile;
      this.#watcher = (cur, prev) => {
        if (cur.mtimeMs === prev.mtimeMs && cur.size === prev.size) return;
        try {
          this.#setDirectory(new ClientDirectory(readClientsFileSync(file).clients));
          this.logger.info({ clients: this.#directory.list().length }, 'clients file reloaded');
        } catch (e) {
          this.logger.error({ reason: (e as Error).message }, 'clients file could not be reloaded; keeping the previous clients');
        }
      };
      watchFile(file, { interval: this.#o.clientsPollMs ?? 2000, persistent: false }, this.#watcher);
    } else {
      this.#setDirectory(new ClientDirectory('dev'));
      this.logger.warn(
        { client: DEV_CLIENT.id },
        'no POLYRAY_CLIENTS_FILE: running with one local development client (admin, every model, generous quota); requests need no API key',
      );
    }
    if (this.redis) {
      try {
        await this.redis.connect();
        this.logger.info(
          { store: c.redis.kind },
          c.redis.kind === 'cluster' ? 'quotas and usage ledger in Redis Cluster (fleet-wide)' : 'quotas and usage ledger in Redis (fleet-wide)',
        );
      } catch (e) {
        this.logger.warn({ reason: (e as Error).message, failureMode: c.failureMode }, 'accounting Redis unreachable at start; retrying in the background');
      }
      this.ledger.start();
    } else {
      this.logger.info(
        'no quota Redis (POLYRAY_QUOTA_REDIS_URL / POLYRAY_QUOTA_REDIS_CLUSTER_NODES / REDIS_URL / REDIS_CLUSTER_NODES): quotas and usage are per replica',
      );
    }
    await this.#startBooks();
  }

  /** Applies the migrations (retried in the background while the database does not answer), starts books and budgets. */
  async #startBooks(): Promise<void> {
    const u = this.#o.usage;
    if (!u?.databaseUrl || !this.books || !this.budgets) {
      if (this.#directory.list().some((c) => c.budget))
        this.logger.warn('clients have budgets but there is no usage database (POLYRAY_USAGE_DATABASE_URL): budgets are not enforced');
      return;
    }
    const url = u.databaseUrl;
    const migrate = async (): Promise<boolean> => {
      if (!u.migrate) return true;
      try {
        const applied = await migrateUsageDatabase(url, this.logger);
        if (applied.length > 0) this.logger.info({ applied }, 'usage database migrated');
        return true;
      } catch (e) {
        this.logger.warn({ reason: (e as Error).message }, 'usage database migrations could not be applied yet; retrying (usage batches wait meanwhile)');
        return false;
      }
    };
    this.books.start();
    if (await migrate()) await this.budgets.start();
    else {
      this.#migrateRetry = setInterval(() => {
        void migrate().then(async (ok) => {
          if (!ok || !this.#migrateRetry) return;
          clearInterval(this.#migrateRetry);
          this.#migrateRetry = undefined;
          await this.budgets?.start();
        });
      }, 5000);
      this.#migrateRetry.unref();
    }
    this.logger.info({ flushMs: u.flushMs }, 'usage books in PostgreSQL (book of record)');
  }

  async history(q: HistoryQuery): Promise<HistoryRow[]> {
    const db = this.#database();
    checkRange(q, this.#o.usage!.maxRangeDays);
    return this.#fromDatabase(() => usageHistory(db, q));
  }

  async hasHistory(clientId: string): Promise<boolean> {
    if (!this.db) return false;
    return this.#fromDatabase(() => knownClient(this.db!, clientId));
  }

  #database(): pg.Pool {
    if (!this.db) {
      throw new PolyrayError(
        ErrorCode.HISTORY_UNAVAILABLE,
        'Usage history needs the usage database, which this service does not have (POLYRAY_USAGE_DATABASE_URL)',
      );
    }
    return this.db;
  }

  /** A database failure, as the client sees it: HISTORY_UNAVAILABLE (the cause is logged, not shown). */
  async #fromDatabase<T>(read: () => Promise<T>): Promise<T> {
    try {
      return await read();
    } catch (e) {
      if (e instanceof PolyrayError) throw e;
      this.logger.warn({ reason: (e as Error).message }, 'usage history could not be read from the database');
      throw new PolyrayError(ErrorCode.HISTORY_UNAVAILABLE, 'The usage database does not answer right now; retry shortly', { retryAfterMs: 5000 });
    }
  }

  #setDirectory(d: ClientDirectory): void {
    this.#directory = d;
    this.metrics.setClients(d.list().map((c) => c.id));
  }

  /**
   * The request's account, from its headers. Throws a GraphQLError with code UNAUTHENTICATED (HTTP 401)
   * for a missing or wrong key; the PolyrayError inside carries the public message.
   */
  authenticate(headers: Record<string, string | string[] | undefined>, surface: Surface = 'graphql'): RequestAccount {
    try {
      return new RequestAccount(this, this.#directory.authenticate(headers), surface);
    } catch (e) {
      if (!isPolyrayError(e)) throw e;
      this.metrics.authFailures.inc();
      throw new GraphQLError(e.message, { originalError: e, extensions: { code: e.code, http: { status: httpStatusOf[e.code] } } });
    }
  }

  /** Adds `extensions.cost` to every response and counts requests by client and outcome. */
  apolloPlugin(): ApolloServerPlugin<PolyrayContext> {
    return {
      async requestDidStart() {
        return {
          async willSendResponse({ contextValue, response }) {
            // No scope when the context function refused the request (UNAUTHENTICATED).
            const account = (contextValue as Partial<PolyrayContext>).scope?.account;
            if (!account) return;
            if (response.body.kind === 'single') {
              const r = response.body.singleResult;
              const cost = await account.close(String(r.errors?.[0]?.extensions?.['code'] ?? 'OK'));
              r.extensions = { ...r.extensions, cost };
            } else await account.finish();
          },
        };
      },
    };
  }

  registerRoutes(app: FastifyInstance): void {
    const token = this.#o.config.metricsToken;
    const expected = token === undefined ? undefined : createHash('sha256').update(`Bearer ${token}`).digest();
    // Who may scrape: the metrics token's holder, an admin key, or anyone in development (no clients file,
    // no token). A client key is refused: the series name every client and model.
    const allowed = (headers: Record<string, string | string[] | undefined>): 'yes' | 'unauthenticated' | 'forbidden' => {
      if (expected) {
        // Compared as digests: constant time whatever the length of what was sent.
        const got = createHash('sha256')
          .update(typeof headers['authorization'] === 'string' ? headers['authorization'] : '')
          .digest();
        if (timingSafeEqual(got, expected)) return 'yes';
      }
      const directory = this.#directory;
      if (directory.open) return expected ? 'unauthenticated' : 'yes';
      try {
        return directory.authenticate(headers).role === 'admin' ? 'yes' : 'forbidden';
      } catch {
        return 'unauthenticated';
      }
    };
    app.get('/metrics', async (req, reply) => {
      const verdict = allowed(req.headers);
      if (verdict !== 'yes') {
        const how = expected ? 'the metrics bearer token (POLYRAY_METRICS_TOKEN) or an admin API key' : 'an admin API key';
        return reply
          .code(verdict === 'forbidden' ? 403 : 401)
          .header('www-authenticate', 'Bearer realm="polyray-metrics"')
          .send({ error: verdict === 'forbidden' ? 'FORBIDDEN' : 'UNAUTHENTICATED', message: `/metrics needs ${how}` });
      }
      const body = await this.metrics.registry.metrics();
      return reply.header('content-type', this.metrics.registry.contentType).send(body);
    });
  }

  /** Flushes the ledger, stops watching the clients file, closes Redis. */
  async close(): Promise<void> {
    if (this.#watcher && this.#o.config.clientsFile) unwatchFile(this.#o.config.clientsFile, this.#watcher);
    this.#watcher = undefined;
    if (this.#migrateRetry) clearInterval(this.#migrateRetry);
    this.budgets?.close();
    await this.ledger.close();
    await this.books?.close();
    await this.db?.end().catch(() => undefined);
    // Quota adjustments still on their way (settleLater) land before the connection is closed.
    await this.quota.drain();
    if (this.redis) {
      try {
        await this.redis.quit();
      } catch {
        this.redis.disconnect();
      }
    }
  }
}
