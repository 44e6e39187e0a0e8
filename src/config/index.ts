/**
 * The one reader of `process.env` and of the optional JSON config file (`POLYRAY_CONFIG`).
 *
 * Each module declares its options beside its code (src/cache/config.ts, src/runtime/config.ts, …);
 * src/config/schema.ts composes them into one zod schema. `loadConfig()` assembles a value for every
 * option — environment variable > config file > default — then lays programmatic overrides on top and
 * validates the whole through the schema, overrides included. Unknown file keys and unknown `POLYRAY_*`
 * variables are errors naming the closest valid name. Every problem found is reported in one TypeError.
 * Defaults run embedded: no Redis, CPU inference, models built into `./models`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { z } from 'zod';
import { declaration, type SettingMeta } from './define.ts';
import { core } from './describe.ts';
import { configFile } from './process.ts';
import { declaredOptions, type Env, explain, type FileConfig, Resolver } from './resolve.ts';
import { type PolyrayConfig, polyrayConfigSchema } from './schema.ts';
import { didYouMean } from './suggest.ts';

export { EXECUTION_PROVIDERS, type ExecutionProviderName } from '../runtime/config.ts';
export type { PolyrayConfig } from './schema.ts';

export type DeepPartial<T> = { [K in keyof T]?: T[K] extends (infer U)[] ? U[] : T[K] extends object ? DeepPartial<T[K]> : T[K] };

const OPTIONS = declaredOptions(polyrayConfigSchema);
/** `POLYRAY_CONFIG`: not in the schema, since it is read first — it says where the file of the others is. */
const CONFIG_ENV = (declaration(configFile) as SettingMeta).env!;
const ENV_NAMES = new Set([CONFIG_ENV, ...OPTIONS.settings.flatMap((s) => (s.meta.env ? [s.meta.env] : []))]);
const FILE_KEYS = new Set(OPTIONS.settings.flatMap((s) => (s.meta.file ? [s.meta.file] : [])));
/** Switches of the test suite (test/providers.test.ts), exported by CI for the whole run: not settings. */
const NOT_SETTINGS = /^POLYRAY_TEST_/;

/** Reads and validates the configuration. `env` defaults to `process.env`; tests pass their own. */
export function loadConfig(env: Env = process.env, overrides: DeepPartial<PolyrayConfig> = {}): PolyrayConfig {
  const filePath = env[CONFIG_ENV] || undefined;
  const file = filePath ? readConfigFile(filePath) : {};
  const errors: string[] = [];
  for (const key of Object.keys(file)) {
    if (!FILE_KEYS.has(key)) errors.push(`Unknown config key "${key}" in ${filePath}${didYouMean(key, FILE_KEYS)}`);
  }
  for (const [name, value] of Object.entries(env)) {
    if (value !== undefined && name.startsWith('POLYRAY_') && !ENV_NAMES.has(name) && !NOT_SETTINGS.test(name)) {
      errors.push(`Unknown environment variable ${name}${didYouMean(name, ENV_NAMES, '')}`);
    }
  }
  const resolver = new Resolver({ env, file, filePath }, { cores: availableParallelism(), platform: process.platform, container: inContainer(env) });
  const base = resolver.build(OPTIONS.fields);
  errors.push(...resolver.errors);
  if (base !== undefined && resolver.errors.length === 0) {
    const merged = deepMerge(base, overrides as Record<string, unknown>);
    const checked = polyrayConfigSchema.safeParse(merged);
    if (!checked.success) errors.push(...checked.error.issues.flatMap((i) => describeIssue(i, merged, overrides)));
    // The schema transforms nothing, so the object validated is the one returned (arrays and objects from
    // overrides stay the caller's, as before).
    if (errors.length === 0) return merged as PolyrayConfig;
  }
  throw new TypeError(errors.length === 1 ? errors[0] : `Invalid configuration (${errors.length} problems):\n- ${errors.join('\n- ')}`);
}

