/**
 * The fault suite's switches (`npm run test:faults`, scripts/faults.ts): `POLYRAY_FAULTS_LONG=1` runs the
 * long versions of the fault tests, and `POLYRAY_FAULTS_OUT=<dir>` collects each test's figures there as
 * JSON for bench/RESULTS.md. Without them the tests run short and record nothing.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

export const FAULTS_LONG = process.env['POLYRAY_FAULTS_LONG'] === '1';

/** Writes `figures` as `<name>.json` into POLYRAY_FAULTS_OUT, when it is set. */
export async function recordFigures(name: string, figures: Record<string, unknown>): Promise<void> {
  const out = process.env['POLYRAY_FAULTS_OUT'];
  if (!out) return;
  await mkdir(out, { recursive: true });
  await writeFile(path.join(out, `${name}.json`), `${JSON.stringify(figures, null, 2)}\n`);
}
