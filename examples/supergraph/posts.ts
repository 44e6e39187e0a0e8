/**
 * The example's posts subgraph (examples/supergraph/README.md): three posts in memory, served by Apollo
 * Server on POSTS_PORT (default 4001). `npx tsx examples/supergraph/posts.ts`.
 */
import { readFileSync } from 'node:fs';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { parse } from 'graphql';

export const POSTS = [
  { id: '1', text: 'The cat sat on the mat.', imageUrls: [] as string[] },
  { id: '2', text: 'A kitten slept on the rug.', imageUrls: [] as string[] },
  { id: '3', text: 'Interest rates rose again.', imageUrls: [] as string[] },
];

/**
 * The longest page `posts` returns: the longest list of `Post` entities the gateway asks Polyray about in one
 * fetch: gateway.config.ts `ENTITIES_PER_FETCH`, router.yaml `list_size`.
 */
export const MAX_PAGE = 100;

export async function startPosts(port: number): Promise<{ url: string; stop: () => Promise<void> }> {
  const byId = new Map(POSTS.map((p) => [p.id, p]));
  const server = new ApolloServer({
    schema: buildSubgraphSchema({
      typeDefs: parse(readFileSync(new URL('./posts.graphql', import.meta.url), 'utf8')),
      resolvers: {
        Query: { posts: (_: unknown, a: { first?: number | null }) => POSTS.slice(0, Math.min(a.first ?? MAX_PAGE, MAX_PAGE)) },
        Post: { __resolveReference: (ref: { id: string }) => byId.get(ref.id) ?? null },
      },
    }),
  });
  const { url } = await startStandaloneServer(server, { listen: { host: '127.0.0.1', port } });
  return { url, stop: () => server.stop() };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { url } = await startPosts(Number(process.env['POSTS_PORT'] ?? 4001));
  process.stdout.write(`posts subgraph at ${url}\n`);
}
