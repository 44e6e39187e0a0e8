/**
 * No import cycle in src/, bench/ or bin/ (what `npm run check:cycles` checks, through dpdm's API).
 * Type-only imports count: a cycle of types is still two modules that cannot be read one at a time.
 * A fixture with a known cycle proves the checker resolves our `.ts` import specifiers, so an empty
 * answer means "no cycle", not "no edges found".
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseCircular, parseDependencyTree } from 'dpdm';

/** The globs of `npm run check:cycles` in package.json. */
const SOURCES = ['src/**/*.{ts,mjs}', 'bench/**/*.{ts,mjs}', 'bin/**/*.ts'];
const ROOT = fileURLToPath(new URL('..', import.meta.url));

async function cyclesIn(cwd: string, entries: string[]): Promise<{ cycles: string[][]; unresolved: string[] }> {
  const tree = await parseDependencyTree(entries, { cwd, context: cwd, transform: false, skipDynamicImports: false });
  const unresolved = Object.values(tree)
    .flatMap((deps) => deps ?? [])
    .filter((d) => d.request.startsWith('.') && d.id === null)
    .map((d) => `${d.issuer} → ${d.request}`);
  return { cycles: parseCircular(tree), unresolved };
}

test('the checker sees a cycle made of .ts specifiers and type-only imports', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'polyray-cycles-'));
  try {
    await writeFile(path.join(dir, 'a.ts'), "import { b } from './b.ts';\nexport interface A { n: number }\nexport const a = () => b;\n");
    await writeFile(path.join(dir, 'b.ts'), "import type { A } from './a.ts';\nexport const b: A = { n: 1 };\n");
    const { cycles, unresolved } = await cyclesIn(dir, ['*.ts']);
    assert.deepEqual(unresolved, []);
    assert.equal(cycles.length, 1, JSON.stringify(cycles));
    assert.deepEqual([...cycles[0]!].sort(), ['a.ts', 'b.ts']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('src/, bench/ and bin/ have no import cycle', async () => {
  const { cycles, unresolved } = await cyclesIn(ROOT, SOURCES);
  assert.deepEqual(unresolved, [], 'relative imports the checker could not resolve (it would miss their cycles)');
  assert.deepEqual(
    cycles.map((c) => c.join(' → ')),
    [],
    'import cycles; move the shared part into a module both sides import',
  );
});
