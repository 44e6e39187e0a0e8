/**
 * A small `posts` subgraph for federation tests: it owns Post.id, text and imageUrls, as a product's
 * own subgraph would. Served over real HTTP.
 */
import { readFileSync } from 'node:fs';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { parse } from 'graphql';

/** The example supergraph's posts subgraph (examples/supergraph/posts.graphql): one SDL for both. */
export const POSTS_SDL = readFileSync(new URL('../../examples/supergraph/posts.graphql', import.meta.url), 'utf8');

export interface Post {
  id: string;
  text: string | null;
  imageUrls: string[];
}

export async function startPostsSubgraph(posts: Post[]): Promise<{ url: string; stop: () => Promise<void> }> {
  const byId = new Map(posts.map((p) => [p.id, p]));
  const server = new ApolloServer({
    schema: buildSubgraphSchema({
      typeDefs: parse(POSTS_SDL),
      resolvers: {
        Query: { posts: (_: unknown, a: { first?: number }) => posts.slice(0, a.first ?? posts.length) },
        Post: { __resolveReference: (ref: { id: string }) => byId.get(ref.id) ?? null },
      },
    }),
  });
  const { url } = await startStandaloneServer(server, { listen: { host: '127.0.0.1', port: 0 } });
  return { url, stop: () => server.stop() };
}
