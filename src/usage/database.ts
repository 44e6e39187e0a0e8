/**
 * The usage database: a `pg` pool with deadlines, and the migrations (db/migrations, plain SQL files
 * applied by node-pg-migrate, recorded in `polyray_migrations`). `pg` is the most used PostgreSQL driver
 * for Node (pure JS, pooled, parameterised queries); node-pg-migrate is a maintained migration runner that
 * takes versioned SQL files as they are and holds an advisory lock, so replicas starting together apply
 * each migration once.
 */
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { runner } from 'node-pg-migrate';
import type { Logger } from '../log.ts';

export const MIGRATIONS_DIR = fileURLToPath(new URL('../../db/migrations', import.meta.url));
export const MIGRATIONS_TABLE = 'polyray_migrations';

/** What the books need of a database: a query, and a client of their own for a transaction. */
export interface UsageDatabase {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  connect(): Promise<pg.PoolClient>;
  end(): Promise<void>;
}

/** A pool whose statements and connection attempts give up after `timeoutMs`. */
export function createUsageDatabase(url: string, timeoutMs: number, logger: Logger): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: 4,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
    idleTimeoutMillis: 10_000,
    application_name: 'polyray',
  });
  let warned = false;
  // An idle client's connection that breaks (a database restart) is reported here; the pool replaces it.
  pool.on('error', (e) => {
    if (!warned) logger.warn({ reason: e.message }, 'usage database connection lost; reconnecting on next use');
    warned = true;
  });
  pool.on('connect', () => {
    warned = false;
  });
  return pool;
}

/** Applies every migration not yet applied; returns the names applied now. Waits for another replica's run. */
export async function migrateUsageDatabase(url: string, logger: Logger): Promise<string[]> {
  const applied = await runner({
    databaseUrl: url,
    dir: MIGRATIONS_DIR,
    migrationsTable: MIGRATIONS_TABLE,
    direction: 'up',
    checkOrder: true,
    advisoryLockMode: 'wait',
    logger: {
      debug: () => undefined,
      info: (msg: string) => logger.debug({ migration: msg }, 'usage database migration'),
      warn: (msg: string) => logger.warn({ migration: msg }, 'usage database migration'),
      error: (msg: string) => logger.error({ migration: msg }, 'usage database migration'),
    },
  });
  return applied.map((m) => m.name);
}
