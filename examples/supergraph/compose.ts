/**
 * Composes the supergraph the way `rover supergraph compose --config supergraph.yaml` does, with
 * @apollo/composition (where Rover cannot be downloaded): `npx tsx examples/supergraph/compose.ts > supergraph.graphql`.
 * Reads the subgraphs' schema files and routing URLs from supergraph.yaml.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { composeServices } from '@apollo/composition';
import { parse as parseGraphql } from 'graphql';
import { parse as parseYaml } from 'yaml';

const HERE = path.dirname(fileURLToPath(import.meta.url));

interface SupergraphConfig {
  subgraphs: Record<string, { routing_url: string; schema: { file: string } }>;
}

/**
 * The supergraph SDL; `urls` overrides routing URLs by subgraph name (tests bind free ports), `files` schema files
 * by subgraph name (a test prints Polyray's SDL to a file of its own).
 */
export function compose(urls: Record<string, string> = {}, configFile = path.join(HERE, 'supergraph.yaml'), files: Record<string, string> = {}): string {
  const config = parseYaml(readFileSync(configFile, 'utf8')) as SupergraphConfig;
  const result = composeServices(
    Object.entries(config.subgraphs).map(([name, s]) => ({
      name,
      url: urls[name] ?? s.routing_url,
      typeDefs: parseGraphql(readFileSync(files[name] ?? path.resolve(path.dirname(configFile), s.schema.file), 'utf8')),
    })),
  );
  if (result.errors) throw new Error(`composition failed:\n${result.errors.map((e) => e.message).join('\n')}`);
  return result.supergraphSdl;
}

if (import.meta.url === `file://${process.argv[1]}`) process.stdout.write(`${compose()}\n`);
