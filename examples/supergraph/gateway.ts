/**
 * A gateway for the example where the Apollo Router binary is not at hand: @apollo/gateway serving the
 * composed supergraph on GATEWAY_PORT (default 4100) and forwarding each caller's API key to the subgraphs.
 * `npx tsx examples/supergraph/gateway.ts supergraph.graphql`.
 */
import { readFileSync } from 'node:fs';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { ApolloGateway, RemoteGraphQLDataSource } from '@apollo/gateway';

interface Ctx {
  authorization?: string | undefined;
}

export async function startGateway(supergraphSdl: string, port: number): Promise<{ url: string; stop: () => Promise<void> }> {
  const gateway = new ApolloGateway({
    supergraphSdl,
    buildService: ({ url }) =>
      new RemoteGraphQLDataSource<Ctx>({
        url,
        willSendRequest({ request, context }) {
          if (context.authorization) request.http?.headers.set('authorization', context.authorization);
        },
      }),
  });
  const server = new ApolloServer<Ctx>({ gateway });
  const { url } = await startStandaloneServer(server, {
    listen: { host: '127.0.0.1', port },
    context: async ({ req }) => ({ authorization: req.headers.authorization }),
  });
  return { url, stop: () => server.stop() };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2] ?? 'supergraph.graphql';
  const { url } = await startGateway(readFileSync(file, 'utf8'), Number(process.env['GATEWAY_PORT'] ?? 4100));
  process.stdout.write(`gateway at ${url}\n`);
}
