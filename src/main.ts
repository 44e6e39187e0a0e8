/**
 * Process entry for `npm start`: read config, start the server, stop it gracefully on SIGTERM/SIGINT.
 */
import { loadConfig } from './config/index.ts';
import { createLogger } from './log.ts';
import { PolyrayServer } from './server.ts';

export async function main(): Promise<void> {
  const config = loadConfig();
  const logger = createLogger(config.log.level);
  const server = new PolyrayServer(config, { logger });
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    // The last resort, if stop() itself hangs: flush the books (bounded), then exit.
    const force = setTimeout(() => {
      logger.error('shutdown took too long; flushing the usage books and exiting');
      const bounded = new Promise((r) => setTimeout(r, 2000).unref());
      void Promise.race([server.flushBooks().catch(() => undefined), bounded]).finally(() => process.exit(1));
    }, config.shutdownGraceMs + 5000);
    force.unref();
    server.stop().then(
      () => process.exit(0),
      (e: unknown) => {
        logger.error({ err: (e as Error).message }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  await server.start();
  if (config.cache.redis.kind === 'none') logger.info('no REDIS_URL or REDIS_CLUSTER_NODES: running with the in-process memory cache only');
  try {
    await server.ready;
    logger.info({ graphql: `http://localhost:${config.http.port}/graphql` }, 'ready');
  } catch {
    logger.error('no model could be loaded; /readyz stays unready. See the errors above.');
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
