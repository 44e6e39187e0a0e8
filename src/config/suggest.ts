/**
 * "Did you mean …?" for unknown config keys and environment variables: the valid name at the smallest
 * edit distance.
 */

/** Levenshtein distance (insertions, deletions, substitutions), two rows of the DP table. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length]!;
}

/** The candidate closest to `name`, ignoring case (`POLYRAY_workers` is one edit from home, not seven). */
export function closest(name: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(name.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}

/** ` (did you mean "x"?)`, or nothing when there is no candidate. */
export function didYouMean(name: string, candidates: Iterable<string>, quote = '"'): string {
  const c = closest(name, candidates);
  return c === undefined ? '' : ` (did you mean ${quote}${c}${quote}?)`;
}
