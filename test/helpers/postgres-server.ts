/**
 * A PostgreSQL server of a test's own on a free loopback port (initdb + pg_ctl, trust auth, fsync off),
 * for tests that stop and start the database. As root, the server runs as the `postgres` user (initdb
 * refuses root). Stopped servers' folders are removed by `stop()`; every server is also stopped when the
 * test process exits.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './redis-server.ts';

const run = promisify(execFile);

export interface PostgresServerHandle {
  readonly port: number;
  /** `postgres://polyray@127.0.0.1:<port>/<database>` */
  url(database?: string): string;
  /** Creates a database and returns its URL. */
  createDatabase(name: string): Promise<string>;
  /** Stops the server (fast: open transactions are rolled back). */
  halt(): Promise<void>;
  /** Starts it again on the same port. */
  resume(): Promise<void>;
  /** Stops it and removes its folder. Idempotent. */
  stop(): Promise<void>;
}

const live = new Set<string>();

async function asOwner(args: string[]): Promise<void> {
  const [cmd, ...rest] = args;
  if (process.getuid?.() === 0) await run('runuser', ['-u', 'postgres', '--', cmd!, ...rest]);
  else await run(cmd!, rest);
}

async function pgCtl(dir: string, port: number, action: 'start' | 'stop'): Promise<void> {
  if (action === 'start') {
    await asOwner(['pg_ctl', '-D', dir, '-o', `-p ${port} -k '' -c listen_addresses=127.0.0.1 -c fsync=off`, '-l', join(dir, 'log'), '-w', 'start']);
  } else {
    await asOwner(['pg_ctl', '-D', dir, '-m', 'fast', '-w', 'stop']);
  }
}

process.once('exit', () => {
  for (const dir of live) {
    try {
      // Synchronous on exit: the server must not outlive the test.
      const asRoot = process.getuid?.() === 0;
      execFileSync(asRoot ? 'runuser' : 'pg_ctl', [...(asRoot ? ['-u', 'postgres', '--', 'pg_ctl'] : []), '-D', dir, '-m', 'immediate', 'stop'], {
        stdio: 'ignore',
      });
    } catch {
      // gone already
    }
  }
});

export async function startPostgresServer(): Promise<PostgresServerHandle> {
  const parent = await mkdtemp(join(tmpdir(), 'polyray-pg-'));
  await chmod(parent, 0o755);
  const dir = join(parent, 'data');
  if (process.getuid?.() === 0) {
    await run('install', ['-d', '-o', 'postgres', '-m', '700', dir]);
  }
  await asOwner(['initdb', '-D', dir, '-A', 'trust', '-U', 'polyray', '--no-sync', '-E', 'UTF8']);
  const port = await freePort();
  await pgCtl(dir, port, 'start');
  live.add(dir);
  let running = true;
  const url = (database = 'postgres'): string => `postgres://polyray@127.0.0.1:${port}/${database}`;
  return {
    port,
    url,
    async createDatabase(name) {
      const c = new pg.Client({ connectionString: url() });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE "${name.replaceAll('"', '')}"`);
      } finally {
        await c.end();
      }
      return url(name);
    },
    async halt() {
      if (!running) return;
      await pgCtl(dir, port, 'stop');
      running = false;
    },
    async resume() {
      if (running) return;
      await pgCtl(dir, port, 'start');
      running = true;
    },
    async stop() {
      if (running) await pgCtl(dir, port, 'stop').catch(() => undefined);
      running = false;
      live.delete(dir);
      await rm(parent, { recursive: true, force: true });
    },
  };
}
