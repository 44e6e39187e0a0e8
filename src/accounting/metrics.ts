/**
 * Prometheus metrics on a per-server `Registry` (never prom-client's global one, so two servers in one
 * process — tests, benchmarks — keep separate series).
 *
 * Cardinality is bounded: the `client` label is a configured client id (at most `MAX_CLIENT_LABELS` of
 * them, in clients-file order) or "other"; `model` is a model of the models folder (unknown names are
 * refused before anything is counted); `source` and `code` come from closed sets.
 *
 * Conventions (checked by test/metrics-lint.test.ts with a Prometheus text-format parser): counters end in
 * `_total` and only counters do; times are seconds; latencies are histograms, not means; Node's default
 * process metrics (`process_*`, `nodejs_*`) and `polyray_build_info` are there. Totals the components
 * keep themselves (tier hits, batch tokens, dropped items) are counters set from those totals at scrape.
 */
import type { TierStats } from '../cache/cache.ts';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { ErrorCode } from '../errors.ts';
import type { InferenceQueue } from '../runtime/host.ts';
import type { InferencePool, Lease } from '../runtime/pool.ts';
import type { MemoStats, Source } from '../service/types.ts';
import type { QuotaStore } from './quota.ts';
import { packageVersion } from '../version.ts';

export const MAX_CLIENT_LABELS = 100;

/** Which entry point a request came through: GraphQL, the OpenAI-compatible /v1 routes, or TEI's /embed and /tokenize. */
export type Surface = 'graphql' | 'openai' | 'tei';
const KNOWN_CODES = new Set<string>([...Object.values(ErrorCode), 'OK', 'GRAPHQL_PARSE_FAILED', 'GRAPHQL_VALIDATION_FAILED', 'BAD_REQUEST']);

export class AccountingMetrics {
  readonly registry = new Registry();
  #labelled = new Set<string>();
  readonly requests: Counter<'client' | 'code' | 'surface'>;
  readonly items: Counter<'client' | 'model' | 'source' | 'surface'>;
  readonly cacheHits: Counter<'client' | 'model' | 'tier'>;
  readonly tokens: Counter<'client' | 'model'>;
  readonly inferenceSeconds: Counter<'client' | 'model'>;
  readonly cost: Counter<'client' | 'model' | 'source' | 'surface'>;
  readonly quotaRejections: Counter<'client'>;
  readonly authFailures: Counter;
  readonly usageResets: Counter;
  readonly batchSize: Histogram<'model'>;
  readonly batchSeconds: Histogram<'model'>;
  readonly queueDepth: Gauge<'model'>;
  /** Time from a request's start to its answer, by surface and outcome. */
  readonly requestSeconds: Histogram<'surface' | 'code'>;
  /** Time a queued item waited for its batch, by model. */
  readonly queueWait: Histogram<'model'>;
  /** Latency of one read of a cache tier (a multi-key read counts once). */
  readonly tierRead: Histogram<'tier'>;

