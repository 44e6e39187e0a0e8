// Whether dist/ was built from the sources as they are now, and building it when not: `npm start` and the
// installed `polyray` command run compiled JavaScript (plain `node`), yet the README's first command must
// work on a fresh clone and after a `git pull`. The stamp is a hash of src/ (names, sizes, modification
// times) and of the build configuration, so an edit anywhere under src/ makes the build stale.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';

/** A hash of everything the build reads. */
export function sourceHash(root) {
  const h = createHash('sha256');
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else {
        const s = statSync(p);
        h.update(`${path.relative(root, p)}\0${s.size}\0${s.mtimeMs}\n`);
      }
    }
  };
  walk(path.join(root, 'src'));
  for (const f of ['tsconfig.json', 'tsconfig.build.json', 'package-lock.json']) if (existsSync(path.join(root, f))) h.update(readFileSync(path.join(root, f)));
  return h.digest('hex');
}

/** Builds dist/ unless it is current; returns whether it built. */
export function ensureBuilt(root, log = (s) => process.stderr.write(s)) {
  // An installed package or an image ships dist/ only: there is nothing to hash or build.
  if (!existsSync(path.join(root, 'src'))) return false;
  const stamp = path.join(root, 'dist', '.build-stamp');
  const current = existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === sourceHash(root);
  if (current) return false;
  if (!existsSync(path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'))) {
    throw new Error(
      'dist/ is missing or older than src/, and TypeScript is not installed to build it: run `npm install` (with dev dependencies), then `npm run build`',
    );
  }
  log(existsSync(stamp) ? 'src/ changed since the last build: building dist/ …\n' : 'no build yet: building dist/ (about a minute on 2 cores) …\n');
  execFileSync(process.execPath, [path.join(root, 'scripts', 'build.mjs')], { cwd: root, stdio: 'inherit' });
  return true;
}
