/**
 * A GraphQL explorer that works offline: GraphiQL served from this process at `/graphiql` (its bundle,
 * React and the stylesheet from node_modules, the page and its script from `explorer/`), for when Apollo
 * Sandbox — a page loaded from Apollo's CDN — cannot load (no internet, a locked-down network). The
 * headers tab starts with `authorization: Bearer …` ready to fill; `?key=` fills it, `?query=` sets the
 * query. `/` links to Sandbox (`/graphql` in a browser), GraphiQL, the dashboard and the OpenAPI document.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';

export const EXPLORER_DIR = fileURLToPath(new URL('../../explorer/', import.meta.url));

const require = createRequire(import.meta.url);
const packageDir = (name: string): string => path.dirname(require.resolve(`${name}/package.json`));

/** A Map, not an object: `constructor` or `__proto__` must be unknown names, not a prototype's members. */
const ASSETS = new Map<string, { file: () => string; type: string }>([
  ['explorer.js', { file: () => path.join(EXPLORER_DIR, 'explorer.js'), type: 'text/javascript; charset=utf-8' }],
  ['graphiql.min.js', { file: () => path.join(packageDir('graphiql'), 'graphiql.min.js'), type: 'text/javascript; charset=utf-8' }],
  ['graphiql.min.css', { file: () => path.join(packageDir('graphiql'), 'graphiql.min.css'), type: 'text/css; charset=utf-8' }],
  ['react.production.min.js', { file: () => path.join(packageDir('react'), 'umd', 'react.production.min.js'), type: 'text/javascript; charset=utf-8' }],
  [
    'react-dom.production.min.js',
    { file: () => path.join(packageDir('react-dom'), 'umd', 'react-dom.production.min.js'), type: 'text/javascript; charset=utf-8' },
  ],
]);

const LANDING = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Polyray</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}a{color:#3b6fd8}</style></head>
<body><h1>Polyray</h1><p>Embeddings as a GraphQL subgraph, with OpenAI- and TEI-compatible REST routes.</p><ul>
<li><a href="/graphql">Apollo Sandbox</a> (loads from Apollo's CDN; outside production)</li>
<li><a href="/graphiql">GraphiQL</a> (served from this process: works offline)</li>
<li><a href="/dashboard">Cache-policy dashboard</a> (admin key: <code>?key=…</code>)</li>
<li><a href="/openapi.json">OpenAPI document</a> of the REST routes</li>
</ul></body></html>
`;

export function registerExplorerRoutes(app: FastifyInstance): void {
  const cache = new Map<string, Buffer>();
  app.get('/', async (_req, reply) => reply.header('content-type', 'text/html; charset=utf-8').header('cache-control', 'no-cache').send(LANDING));
  app.get('/graphiql', async (_req, reply) =>
    reply
      .header('content-type', 'text/html; charset=utf-8')
      .header('cache-control', 'no-cache')
      .send(await readFile(path.join(EXPLORER_DIR, 'index.html'))),
  );
  app.get<{ Params: { name: string } }>('/graphiql/assets/:name', async (req, reply) => {
    const a = ASSETS.get(req.params.name);
    if (!a) return reply.code(404).send({ error: 'NOT_FOUND' });
    let body = cache.get(req.params.name);
    if (!body) {
      body = await readFile(a.file());
      cache.set(req.params.name, body);
    }
    return reply.header('content-type', a.type).header('cache-control', 'public, max-age=3600').send(body);
  });
}
