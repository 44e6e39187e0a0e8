// `npm start`: builds dist/ when it is missing or stale, then runs the service as plain JavaScript
// (`node dist/main.js`, no TypeScript loader in production).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureBuilt } from './ensure-build.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
ensureBuilt(root);
await import(new URL('../dist/main.js', import.meta.url).href);
