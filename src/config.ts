/**
 * The one reader of `process.env` and of the optional JSON config file.
 *
 * `loadConfig()` returns a typed, validated `PolyrayConfig`; every other module receives the parts it
 * needs as options. Defaults run embedded: no Redis, CPU inference, models built into `./models`.
 * Precedence: environment variable > config file (`POLYRAY_CONFIG`) > default.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { DEFAULT_PRICES, type CostPrices } from './policy/cost.ts';

export type ExecutionProviderName = 'cpu' | 'cuda' | 'webgpu';
export const EXECUTION_PROVIDERS: readonly ExecutionProviderName[] = ['cpu', 'cuda', 'webgpu'];

export interface PolyrayConfig {
  env: 'development' | 'production' | 'test';
  http: {
    host: string;
    /** Default 4000. */
    port: number;
    /** Largest accepted request body in bytes. Default 16 MiB. */
    bodyLimitBytes: number;
  };
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' };
  models: {
    /** Folder holding one sub-folder per model. Default `./models`. */
    dir: string;
    /** Build the bundled models that are missing before serving. Default true. */
    buildMissing: boolean;
    /**
     * Names of the models this replica loads and serves; `["*"]` loads every model folder. Default
     * `["*"]`. A replica per model family keeps memory down (each worker holds a session per model).
     */
    serve: string[];
    /** Model `Post.embedding` uses when the query names none. Default `postray` (text + images). */
    defaultPostModel: string;
  };
  inference: {
    /** Worker threads, each holding a session per model. Default 1. */
    workers: number;
    /**
     * ONNX Runtime intra-op threads per worker. Default: cores / workers when inference runs at a lower
     * priority (`niceness` > 0, Linux), else (cores − 1) / workers — at least 1 either way. Inference may
     * then use every core, because the event loop preempts it whenever it has work: cache hits keep
     * answering while inference saturates the machine (bench/RESULTS.md).
     */
    intraOpThreads: number;
    /**
     * Nice value of the inference threads (the worker threads and the ONNX Runtime threads they start),
     * 0–19. Default 10 on Linux, where nice is per thread; 0 elsewhere (there it would lower the whole
     * process). The main thread keeps its own priority.
     */
    niceness: number;
    /**
     * Batches each worker holds at once (running + queued behind it). Default 1: a batch forms when a
     * worker is free, from everything that queued meanwhile. 2 sends a batch that is already full to wait
     * in the worker while the previous one runs, so the worker does not idle while the main thread hands
     * results back (partial batches still wait and grow). On 2 CPU cores it measured within noise of 1
     * (worker busy 95–98 % either way), so it is left for accelerators, where a run is short next to the hand-off.
     */
    pipelineDepth: number;
    /**
     * Let ONNX Runtime's intra-op threads spin between parallel sections instead of sleeping. "auto"
     * (default): as the model's manifest suggests (`runtime.allowSpinning`; our transformer builders set
     * it, since waking threads costs a long run ~20 % on CPU), else off — with many short runs (GloVe)
     * the spinning takes a core the event loop needs (bench/RESULTS.md). true/false force it for every model.
     */
    allowSpinning: boolean | 'auto';
    /** Execution providers to try in order; CPU is always the last resort. Default ["cpu"]. */
    providers: ExecutionProviderName[];
  };
  batching: {
    /** Most items in one inference run. Default 64. */
    maxItems: number;
    /**
     * Most padded tokens (items × longest sequence) in one run. Default 1024: on CPU a transformer's
     * throughput peaks at about 768–1024 padded tokens per run and falls beyond (bench/RESULTS.md).
     */
    maxTokens: number;
    /**
     * `maxTokens` for models that run on an accelerator provider (cuda, webgpu). Default 16384 (64 items of
     * 256 tokens): a GPU wants large batches, and the CPU bound above would cap it at a few items.
     */
    acceleratorMaxTokens: number;
    /**
     * Longest time the first queued item waits for company, in microseconds. Default 0: dispatch as soon
     * as a worker is free — items that arrive while every worker is busy still form batches, and a lone
     * request pays no timer (measured in bench/RESULTS.md). Raise it for accelerators whose runs are
     * cheap relative to their fixed cost.
     */
    maxWaitUs: number;
    /** Most items waiting per model; beyond it requests fail with OVERLOADED. Default 8192. */
    maxQueueItems: number;
    /** Image models: most input pixels (items × height × width) in one run. Default 16 images of 224×224. */
    maxPixels: number;
  };
  /** Image inputs: fetching (src/images/fetch.ts) and decoding limits. */
  images: {
    /**
     * Hosts and CIDR ranges image URLs may reach although they are loopback, private, link-local or
     * otherwise internal (e.g. `127.0.0.1`, `10.0.0.0/8`, `images.internal`). Default: none.
     */
    fetchAllow: string[];
    /**
     * PEM bundle of extra certificate authorities trusted for https image hosts (a private CA), added to
     * Node's bundled roots for image fetches only. Default: unset (the bundled roots only).
     */
    caFile: string | undefined;
    /** Largest image in bytes, enforced while streaming. Default 10 MiB. */
    maxBytes: number;
    /** Whole fetch (all redirects, headers and body) time limit. Default 5000 ms. */
    fetchTimeoutMs: number;
    /** Most redirects followed. Default 3. */
    maxRedirects: number;
    /** Largest image in pixels (width × height, read from the header before decoding). Default 40 MP. */
    maxPixels: number;
    /** How long a URL's content hash is remembered, so a repeated URL skips the fetch. Default 300 s. */
    urlCacheTtlMs: number;
    /** Most URLs remembered. Default 100000. */
    urlCacheMaxEntries: number;
    /** Most images read per post. Default 16. */
    maxImagesPerPost: number;
  };
  cache: {
    memory: { maxBytes: number; ttlMs: number };
    redis:
      | { kind: 'none' }
      | { kind: 'standalone'; url: string; ttlMs: number; readTimeoutMs: number; encoding: 'float32' | 'float16'; keyPrefix: string }
      | { kind: 'cluster'; nodes: { host: string; port: number }[]; ttlMs: number; readTimeoutMs: number; encoding: 'float32' | 'float16'; keyPrefix: string };
  };
  limits: {
    /** Most inputs in one `embed` call. Default 2048. */
    maxInputsPerRequest: number;
    /** Longest input text in bytes (UTF-8). Default 64 KiB. */
    maxInputBytes: number;
  };
  /** Time given to in-flight work at shutdown before the process exits anyway. Default 10 s. */
  shutdownGraceMs: number;
  /** Clients, quotas and cost attribution (src/accounting). */
  accounting: {
    /** JSON file listing clients and their hashed keys. Unset: one local development client, no auth. */
    clientsFile: string | undefined;
    /**
     * Redis holding quota buckets and the usage ledger, standalone or Cluster. The first that is set wins:
     * POLYRAY_QUOTA_REDIS_URL (standalone), POLYRAY_QUOTA_REDIS_CLUSTER_NODES (Cluster; setting both is an
     * error), then the cache's REDIS_URL (standalone) or REDIS_CLUSTER_NODES (Cluster). Default `none`:
     * buckets and books per replica.
     */
    redis: { kind: 'none' } | { kind: 'standalone'; url: string } | { kind: 'cluster'; nodes: { host: string; port: number }[] };
    /**
     * Prefix of every quota / ledger key (layout in src/accounting/keys.ts; must not contain `{}`).
     * Default `polyray:acct:v2:` (v1 was the layout without Cluster hash tags).
     */
    keyPrefix: string;
    /** When the quota Redis is unreachable: `open` = per-replica in-memory buckets, `closed` = refuse. Default open. */
    failureMode: 'open' | 'closed';
    /** Longest wait for a quota Redis command before it counts as unreachable. Default 200 ms. */
    redisTimeoutMs: number;
    /** Cost units of an item served from the memory tier. Default 0.01. */
    memoryHitCost: number;
    /** Cost units of an item served from the global (Redis) tier. Default 0.05. */
    globalHitCost: number;
    /** How often the usage ledger is flushed to Redis. Default 5000 ms. */
    ledgerFlushMs: number;
    /**
     * Bearer token `/metrics` requires (`Authorization: Bearer <token>`, Prometheus' `authorization`
     * scrape setting). Unset: `/metrics` is open — keep it off the public network then. Default unset.
     */
    metricsToken: string | undefined;
  };
  /** Request-stream sampling for the cache-policy simulator (src/policy, docs/CACHE-POLICY.md). */
  trace: {
    /** Fraction of cache keys sampled, by key hash, 0..1. Default 0.1. */
    sampleRate: number;
    /** Folder of rotated JSONL trace files; unset = none. Default `.cache/traces` without Redis (none under NODE_ENV=test). */
    dir: string | undefined;
    /** Size at which a trace file is rotated. Default 64 MiB. */
    fileMaxBytes: number;
    /** Trace files kept. Default 8. */
    fileKeep: number;
    /** Redis Stream receiving the trace; unset = none. Default `<redis key prefix>trace` with Redis (none under NODE_ENV=test). */
    redisStream: string | undefined;
    /** Approximate cap of the stream (`XADD MAXLEN ~`). Default 1,000,000. */
    redisMaxLen: number;
    /** Records buffered for the writers; beyond it records are dropped and counted. Default 65,536. */
    bufferMax: number;
    /** Flush period of that buffer. Default 1000 ms. */
    flushMs: number;
  };
  /** The live cache policy (src/policy/controller.ts). */
  policy: {
    /** Most recent trace records kept in memory for the live recommendation. Default 100,000. */
    windowRecords: number;
    /** How often the recommendation is recomputed. Default 60 s. */
    intervalMs: number;
    /** Period of the hit-rate time series of the dashboard. Default 10 s. */
    seriesIntervalMs: number;
    /** Apply recommended TTLs to new cache entries, within [minTtlMs, maxTtlMs]. Default false. */
    autoApply: boolean;
    /** Bounds of auto-applied TTLs. Default 60 s and 7 days. */
    minTtlMs: number;
    maxTtlMs: number;
    /** Prices of the cost model. */
    prices: CostPrices;
  };
}

