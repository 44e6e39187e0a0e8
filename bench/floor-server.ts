/**
 * The floor of the hit path (issue 27): a bare node:http server answering Polyray's `_entities` request
 * shape from a Map, run as a child process by bench/hit-bench.ts. No GraphQL, no framework, no cache tiers,
 * no accounting: read the body, parse the JSON, look every representation's text up, write the reply in
 * the shape Polyray writes (`base64` or `vector` per entity, chosen by the query text).
 *
 *   POST /graphql   {query, variables: {r: [{__typename, id, text}, …]}}
 *   PUT  /vectors   {text: [float, …], …} fills the Map (the bench copies Polyray's vectors in)
 *   GET  /readyz    200
 */
import http from 'node:http';

const port = Number(process.env.PORT ?? 0);
const vectors = new Map<string, Float32Array>();

function base64(v: Float32Array): string {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
}

function read(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const server = http.createServer(async (req, res) => {
  if (req.method === 'GET' && req.url === '/readyz') {
    res.writeHead(200).end('ok');
    return;
  }
  const body = await read(req);
  if (req.method === 'PUT' && req.url === '/vectors') {
    for (const [text, v] of Object.entries(JSON.parse(body) as Record<string, number[]>)) vectors.set(text, Float32Array.from(v));
    res.writeHead(204).end();
    return;
  }
  const { query, variables } = JSON.parse(body) as { query: string; variables: { r: { text: string }[] } };
  const floats = query.includes('vector');
  const entities = variables.r.map((p) => {
    const v = vectors.get(p.text);
    if (!v) return { embedding: null };
    return { embedding: floats ? { vector: Array.from(v) } : { base64: base64(v) } };
  });
  const out = JSON.stringify({ data: { _entities: entities } });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) }).end(out);
});
server.listen(port, '127.0.0.1');
