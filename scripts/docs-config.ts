/**
 * `npm run docs:config`: rewrites the configuration tables of README.md from the schema (src/config/docs.ts).
 * `--check` writes nothing and exits 1 when the README is out of date.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { renderReadme } from '../src/config/docs.ts';

const README = path.resolve(import.meta.dirname, '..', 'README.md');
const before = readFileSync(README, 'utf8');
const after = renderReadme(before);
if (process.argv.includes('--check')) {
  if (after !== before) {
    process.stderr.write('README.md configuration tables differ from the schema: run `npm run docs:config`\n');
    process.exitCode = 1;
  }
} else if (after !== before) {
  writeFileSync(README, after);
  process.stdout.write('README.md: configuration tables rewritten\n');
} else {
  process.stdout.write('README.md: configuration tables up to date\n');
}