type Env = Record<string, string | undefined>;
type FileConfig = Record<string, unknown>;

class ConfigReader {
  constructor(
    readonly env: Env,
    readonly file: FileConfig,
  ) {}

  raw(envName: string, fileKey: string): string | undefined {
    const e = this.env[envName];
    if (e !== undefined && e !== '') return e;
    const f = this.file[fileKey];
    if (f === undefined || f === null) return undefined;
    return Array.isArray(f) ? f.join(',') : String(f);
  }

  str(envName: string, fileKey: string, def: string): string {
    return this.raw(envName, fileKey) ?? def;
  }

  int(envName: string, fileKey: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
    const r = this.raw(envName, fileKey);
    if (r === undefined) return def;
    const n = Number(r);
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new TypeError(`Configuration ${envName} (file key "${fileKey}") must be an integer in [${min}, ${max}], received "${r}"`);
    }
    return n;
  }

  num(envName: string, fileKey: string, def: number, min: number, max = Number.MAX_VALUE): number {
    const r = this.raw(envName, fileKey);
    if (r === undefined) return def;
    const n = Number(r);
    if (!Number.isFinite(n) || n < min || n > max) {
      throw new TypeError(`Configuration ${envName} (file key "${fileKey}") must be a number in [${min}, ${max}], received "${r}"`);
    }
    return n;
  }

  bool(envName: string, fileKey: string, def: boolean): boolean {
    const r = this.raw(envName, fileKey);
    if (r === undefined) return def;
    if (/^(1|true|yes|on)$/i.test(r)) return true;
    if (/^(0|false|no|off)$/i.test(r)) return false;
    throw new TypeError(`Configuration ${envName} (file key "${fileKey}") must be true or false, received "${r}"`);
  }

  oneOf<T extends string>(envName: string, fileKey: string, def: T, allowed: readonly T[]): T {
    const r = this.raw(envName, fileKey);
    if (r === undefined) return def;
    if (!(allowed as readonly string[]).includes(r)) {
      throw new TypeError(`Configuration ${envName} (file key "${fileKey}") must be one of ${allowed.join(', ')}, received "${r}"`);
    }
    return r as T;
  }
}

