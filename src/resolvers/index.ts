/**
 * The subgraph schema: SDL files from `schema/` plus the resolvers of this folder.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { parse, type DocumentNode } from 'graphql';
import { buildSubgraphSchema } from '@apollo/subgraph';
import type { GraphQLResolverMap } from '@apollo/subgraph/dist/schema-helper/resolverMap.js';
import type { GraphQLSchema } from 'graphql';
import { adminResolvers } from './admin.ts';
import { embeddingResolvers } from './embedding.ts';
import { postResolvers } from './post.ts';
import { queryResolvers } from './query.ts';
import { usageResolvers } from './usage.ts';
import { policyResolvers } from './policy.ts';
import { applyDemandControl, type DemandControlOptions } from './demand-control.ts';

export const SCHEMA_DIR = fileURLToPath(new URL('../../schema/', import.meta.url));

/**
 * What the served SDL takes from the configuration (src/resolvers/demand-control.ts): POLYRAY_MAX_INPUTS as
 * `embed`'s `@listSize(assumedSize:)` (the file says 2048, the default), and the `@cost` weights of the
 * served models, so that a gateway's demand control estimates no less than the service may really reserve.
 */
export type SchemaOptions = DemandControlOptions;

/** All SDL files of `schema/`, in name order, as one document. */
export function loadTypeDefs(dir: string = SCHEMA_DIR, options: SchemaOptions = {}): DocumentNode {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.graphql'))
    .sort();
  return applyDemandControl(parse(files.map((f) => readFileSync(path.join(dir, f), 'utf8')).join('\n')), options);
}

export function buildSchema(options: SchemaOptions = {}): GraphQLSchema {
  const resolvers = {
    ...queryResolvers,
    ...postResolvers,
    ...embeddingResolvers,
    Query: { ...queryResolvers.Query, ...usageResolvers.Query, ...policyResolvers.Query },
    ...adminResolvers,
  } as unknown as GraphQLResolverMap<unknown>;
  return buildSubgraphSchema([{ typeDefs: loadTypeDefs(SCHEMA_DIR, options), resolvers }]);
}