  constructor(queues: ReadonlyMap<string, InferenceQueue>) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'polyray_requests_total',
      help: 'Requests by client, outcome (OK or the first error code) and surface (graphql, openai, tei)',
      labelNames: ['client', 'code', 'surface'],
      registers,
    });
    this.items = new Counter({
      name: 'polyray_items_total',
      help: 'Embeddings served, by client, model, source (MEMORY, GLOBAL, COMPUTED) and surface',
      labelNames: ['client', 'model', 'source', 'surface'],
      registers,
    });
    this.cacheHits = new Counter({
      name: 'polyray_cache_hits_total',
      help: 'Items served from a cache tier (memory or global), by client and model',
      labelNames: ['client', 'model', 'tier'],
      registers,
    });
    this.tokens = new Counter({
      name: 'polyray_tokens_computed_total',
      help: 'Tokens computed by inference, by client and model',
      labelNames: ['client', 'model'],
      registers,
    });
    this.inferenceSeconds = new Counter({
      name: 'polyray_inference_seconds_total',
      help: "Inference time attributed to clients (each batch's measured run time split by token share)",
      labelNames: ['client', 'model'],
      registers,
    });
    this.cost = new Counter({
      name: 'polyray_cost_units_total',
      help: 'Cost units charged, by client, model, source and surface',
      labelNames: ['client', 'model', 'source', 'surface'],
      registers,
    });
    this.quotaRejections = new Counter({
      name: 'polyray_quota_rejections_total',
      help: 'Operations refused with QUOTA_EXCEEDED, by client',
      labelNames: ['client'],
      registers,
    });
    this.authFailures = new Counter({ name: 'polyray_auth_failures_total', help: 'Requests refused with UNAUTHENTICATED', registers });
    this.usageResets = new Counter({
      name: 'polyray_usage_books_resets_total',
      help: "Times the usage books in Redis were found lost (restart without persistence) and this replica's share restored",
      registers,
    });
    this.requestSeconds = new Histogram({
      name: 'polyray_request_duration_seconds',
      help: 'Time from a request being authenticated to its answer, by surface and outcome (OK or the first error code)',
      labelNames: ['surface', 'code'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.queueWait = new Histogram({
      name: 'polyray_queue_wait_seconds',
      help: 'Time a queued input waited before its batch started, by model',
      labelNames: ['model'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.tierRead = new Histogram({
      name: 'polyray_cache_tier_read_duration_seconds',
      help: 'Latency of one read (of one or many keys) of a cache tier',
      labelNames: ['tier'],
      buckets: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
      registers,
    });
    const version = packageVersion();
    new Gauge({ name: 'polyray_build_info', help: 'Always 1: the version and Node.js running', labelNames: ['version', 'node'], registers }).set(
      { version, node: process.version },
      1,
    );
    collectDefaultMetrics({ register: this.registry });
    this.batchSize = new Histogram({
      name: 'polyray_batch_size',
      help: 'Items per inference batch',
      labelNames: ['model'],
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096],
      registers,
    });
    this.batchSeconds = new Histogram({
      name: 'polyray_inference_batch_seconds',
      help: 'ONNX Runtime run() time per batch, measured in the worker',
      labelNames: ['model'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    new Gauge({
      name: 'polyray_queue_wait_correction',
      help: "The factor admission by time scales a model queue's wait predictions by: the 90th percentile of real ÷ predicted wait over the last minute (1 without samples)",
      labelNames: ['model'],
      registers,
      collect() {
        for (const [model, q] of queues) this.set({ model }, q.stats().waitCorrection);
      },
    });
    this.queueDepth = new Gauge({
      name: 'polyray_queue_depth',
      help: 'Items waiting in the batcher queue, by model',
      labelNames: ['model'],
      registers,
      collect() {
        for (const [model, q] of queues) this.set({ model }, q.stats().queued);
      },
    });
    // Real vs padded tokens of the text batches: real ÷ padded is the share of inference spent on real input.
    totals({
      name: 'polyray_batch_tokens_total',
      help: 'Tokens sent to inference in text batches, by model and kind (real: input tokens; padded: batch items × longest item)',
      labelNames: ['model', 'kind'],
      registers,
      read: (set) => {
        for (const [model, q] of queues) {
          const st = q.stats();
          if (!('realTokens' in st)) continue;
          set({ model, kind: 'real' }, st.realTokens);
          set({ model, kind: 'padded' }, st.paddedTokens);
        }
      },
    });
    // Items that left a queue without a result of their own: what overload and faults cost, by reason.
    totals({
      name: 'polyray_queue_items_dropped_total',
      help: 'Items that left a model queue before inference or went back into it, by model and reason (expired: deadline passed or caller gone, never run; rejected: refused OVERLOADED; requeued: their worker died mid-batch, queued again once)',
      labelNames: ['model', 'reason'],
      registers,
      read: (set) => {
        for (const [model, q] of queues) {
          const st = q.stats();
          set({ model, reason: 'expired' }, st.expired);
          set({ model, reason: 'rejected' }, st.rejected);
          set({ model, reason: 'requeued' }, st.retried);
        }
      },
    });
  }

  /**
   * Quota store series, read at scrape time: `polyray_quota_store{store}` is 1 on the whole store's state
   * (redis while every node holding buckets answers; local or unavailable, the failure mode, while one or
   * more do not — then for their clients only), `polyray_quota_store_nodes_down` counts those nodes.
   */
  /**
   * Usage database series: `polyray_usage_unconfirmed_batches` (batches the database has not confirmed,
   * read at scrape time), `polyray_budget_alerts_total` and `polyray_budget_rejections_total`.
   */
  instrumentBooks(books: { readonly unconfirmed: number }): { alerts: Counter<'client' | 'threshold'>; rejections: Counter<'client'> } {
    const registers = [this.registry];
    new Gauge({
      name: 'polyray_usage_unconfirmed_batches',
      help: 'Usage batches of this replica the usage database has not confirmed yet (they wait in memory and in the Redis outbox)',
      registers,
      collect() {
        this.set(books.unconfirmed);
      },
    });
    return {
      alerts: new Counter({
        name: 'polyray_budget_alerts_total',
        help: 'Budget alert thresholds crossed, recorded once per client, period and threshold for the fleet (counted by the replica that recorded it)',
        labelNames: ['client', 'threshold'],
        registers,
      }),
      rejections: new Counter({
        name: 'polyray_budget_rejections_total',
        help: 'Operations refused with BUDGET_EXCEEDED, by client',
        labelNames: ['client'],
        registers,
      }),
    };
  }

  instrumentQuota(quota: { readonly store: QuotaStore; readonly nodesDown: number }): void {
    const registers = [this.registry];
    new Gauge({
      name: 'polyray_quota_store',
      help: 'Where quota buckets live (1 on the current state): redis while every Redis node holding buckets answers; local (failing open) or unavailable (failing closed) while one or more do not, for the clients on those nodes only (see polyray_quota_store_nodes_down); local without Redis',
      labelNames: ['store'],
      registers,
      collect() {
        const store = quota.store;
        for (const s of ['redis', 'local', 'unavailable'] as const) this.set({ store: s }, s === store ? 1 : 0);
      },
    });
    new Gauge({
      name: 'polyray_quota_store_nodes_down',
      help: "Redis nodes holding quota buckets (standalone: the server; Cluster: masters) that did not answer and are not yet back: their clients' buckets are per replica (open) or refused (closed) until a probe answers",
      registers,
      collect() {
        this.set(quota.nodesDown);
      },
    });
  }

  /**
   * Cache tier series, read from the tiers at scrape time: health, hits, misses, errors, bytes, entries
   * and read latency per tier ("memory", "global").
   */
  instrumentTiers(stats: () => readonly TierStats[]): void {
    const registers = [this.registry];
    const gauge = (name: string, help: string, pick: (t: TierStats) => number): void => {
      new Gauge({
        name,
        help,
        labelNames: ['tier'],
        registers,
        collect() {
          for (const t of stats()) {
            const v = pick(t);
            if (v >= 0) this.set({ tier: t.tier }, v);
          }
        },
      });
    };
    gauge('polyray_cache_tier_healthy', 'Whether a cache tier is in use (1) or skipped after a failure (0)', (t) => (t.healthy ? 1 : 0));
    const total = (name: string, help: string, pick: (t: TierStats) => number): void => {
      totals({
        name,
        help,
        labelNames: ['tier'],
        registers,
        read: (set) => {
          for (const t of stats()) set({ tier: t.tier }, pick(t));
        },
      });
    };
    total('polyray_cache_tier_hits_total', 'Keys found in a tier', (t) => t.hits);
    total('polyray_cache_tier_misses_total', 'Keys looked up in a tier and not found (failures count as misses)', (t) => t.misses);
    total('polyray_cache_tier_errors_total', 'Failed or timed-out tier operations', (t) => t.errors);
    gauge('polyray_cache_tier_bytes', 'Bytes a tier holds, where it can tell', (t) => t.bytes);
    gauge('polyray_cache_tier_entries', 'Entries a tier holds, where it can tell', (t) => t.entries);
  }

  /**
   * The event loop's delay (perf_hooks.monitorEventLoopDelay, 10 ms resolution) since the previous scrape:
   * p50, p99 and max, in seconds. What every request waits for besides its own work; a stall shows here.
   */
  instrumentEventLoop(): void {
    const h = monitorEventLoopDelay({ resolution: 10 });
    h.enable();
    new Gauge({
      name: 'polyray_event_loop_delay_seconds',
      help: 'Event loop delay since the previous scrape (p50, p99, max)',
      labelNames: ['quantile'],
      registers: [this.registry],
      collect() {
        this.set({ quantile: '0.5' }, h.percentile(50) / 1e9);
        this.set({ quantile: '0.99' }, h.percentile(99) / 1e9);
        this.set({ quantile: 'max' }, h.max / 1e9);
        h.reset();
      },
    });
  }

  /** Gauges of the in-process memos (bytes held, their bound, entries), read at scrape time. */
  instrumentMemos(stats: () => readonly MemoStats[]): void {
    const registers = [this.registry];
    const gauge = (name: string, help: string, pick: (m: MemoStats) => number): void => {
      new Gauge({
        name,
        help,
        labelNames: ['memo'],
        registers,
        collect() {
          for (const m of stats()) this.set({ memo: m.memo }, pick(m));
        },
      });
    };
    gauge('polyray_memo_bytes', 'Bytes an in-process memo holds (recent computations, image URL → hash)', (m) => m.bytes);
    gauge('polyray_memo_max_bytes', 'The byte bound of an in-process memo', (m) => m.maxBytes);
    gauge('polyray_memo_entries', 'Entries an in-process memo holds', (m) => m.entries);
  }

  /** Sets which client ids get their own label (the first MAX_CLIENT_LABELS configured ones). */
  setClients(ids: readonly string[]): void {
    this.#labelled = new Set(ids.slice(0, MAX_CLIENT_LABELS));
  }

  clientLabel(id: string | undefined): string {
    return id !== undefined && this.#labelled.has(id) ? id : 'other';
  }

  codeLabel(code: unknown): string {
    return typeof code === 'string' && KNOWN_CODES.has(code) ? code : 'OTHER';
  }

  /** `items` answers of one source in one pipeline call, with their tokens, inference time and cost (one update per series). */
  served(clientId: string, surface: Surface, model: string, source: Source, items: number, tokens: number, inferenceMs: number, cost: number): void {
    const client = this.clientLabel(clientId);
    this.items.inc({ client, model, source, surface }, items);
    if (source !== 'COMPUTED') this.cacheHits.inc({ client, model, tier: source === 'MEMORY' ? 'memory' : 'global' }, items);
    if (tokens > 0) this.tokens.inc({ client, model }, tokens);
    if (inferenceMs > 0) this.inferenceSeconds.inc({ client, model }, inferenceMs / 1000);
    if (cost > 0) this.cost.inc({ client, model, source, surface }, cost);
  }

  /**
   * A view of the pool for the batchers that observes every batch: its size (from the feeds' first
   * dimension) and its measured run time. Batchers only call `acquire()` and the lease's `run`/`release`.
   */
  instrumentPool(pool: InferencePool): InferencePool {
    const observe = (model: string, n: number | undefined, runMs: number): void => {
      if (n !== undefined) this.batchSize.observe({ model }, n);
      this.batchSeconds.observe({ model }, runMs / 1000);
    };
    const view = {
      acquire: async (): Promise<Lease> => {
        const lease = await pool.acquire();
        return {
          run: async (model, feeds, output, options) => {
            const r = await lease.run(model, feeds, output, options);
            observe(model, feeds[0]?.dims[0], r.runMs);
            return r;
          },
          release: () => lease.release(),
        };
      },
    };
    return view as unknown as InferencePool;
  }
}

/**
 * A counter whose values are totals a component keeps itself, read at scrape time: Prometheus' `rate()`
 * needs the counter type, which a gauge set to a running total does not give.
 */
function totals<L extends string>(o: {
  name: string;
  help: string;
  labelNames: readonly L[];
  registers: Registry[];
  read: (set: (labels: Record<L, string>, value: number) => void) => void;
}): Counter<L> {
  return new Counter<L>({
    name: o.name,
    help: o.help,
    labelNames: o.labelNames,
    registers: o.registers,
    collect() {
      this.reset();
      o.read((labels, value) => {
        if (value >= 0) this.inc(labels as Partial<Record<L, string>>, value);
      });
    },
  });
}