function readConfigFile(filePath: string): FileConfig {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(filePath, 'utf8'));
  } catch (e) {
    throw new TypeError(`Configuration file POLYRAY_CONFIG="${filePath}" could not be read as JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new TypeError(
      `Configuration file POLYRAY_CONFIG="${filePath}" must hold a JSON object of settings, received ${Array.isArray(parsed) ? 'an array' : JSON.stringify(parsed)}`,
    );
  }
  return parsed as FileConfig;
}

/** An issue of the final check: an override that does not fit, an unknown override key, or a cross-section rule. */
function describeIssue(issue: z.core.$ZodIssue, merged: Record<string, unknown>, overrides: unknown): string[] {
  if ((issue as { params?: { whole?: boolean } }).params?.whole) return [`Configuration ${issue.message}`];
  const at = issue.path.filter((k): k is string | number => typeof k !== 'symbol');
  const { schema, rest } = schemaAt(polyrayConfigSchema, at, merged);
  const dotted = at.slice(0, at.length - rest.length).join('.');
  if (issue.code === 'unrecognized_keys') {
    const known = schema instanceof z.ZodObject ? Object.keys(schema.shape).map((k) => (dotted ? `${dotted}.${k}` : k)) : [];
    return issue.keys.map((k) => {
      const key = dotted ? `${dotted}.${k}` : k;
      return `Unknown config key "${key}" in overrides${didYouMean(key, known)}`;
    });
  }
  const label = fromOverrides(overrides, at) ? `override ${dotted}` : dotted;
  const value = valueAt(merged, at.slice(0, at.length - rest.length));
  if (issue.code === 'invalid_union' && 'options' in issue && Array.isArray(issue.options)) {
    return [`Configuration ${label} must be one of ${issue.options.join(', ')}, received ${JSON.stringify(valueAt(merged, at))}`];
  }
  const meta = declaration(schema);
  return [explain(label, { ...issue, path: [...rest] }, schema, value, value, { redact: meta?.kind === 'setting' ? meta.redact : undefined })];
}

/** Whether the value at `path` came from the overrides: set there, or inside a tagged union they replaced whole. */
function fromOverrides(overrides: unknown, path: readonly (string | number)[]): boolean {
  for (let k = 1; k <= path.length; k++) {
    const v = valueAt(overrides, path.slice(0, k));
    if (v === undefined) return false;
    if (k === path.length || (typeof v === 'object' && v !== null && 'kind' in v)) return true;
  }
  return false;
}

/** The schema at `path` (a discriminated union picks the option the value names); stops at a list. */
function schemaAt(root: z.ZodType, path: readonly (string | number)[], value: unknown): { schema: z.ZodType; rest: readonly (string | number)[] } {
  let schema = root;
  for (let i = 0; i < path.length; i++) {
    const s = core(schema);
    const v = valueAt(value, path.slice(0, i));
    const object = s instanceof z.ZodUnion ? (s.options as z.ZodType[]).find((o) => o instanceof z.ZodObject && matchesKind(o, v)) : s;
    if (!(object instanceof z.ZodObject) || !(String(path[i]) in object.shape)) return { schema, rest: path.slice(i) };
    schema = object.shape[String(path[i])] as z.ZodType;
  }
  return { schema, rest: [] };
}

function matchesKind(option: z.ZodObject, value: unknown): boolean {
  const kind = option.shape['kind'];
  return kind instanceof z.ZodLiteral && typeof value === 'object' && value !== null && kind.values.has((value as { kind?: unknown }).kind as never);
}

function valueAt(value: unknown, path: readonly (string | number)[]): unknown {
  let v = value;
  for (const k of path) v = typeof v === 'object' && v !== null ? (v as Record<string | number, unknown>)[k] : undefined;
  return v;
}

/** Overrides win; nested objects merge, except a tagged union (`{ kind: … }`), which replaces whole. */
function deepMerge<T extends Record<string, unknown>>(base: T, over: Record<string, unknown> | undefined): T {
  if (over === undefined || over === null) return base;
  const out = { ...base } as Record<string, unknown>;
  for (const [k, v] of Object.entries(over)) {
    const b = base[k];
    if (v !== undefined && v !== null && typeof v === 'object' && !Array.isArray(v) && typeof b === 'object' && b !== null && !('kind' in v)) {
      out[k] = deepMerge(b as Record<string, unknown>, v as Record<string, unknown>);
    } else if (v !== undefined) {
      out[k] = v;
    }
  }
  return out as T;
}

/** Docker writes /.dockerenv, Podman /run/.containerenv; both set `container` for systemd-style detection. */
function inContainer(env: Env): boolean {
  return Boolean(env['container']) || existsSync('/.dockerenv') || existsSync('/run/.containerenv');
}
