/**
 * Plain-text and Markdown tables, and the labels and number formats that the bench's reports share
 * (`report.ts` for the service run, `transformer-report.ts` for the transformer and GLOBAL-hit parts).
 */

/** A table: header, rows of cells, and which columns are right-aligned (default: all but the first). */
export type Table = { head: string[]; rows: string[][]; right?: boolean[] };

/** `×1.23`, or '–' for a ratio that is not a number. */
export const ratio = (x: number): string => (Number.isFinite(x) ? `×${x.toFixed(2)}` : '–');

export function phaseLabel(p: { kind: string; concurrency: number; inputsPerRequest: number }): string {
  return `${p.kind === 'miss' ? 'miss' : p.kind === 'global' ? 'global hit' : 'memory hit'} N=${p.concurrency}${p.inputsPerRequest > 1 ? ` ×${p.inputsPerRequest}/req` : ''}`;
}

export function textTable(t: Table): string {
  const w = t.head.map((h, i) => Math.max(h.length, ...t.rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => ((t.right?.[i] ?? i > 0) ? c.padStart(w[i]!) : c.padEnd(w[i]!)))
      .join('  ')
      .trimEnd();
  return [line(t.head), w.map((n) => '-'.repeat(n)).join('  '), ...t.rows.map(line)].join('\n');
}

export function mdTable(t: Table): string {
  const esc = (s: string): string => s.replaceAll('|', '\\|');
  return [
    `| ${t.head.map(esc).join(' | ')} |`,
    `| ${t.head.map((_, i) => ((t.right?.[i] ?? i > 0) ? '---:' : ':---')).join(' | ')} |`,
    ...t.rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}
