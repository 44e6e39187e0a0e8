/** Types of scripts/ensure-build.mjs for the TypeScript callers (tests). */
export function sourceHash(root: string): string;
export function ensureBuilt(root: string, log?: (s: string) => void): boolean;
