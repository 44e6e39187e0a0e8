/**
 * A gateway for the example where the Apollo Router binary is not at hand: @apollo/gateway serving the
 * composed supergraph on GATEWAY_PORT (default 4100) and forwarding each caller's API key and W3C trace context to the subgraphs.
 * `npx tsx examples/supergraph/gateway.ts supergraph.graphql`.
 */
import { readFileSync } from 'node:fs';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { ApolloGateway, RemoteGraphQLDataSource } from '@apollo/gateway';

interface Ctx {
  authorization?: string | undefined;
  /** W3C trace context of the caller, passed on as the router's `propagation: trace_context` does. */
  traceparent?: string | undefined;
  tracestate?: string | undefined;
}

export async function startGateway(supergraphSdl: string, port: number): Promise<{ url: string; stop: () => Promise<void> }> {
  const gateway = new ApolloGateway({
    supergraphSdl,
    buildService: ({ url }) =>
      new RemoteGraphQLDataSource<Ctx>({
        url,
        willSendRequest({ request, context }) {
          if (context.authorization) request.http?.headers.set('authorization', context.authorization);
          if (context.traceparent) request.http?.headers.set('traceparent', context.traceparent);
          if (context.tracestate) request.http?.headers.set('tracestate', context.tracestate);
        },
      }),
  });
  const server = new ApolloServer<Ctx>({ gateway });
  const { url } = await startStandaloneServer(server, {
    listen: { host: '127.0.0.1', port },
    context: async ({ req }) => ({
      authorization: req.headers.authorization,
      traceparent: header(req.headers.traceparent),
      tracestate: header(req.headers.tracestate),
    }),
  });
  return { url, stop: () => server.stop() };
}

const header = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2] ?? 'supergraph.graphql';
  const { url } = await startGateway(readFileSync(file, 'utf8'), Number(process.env['GATEWAY_PORT'] ?? 4100));
  process.stdout.write(`gateway at ${url}\n`);
}
