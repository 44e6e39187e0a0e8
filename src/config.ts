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
    /** Model `Post.embedding` uses when the query names none. Default `text-glove`. */
    defaultPostModel: string;
  };
  inference: {
    /** Worker threads, each holding a session per model. Default 1. */
    workers: number;
    /** ONNX Runtime intra-op threads per worker. Default: cores / workers, at least 1. */
    intraOpThreads: number;
    /** Execution providers to try in order; CPU is always the last resort. Default ["cpu"]. */
    providers: ExecutionProviderName[];
  };
  batching: {
    /** Most items in one inference run. Default 64. */
    maxItems: number;
    /** Most padded tokens (items × longest sequence) in one run. Default 16384. */
    maxTokens: number;
    /** Longest time the first queued item waits for company, in microseconds. Default 2000. */
    maxWaitUs: number;
    /** Most items waiting per model; beyond it requests fail with OVERLOADED. Default 8192. */
    maxQueueItems: number;
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
      defaultPostModel: r.str('POLYRAY_DEFAULT_POST_MODEL', 'defaultPostModel', 'text-glove'),
    },
    inference: {
      workers,
      intraOpThreads: r.int('POLYRAY_INTRA_OP_THREADS', 'intraOpThreads', Math.max(1, Math.floor(cores / workers)), 1, 256),
      providers: providers as ExecutionProviderName[],
    },
    batching: {
      maxItems: r.int('POLYRAY_BATCH_MAX_ITEMS', 'batchMaxItems', 64, 1, 4096),
      maxTokens: r.int('POLYRAY_BATCH_MAX_TOKENS', 'batchMaxTokens', 16384, 1),
      maxWaitUs: r.int('POLYRAY_BATCH_MAX_WAIT_US', 'batchMaxWaitUs', 2000, 0, 10_000_000),
      maxQueueItems: r.int('POLYRAY_QUEUE_MAX_ITEMS', 'queueMaxItems', 8192, 1),
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
  };
  const merged = deepMerge(config, overrides);
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
