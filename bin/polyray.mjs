#!/usr/bin/env node
// The installed `polyray` command: the compiled CLI (dist/cli.js), built first when dist/ is missing or
// older than src/ (in a source checkout). From source without a build: `npx tsx bin/polyray.ts`.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureBuilt } from '../scripts/ensure-build.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
ensureBuilt(root);
await import(new URL('../dist/cli.js', import.meta.url).href);