function parseHostPort(s: string, what: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || port < 1 || port > 65535) throw new TypeError(`Configuration ${what} entries must look like host:port, received "${s}"`);
  return { host: m[1]!, port };
}

/**
 * Where quotas and the ledger live: the quota-specific settings first (standalone URL, then Cluster
 * seeds; both is an error), else the cache's global tier, else nowhere (per replica).
 */
function accountingRedis(r: ConfigReader, cache: PolyrayConfig['cache']['redis']): PolyrayConfig['accounting']['redis'] {
  const url = r.raw('POLYRAY_QUOTA_REDIS_URL', 'quotaRedisUrl');
  const nodes = r.raw('POLYRAY_QUOTA_REDIS_CLUSTER_NODES', 'quotaRedisClusterNodes');
  if (url && nodes) throw new TypeError('Configuration sets both POLYRAY_QUOTA_REDIS_URL and POLYRAY_QUOTA_REDIS_CLUSTER_NODES: choose standalone or Cluster for quotas');
  if (url) {
    if (!/^rediss?:\/\//.test(url)) throw new TypeError('Configuration POLYRAY_QUOTA_REDIS_URL must start with redis:// or rediss://');
    return { kind: 'standalone', url };
  }
  if (nodes) return { kind: 'cluster', nodes: nodes.split(',').map((s) => parseHostPort(s, 'POLYRAY_QUOTA_REDIS_CLUSTER_NODES')) };
  switch (cache.kind) {
    case 'none':
      return { kind: 'none' };
    case 'standalone':
      return { kind: 'standalone', url: cache.url };
    case 'cluster':
      return { kind: 'cluster', nodes: cache.nodes.map((n) => ({ ...n })) };
    default: {
      const never: never = cache;
      throw new TypeError(`unknown cache redis config ${JSON.stringify(never)}`);
    }
  }
}

/** Reads and validates the configuration. `env` defaults to `process.env`; tests pass their own. */
export function loadConfig(env: Env = process.env, overrides: DeepPartial<PolyrayConfig> = {}): PolyrayConfig {
  const filePath = env['POLYRAY_CONFIG'];
  let file: FileConfig = {};
  if (filePath) {
    try {
      file = JSON.parse(readFileSync(filePath, 'utf8')) as FileConfig;
    } catch (e) {
      throw new TypeError(`Configuration file POLYRAY_CONFIG="${filePath}" could not be read as JSON: ${(e as Error).message}`);
    }
  }
  const r = new ConfigReader(env, file);
  const nodeEnv = r.str('NODE_ENV', 'env', 'development');
  const workers = r.int('POLYRAY_WORKERS', 'workers', 1, 1, 64);
  const cores = availableParallelism();
  const niceness = r.int('POLYRAY_INFERENCE_NICE', 'inferenceNice', process.platform === 'linux' ? 10 : 0, 0, 19);
  const providers = r
    .str('POLYRAY_PROVIDERS', 'providers', 'cpu')
    .split(',')
    .map((p) => p.trim().toLowerCase())
    .filter(Boolean);
  for (const p of providers) {
    if (!(EXECUTION_PROVIDERS as readonly string[]).includes(p)) {
      throw new TypeError(`Configuration POLYRAY_PROVIDERS must list providers from ${EXECUTION_PROVIDERS.join(', ')}, received "${p}"`);
    }
  }
  const redisTtlMs = r.int('POLYRAY_REDIS_TTL_S', 'redisTtlSeconds', 7 * 24 * 3600, 1) * 1000;
  const readTimeoutMs = r.int('POLYRAY_REDIS_READ_TIMEOUT_MS', 'redisReadTimeoutMs', 50, 1, 60_000);
  const encoding = r.oneOf('POLYRAY_REDIS_ENCODING', 'redisEncoding', 'float32', ['float32', 'float16'] as const);
  const keyPrefix = r.str('POLYRAY_REDIS_KEY_PREFIX', 'redisKeyPrefix', 'polyray:v1:');
  const redisUrl = r.raw('REDIS_URL', 'redisUrl');
  const clusterNodes = r.raw('REDIS_CLUSTER_NODES', 'redisClusterNodes');
  let redis: PolyrayConfig['cache']['redis'] = { kind: 'none' };
  if (redisUrl && clusterNodes) {
    throw new TypeError('Configuration sets both REDIS_URL and REDIS_CLUSTER_NODES: choose standalone or Cluster');
  } else if (redisUrl) {
    if (!/^rediss?:\/\//.test(redisUrl)) throw new TypeError(`Configuration REDIS_URL must start with redis:// or rediss://, received "${redisUrl.replace(/\/\/[^@]*@/, '//***@')}"`);
    redis = { kind: 'standalone', url: redisUrl, ttlMs: redisTtlMs, readTimeoutMs, encoding, keyPrefix };
  } else if (clusterNodes) {
    redis = { kind: 'cluster', nodes: clusterNodes.split(',').map((s) => parseHostPort(s, 'REDIS_CLUSTER_NODES')), ttlMs: redisTtlMs, readTimeoutMs, encoding, keyPrefix };
  }

  const config: PolyrayConfig = {
    env: nodeEnv === 'production' ? 'production' : nodeEnv === 'test' ? 'test' : 'development',
    http: {
      host: r.str('HOST', 'host', '0.0.0.0'),
      port: r.int('PORT', 'port', 4000, 0, 65535),
      bodyLimitBytes: r.int('POLYRAY_BODY_LIMIT_BYTES', 'bodyLimitBytes', 16 * 1024 * 1024, 1024),
    },
    log: { level: r.oneOf('LOG_LEVEL', 'logLevel', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const) },
    models: {
      dir: path.resolve(r.str('POLYRAY_MODELS_DIR', 'modelsDir', 'models')),
      buildMissing: r.bool('POLYRAY_BUILD_MISSING', 'buildMissing', true),
      serve: r
        .str('POLYRAY_SERVE_MODELS', 'serveModels', '*')
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean),
      defaultPostModel: r.str('POLYRAY_DEFAULT_POST_MODEL', 'defaultPostModel', 'postray'),
    },
    inference: {
      workers,
      intraOpThreads: r.int('POLYRAY_INTRA_OP_THREADS', 'intraOpThreads', Math.max(1, Math.floor((niceness > 0 ? cores : cores - 1) / workers)), 1, 256),
      niceness,
      pipelineDepth: r.int('POLYRAY_PIPELINE_DEPTH', 'pipelineDepth', 1, 1, 8),
      allowSpinning: ((v) => (v === 'auto' ? v : r.bool('POLYRAY_ORT_SPINNING', 'ortSpinning', false)))(r.str('POLYRAY_ORT_SPINNING', 'ortSpinning', 'auto')),
      providers: providers as ExecutionProviderName[],
    },
    batching: {
      maxItems: r.int('POLYRAY_BATCH_MAX_ITEMS', 'batchMaxItems', 64, 1, 4096),
      maxTokens: r.int('POLYRAY_BATCH_MAX_TOKENS', 'batchMaxTokens', 1024, 1),
      acceleratorMaxTokens: r.int('POLYRAY_BATCH_MAX_TOKENS_ACCELERATOR', 'batchMaxTokensAccelerator', 16384, 1),
      maxWaitUs: r.int('POLYRAY_BATCH_MAX_WAIT_US', 'batchMaxWaitUs', 0, 0, 10_000_000),
      maxQueueItems: r.int('POLYRAY_QUEUE_MAX_ITEMS', 'queueMaxItems', 8192, 1),
      maxPixels: r.int('POLYRAY_BATCH_MAX_PIXELS', 'batchMaxPixels', 16 * 224 * 224, 1),
    },
    images: {
      fetchAllow: r
        .str('POLYRAY_IMAGE_FETCH_ALLOW', 'imageFetchAllow', '')
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
      caFile: ((f) => (f ? path.resolve(f) : undefined))(r.raw('POLYRAY_IMAGE_CA_FILE', 'imageCaFile')),
      maxBytes: r.int('POLYRAY_IMAGE_MAX_BYTES', 'imageMaxBytes', 10 * 1024 * 1024, 1),
      fetchTimeoutMs: r.int('POLYRAY_IMAGE_FETCH_TIMEOUT_MS', 'imageFetchTimeoutMs', 5000, 1, 600_000),
      maxRedirects: r.int('POLYRAY_IMAGE_MAX_REDIRECTS', 'imageMaxRedirects', 3, 0, 20),
      maxPixels: r.int('POLYRAY_IMAGE_MAX_PIXELS', 'imageMaxPixels', 40_000_000, 1),
      urlCacheTtlMs: r.int('POLYRAY_IMAGE_URL_CACHE_TTL_S', 'imageUrlCacheTtlSeconds', 300, 0) * 1000,
      urlCacheMaxEntries: r.int('POLYRAY_IMAGE_URL_CACHE_MAX', 'imageUrlCacheMax', 100_000, 1),
      maxImagesPerPost: r.int('POLYRAY_MAX_IMAGES_PER_POST', 'maxImagesPerPost', 16, 1, 1024),
    },
    cache: {
      memory: {
        maxBytes: r.int('POLYRAY_MEMORY_CACHE_MB', 'memoryCacheMb', 256, 1, 1 << 20) * 1024 * 1024,
        ttlMs: r.int('POLYRAY_MEMORY_CACHE_TTL_S', 'memoryCacheTtlSeconds', 3600, 0) * 1000,
      },
      redis,
    },
    limits: {
      maxInputsPerRequest: r.int('POLYRAY_MAX_INPUTS', 'maxInputs', 2048, 1, 1_000_000),
      maxInputBytes: r.int('POLYRAY_MAX_INPUT_BYTES', 'maxInputBytes', 64 * 1024, 1),
    },
    shutdownGraceMs: r.int('POLYRAY_SHUTDOWN_GRACE_MS', 'shutdownGraceMs', 10_000, 0),
    accounting: {
      clientsFile: ((f) => (f ? path.resolve(f) : undefined))(r.raw('POLYRAY_CLIENTS_FILE', 'clientsFile')),
      redis: accountingRedis(r, redis),
      keyPrefix: ((p) => {
        if (p.includes('{}')) throw new TypeError(`Configuration POLYRAY_QUOTA_KEY_PREFIX must not contain an empty hash tag "{}" (a client's keys would spread over Cluster slots), received "${p}"`);
        return p;
      })(r.str('POLYRAY_QUOTA_KEY_PREFIX', 'quotaKeyPrefix', 'polyray:acct:v2:')),
      failureMode: r.oneOf('POLYRAY_QUOTA_FAILURE_MODE', 'quotaFailureMode', 'open', ['open', 'closed'] as const),
      redisTimeoutMs: r.int('POLYRAY_QUOTA_REDIS_TIMEOUT_MS', 'quotaRedisTimeoutMs', 200, 1, 60_000),
      memoryHitCost: r.num('POLYRAY_COST_MEMORY_HIT', 'costMemoryHit', 0.01, 0),
      globalHitCost: r.num('POLYRAY_COST_GLOBAL_HIT', 'costGlobalHit', 0.05, 0),
      ledgerFlushMs: r.int('POLYRAY_LEDGER_FLUSH_MS', 'ledgerFlushMs', 5000, 10, 3_600_000),
      metricsToken: ((t) => {
        if (t !== undefined && t.length < 16) throw new TypeError('Configuration POLYRAY_METRICS_TOKEN must be at least 16 characters');
        return t;
      })(r.raw('POLYRAY_METRICS_TOKEN', 'metricsToken')),
    },
    trace: {
      sampleRate: r.num('POLYRAY_TRACE_SAMPLE_RATE', 'traceSampleRate', 0.1, 0, 1),
      dir: ((d) => (d === undefined ? (nodeEnv !== 'test' && redis.kind === 'none' ? path.resolve('.cache/traces') : undefined) : /^(off|none)$/i.test(d) ? undefined : path.resolve(d)))(r.raw('POLYRAY_TRACE_DIR', 'traceDir')),
      fileMaxBytes: r.int('POLYRAY_TRACE_FILE_MB', 'traceFileMb', 64, 1, 1 << 20) * 1024 * 1024,
      fileKeep: r.int('POLYRAY_TRACE_FILE_KEEP', 'traceFileKeep', 8, 1, 10_000),
      redisStream: ((k) => (k === undefined ? (nodeEnv !== 'test' && redis.kind !== 'none' ? `${keyPrefix}trace` : undefined) : /^(off|none)$/i.test(k) ? undefined : k))(r.raw('POLYRAY_TRACE_STREAM', 'traceStream')),
      redisMaxLen: r.int('POLYRAY_TRACE_STREAM_MAXLEN', 'traceStreamMaxLen', 1_000_000, 1),
      bufferMax: r.int('POLYRAY_TRACE_BUFFER', 'traceBuffer', 65_536, 1),
      flushMs: r.int('POLYRAY_TRACE_FLUSH_MS', 'traceFlushMs', 1000, 10, 3_600_000),
    },
    policy: {
      windowRecords: r.int('POLYRAY_POLICY_WINDOW', 'policyWindow', 100_000, 1, 10_000_000),
      intervalMs: r.int('POLYRAY_POLICY_INTERVAL_S', 'policyIntervalSeconds', 60, 1) * 1000,
      seriesIntervalMs: r.int('POLYRAY_POLICY_SERIES_S', 'policySeriesSeconds', 10, 1) * 1000,
      autoApply: r.bool('POLYRAY_POLICY_AUTO_APPLY', 'policyAutoApply', false),
      minTtlMs: r.int('POLYRAY_POLICY_MIN_TTL_S', 'policyMinTtlSeconds', 60, 1) * 1000,
      maxTtlMs: r.int('POLYRAY_POLICY_MAX_TTL_S', 'policyMaxTtlSeconds', 7 * 24 * 3600, 1) * 1000,
      prices: {
        computeWatts: r.num('POLYRAY_PRICE_COMPUTE_W', 'priceComputeWatts', DEFAULT_PRICES.computeWatts, 0),
        memoryWattsPerGiB: r.num('POLYRAY_PRICE_MEMORY_W_PER_GIB', 'priceMemoryWattsPerGiB', DEFAULT_PRICES.memoryWattsPerGiB, 0),
        globalWattsPerGiB: r.num('POLYRAY_PRICE_GLOBAL_W_PER_GIB', 'priceGlobalWattsPerGiB', DEFAULT_PRICES.globalWattsPerGiB, 0),
        memoryHitJoules: r.num('POLYRAY_PRICE_MEMORY_HIT_J', 'priceMemoryHitJoules', DEFAULT_PRICES.memoryHitJoules, 0),
        globalHitJoules: r.num('POLYRAY_PRICE_GLOBAL_HIT_J', 'priceGlobalHitJoules', DEFAULT_PRICES.globalHitJoules, 0),
        defaultComputeMs: DEFAULT_PRICES.defaultComputeMs,
      },
    },
  };
  const merged = deepMerge(config, overrides);
  if (merged.policy.minTtlMs > merged.policy.maxTtlMs) {
    throw new TypeError(`Configuration POLYRAY_POLICY_MIN_TTL_S (${merged.policy.minTtlMs / 1000}) must not exceed POLYRAY_POLICY_MAX_TTL_S (${merged.policy.maxTtlMs / 1000})`);
  }
  if (merged.limits.maxInputsPerRequest > merged.batching.maxQueueItems) {
    throw new TypeError(
      `Configuration POLYRAY_MAX_INPUTS (${merged.limits.maxInputsPerRequest}) must not exceed POLYRAY_QUEUE_MAX_ITEMS (${merged.batching.maxQueueItems}): one request could never be queued`,
    );
  }
  return merged;
}

export type DeepPartial<T> = { [K in keyof T]?: T[K] extends (infer U)[] ? U[] : T[K] extends object ? DeepPartial<T[K]> : T[K] };

function deepMerge<T>(base: T, over: DeepPartial<T>): T {
  if (over === undefined || over === null) return base;
  const out = { ...base } as Record<string, unknown>;
  for (const [k, v] of Object.entries(over as Record<string, unknown>)) {
    const b = (base as Record<string, unknown>)[k];
    if (v !== undefined && v !== null && typeof v === 'object' && !Array.isArray(v) && typeof b === 'object' && b !== null && !('kind' in v)) {
      out[k] = deepMerge(b, v as DeepPartial<typeof b>);
    } else if (v !== undefined) {
      out[k] = v;
    }
  }
  return out as T;
}
