/**
 * Hive Gateway where its CLI is not installed: the gateway runtime (npm @graphql-hive/gateway-runtime) serving
 * the composed supergraph with gateway.config.ts on GATEWAY_PORT (default 4100).
 * `npx tsx examples/supergraph/hive-gateway.ts supergraph.graphql`.
 *
 * The runtime loads each subgraph's transport from `@graphql-mesh/transport-<kind>`, which the CLI brings and
 * the runtime alone does not: `httpTransport` is what that package does for `http` subgraphs, an executor of
 * @graphql-tools/executor-http (a dependency of the runtime) over the gateway's fetch, whose hooks add the
 * propagated headers.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createGatewayRuntime, type GatewayConfigBase } from '@graphql-hive/gateway-runtime';
import { buildHTTPExecutor } from '@graphql-tools/executor-http';
import { gatewayConfig } from './gateway.config.ts';

type Config = GatewayConfigBase<Record<string, unknown>>;

const transports: NonNullable<Config['transports']> = {
  http: {
    getSubgraphExecutor: ({ transportEntry, fetch }) =>
      buildHTTPExecutor({ endpoint: transportEntry.location ?? '', headers: Object.fromEntries(transportEntry.headers ?? []), ...(fetch ? { fetch } : {}) }),
  },
};

export async function startHiveGateway(
  supergraphSdl: string,
  port: number,
  config: Config = gatewayConfig,
): Promise<{ url: string; stop: () => Promise<void> }> {
  const runtime = createGatewayRuntime({ logging: 'warn', ...config, supergraph: supergraphSdl, transports });
  const server = createServer(runtime);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/graphql`;
  return {
    url,
    stop: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await runtime.dispose();
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2] ?? 'supergraph.graphql';
  const { url } = await startHiveGateway(readFileSync(file, 'utf8'), Number(process.env['GATEWAY_PORT'] ?? 4100));
  process.stdout.write(`Hive Gateway at ${url}\n`);
}
