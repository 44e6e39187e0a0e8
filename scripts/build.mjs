// `npm run build`: compiles src/ to dist/ (tsc with tsconfig.build.json, relative `.ts` imports rewritten
// to `.js`), copies the files tsc does not emit (the worker bootstrap, the ONNX subset schema), and writes
// dist/.build-stamp with a hash of what it was built from, so `npm start` and the `polyray` command can
// tell a stale build (scripts/ensure-build.mjs). Plain JavaScript: it must run before anything is built.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sourceHash } from './ensure-build.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const started = Date.now();
rmSync(dist, { recursive: true, force: true });
execFileSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(root, 'tsconfig.build.json')], {
  cwd: root,
  stdio: 'inherit',
});
for (const f of ['runtime/worker-entry.mjs', 'models/onnx-subset.proto']) {
  mkdirSync(path.dirname(path.join(dist, f)), { recursive: true });
  copyFileSync(path.join(root, 'src', f), path.join(dist, f));
}
writeFileSync(path.join(dist, '.build-stamp'), `${sourceHash(root)}\n`);
process.stderr.write(`built dist/ in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
