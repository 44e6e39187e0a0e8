/**
 * Starts a real Polyray server (real ONNX Runtime workers, real HTTP) with small settings for a test.
 * Models come from the project's `models/` folder, built once (the build is idempotent).
 */
import path from 'node:path';
import { loadConfig, type DeepPartial, type PolyrayConfig } from '../../src/config/index.ts';
import { createLogger } from '../../src/log.ts';
import { PolyrayServer, type PolyrayDeps } from '../../src/server.ts';

export const MODELS_DIR = path.resolve('models');

export interface TestServer {
  server: PolyrayServer;
  url: string;
  gql<T = Record<string, unknown>>(query: string, variables?: Record<string, unknown>, headers?: Record<string, string>): Promise<GqlResponse<T>>;
  stop(): Promise<void>;
}

export interface GqlResponse<T> {
  status: number;
  data?: T;
  errors?: { message: string; path?: (string | number)[]; extensions?: Record<string, unknown> }[];
  extensions?: Record<string, unknown>;
}

export async function startPolyray(overrides: DeepPartial<PolyrayConfig> = {}, deps: PolyrayDeps = {}): Promise<TestServer> {
  const config = loadConfig({ NODE_ENV: 'test', POLYRAY_MODELS_DIR: MODELS_DIR }, {
    http: { host: '127.0.0.1', port: 0 },
    log: { level: 'silent' },
    ...overrides,
    // Tests serve the models the default post model needs unless they ask for others: every model a
    // server loads is a session per worker, and the transformer models make start-up slow.
    models: { serve: ['text-glove', 'image-mobilenet', 'head-nsfw'], ...(overrides.models ?? {}) },
  } as DeepPartial<PolyrayConfig>);
  const server = new PolyrayServer(config, { logger: createLogger(config.log.level), ...deps });
  const url = await server.start();
  try {
    await server.ready;
  } catch (e) {
    // A server that failed to load still listens and holds workers: stop it so the test process can exit.
    await server.stop();
    throw e;
  }
  return {
    server,
    url,
    gql: async <T>(query: string, variables: Record<string, unknown> = {}, headers: Record<string, string> = {}) => {
      const res = await fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ query, variables }),
      });
      const body = (await res.json()) as GqlResponse<T>;
      return { ...body, status: res.status };
    },
    stop: () => server.stop(),
  };
}

export function cosine(a: readonly number[], b: readonly number[]): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

export function norm(a: readonly number[]): number {
  return Math.sqrt(a.reduce((s, x) => s + x * x, 0));
}
