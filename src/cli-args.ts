/**
 * Flags of the `polyray` subcommands: one way to declare them and one set of value checks, so every
 * command rejects unknown flags and bad numbers with the same kind of message.
 *
 * Owns: the flag declarations handed to `node:util` `parseArgs` (always strict: an unknown flag or a
 * stray positional is a TypeError) and the typed result; nothing about any one command.
 */
import { parseArgs } from 'node:util';

/** The flags a command takes, by kind: `--name VALUE`, `--name VALUE` repeatable, and bare `--name`. */
export interface FlagSpec<S extends string, L extends string, B extends string> {
  strings?: readonly S[];
  lists?: readonly L[];
  booleans?: readonly B[];
}

/** Parsed flags: absent ones are undefined. */
export type Flags<S extends string, L extends string, B extends string> = { [K in S]?: string } & { [K in L]?: string[] } & { [K in B]?: boolean };

/** Parses `args` against `spec`. Throws a TypeError naming an unknown flag, a missing value or a positional. */
export function parseFlags<const S extends string = never, const L extends string = never, const B extends string = never>(
  args: readonly string[],
  spec: FlagSpec<S, L, B>,
): Flags<S, L, B> {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = {};
  for (const name of spec.strings ?? []) options[name] = { type: 'string' };
  for (const name of spec.lists ?? []) options[name] = { type: 'string', multiple: true };
  for (const name of spec.booleans ?? []) options[name] = { type: 'boolean' };
  return parseArgs({ args: [...args], options, strict: true }).values as Flags<S, L, B>;
}

/** `--flag`'s value as a number > 0; undefined when the flag is absent. */
export function positiveNumber(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new TypeError(`--${flag} must be a number > 0, received "${value}"`);
  return n;
}
