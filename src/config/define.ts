/**
 * The vocabulary modules declare their options with, in their own `config.ts` (src/cache/config.ts, …).
 *
 * `setting(schema, meta)` ties a zod schema — the option's type and bounds in config units (bytes,
 * milliseconds) — to the environment variable and config-file key that set it, its default and its README
 * line. `composite(schema, meta)` is an option assembled from several settings (a Redis tier from its URL or
 * Cluster seeds, TTL, timeout …). Declarations are static metadata: src/config/resolve.ts walks them, and
 * nothing in this file reads the environment.
 */
import { z } from 'zod';

/** The config value is the env/file value × unit: MiB for `…_MB` variables of a byte option. */
export const MiB = 1024 * 1024;
/** The config value is the env/file value × unit: seconds (`…_S` variables) of a millisecond option. */
export const SECONDS = 1000;

/** Reads another setting's value (from env and file only: defaults never see programmatic overrides). */
export type Get = <S extends z.ZodType>(setting: S) => z.output<S>;

/** Facts of the machine that defaults may depend on. */
export interface Host {
  cores: number;
  platform: NodeJS.Platform;
  /** Running in a container (Docker's /.dockerenv, Podman's /run/.containerenv, or `container` set). */
  container: boolean;
}

/** A default computed from other settings or the host must say in words what it is (for the README). */
type DefaultSpec<T> = { default: T; defaultDoc?: string } | { default: (get: Get, host: Host) => T; defaultDoc: string };

export type SettingSpec<T> = DefaultSpec<T> & {
  /** Environment variable that sets it (`POLYRAY_MEMORY_CACHE_MB`). Unset: a constant, not configurable. */
  env?: string;
  /** Key of the JSON file named by `POLYRAY_CONFIG` (flat, as documented in the README). */
  file?: string;
  /** The env/file value is in these config units (MiB, SECONDS); integers in that unit. Default 1. */
  unit?: number;
  /** How the env/file string becomes a value, where the type alone does not say (paths, `off`, case). */
  read?: (raw: string) => unknown;
  /** The README's "meaning" column; a setting without it is left out of the README. */
  doc?: string;
  /** README table it is listed in, where not its section's (see src/config/docs.ts). */
  table?: string;
  /** `secret`: error messages show only its length (URL credentials are masked for every setting). */
  redact?: 'secret';
};

export type SettingMeta = SettingSpec<unknown> & { kind: 'setting' };

export interface CompositeMeta {
  kind: 'composite';
  /** The settings it is built from: each has its own variable, file key and README line. */
  inputs: readonly z.ZodType[];
  /** Builds the value; throws a TypeError for a combination the inputs cannot form. */
  compose: (get: Get) => unknown;
}

export type Declared = SettingMeta | CompositeMeta;

// Keyed by schema instance: the declaration is the schema object a module exports, so a module's
// defaults can name another module's setting directly (`get(cacheRedis)`).
const declared = new WeakMap<z.ZodType, Declared>();

function declare<S extends z.ZodType>(schema: S, meta: Declared): S {
  if (declared.has(schema)) throw new TypeError('a schema instance can declare one option only; build a new schema per setting');
  declared.set(schema, meta);
  return schema;
}

/** Declares one option. `schema` holds the type and bounds in config units; `spec` says where it comes from. */
export function setting<S extends z.ZodType>(schema: S, spec: SettingSpec<z.output<S>>): S {
  return declare(schema, { ...(spec as SettingSpec<unknown>), kind: 'setting' });
}

/** Declares an option assembled from other settings by `compose`. */
export function composite<S extends z.ZodType>(schema: S, meta: { inputs: readonly z.ZodType[]; compose: (get: Get) => z.output<S> }): S {
  return declare(schema, { kind: 'composite', ...meta });
}

export function declaration(schema: z.ZodType): Declared | undefined {
  return declared.get(schema);
}

/** `schema` or unset: the key stays in the config type (`T | undefined`), unlike zod's `.optional()`. */
export function maybe<S extends z.ZodType>(schema: S): z.ZodUnion<[S, z.ZodUndefined]> {
  return z.union([schema, z.undefined()]);
}

/** `a, b,,c` → `['a', 'b', 'c']`: comma-separated lists in env and file values. */
export function list(raw: string): string[] {
  return raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** `off` / `none` (any case) switch an optional output off. */
export function isOff(raw: string): boolean {
  return /^(off|none)$/i.test(raw);
}

/** A Redis URL, as `REDIS_URL` and `POLYRAY_QUOTA_REDIS_URL` take it. */
export function redisUrl(): z.ZodString {
  return z.string().regex(/^rediss?:\/\//, { error: 'must start with redis:// or rediss://' });
}

/** `host:port` or `[v6]:port` seeds of a Redis Cluster, as the `…CLUSTER_NODES` variables list them. */
export function hostPortList(): z.ZodArray<z.ZodString> {
  const error = 'entries must look like host:port'; // port 1–65535; the wording the tests have always matched
  return z.array(z.string().refine((s) => parseHostPort(s) !== undefined, { error })).min(1, { error });
}

export function parseHostPort(s: string): { host: string; port: number } | undefined {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[2]) : NaN;
  return m && port >= 1 && port <= 65535 ? { host: m[1]!, port } : undefined;
}

/** A Cluster seed in the config: what `parseHostPort` gives. */
export const hostPort = (): z.ZodObject<{ host: z.ZodString; port: z.ZodNumber }, z.core.$strict> =>
  z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65535) }).strict();
