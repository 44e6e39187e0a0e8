/**
 * Finds every option the modules declared under the root schema and computes each one's value from the
 * environment and the config file (environment variable > file key > default), collecting every error
 * instead of stopping at the first. Programmatic overrides are not seen here: src/config/index.ts merges
 * them afterwards, so a default computed from other settings (threads from workers, the quota store from
 * the cache's Redis) follows env and file only, as it always has.
 */
import { z } from 'zod';
import { type CompositeMeta, declaration, type Get, type Host, type SettingMeta } from './define.ts';
import { core, expectation, fromString, shown } from './describe.ts';

export type Env = Record<string, string | undefined>;
export type FileConfig = Record<string, unknown>;

/** A place in the config that receives a value: a setting, or a composite built from its inputs. */
export interface Field {
  path: readonly string[];
  schema: z.ZodType;
}

/** A setting that can be set from outside, with the config section it belongs to (for the README). */
export interface DeclaredSetting {
  section: string;
  path: readonly string[];
  schema: z.ZodType;
  meta: SettingMeta;
}

/** Every field and every setting under `root`, in declaration order; a composite's inputs follow it. */
export function declaredOptions(root: z.ZodObject): { fields: Field[]; settings: DeclaredSetting[] } {
  const fields: Field[] = [];
  const settings: DeclaredSetting[] = [];
  const walk = (schema: z.ZodObject, at: readonly string[]): void => {
    for (const [key, field] of Object.entries(schema.shape as Record<string, z.ZodType>)) {
      const path = [...at, key];
      const meta = declaration(field);
      if (meta === undefined) {
        if (!(field instanceof z.ZodObject)) throw new TypeError(`config field ${path.join('.')} is neither declared with setting() nor an object of settings`);
        walk(field, path);
        continue;
      }
      fields.push({ path, schema: field });
      const inputs = meta.kind === 'composite' ? meta.inputs : [field];
      for (const input of inputs) {
        const m = declaration(input);
        if (m?.kind !== 'setting') throw new TypeError(`config field ${path.join('.')}: a composite's inputs must be settings`);
        settings.push({ section: path[0]!, path, schema: input, meta: m });
      }
    }
  };
  walk(root, []);
  return { fields, settings };
}

/** Thrown when a composite cannot be formed: the settings that depend on it have nothing to go on. */
class Abort extends Error {}

/** Resolves settings on demand (defaults may read other settings), each once. */
export class Resolver {
  readonly errors: string[] = [];
  readonly #env: Env;
  readonly #file: FileConfig;
  readonly #fileLabel: string;
  readonly #host: Host;
  readonly #values = new Map<z.ZodType, unknown>();
  readonly #resolving = new Set<z.ZodType>();

  constructor(sources: { env: Env; file: FileConfig; filePath?: string | undefined }, host: Host) {
    this.#env = sources.env;
    this.#file = sources.file;
    this.#fileLabel = sources.filePath ?? 'the config file';
    this.#host = host;
  }

  /** Fills every field; `undefined` when a composite failed (the errors say why). */
  build(fields: readonly Field[]): Record<string, unknown> | undefined {
    const out: Record<string, unknown> = {};
    try {
      for (const { path, schema } of fields) setAt(out, path, this.get(schema));
    } catch (e) {
      if (e instanceof Abort) return undefined;
      throw e;
    }
    return out;
  }

  readonly get: Get = <S extends z.ZodType>(schema: S): z.output<S> => {
    if (this.#values.has(schema)) return this.#values.get(schema) as z.output<S>;
    const meta = declaration(schema);
    if (meta === undefined) throw new TypeError('get() of a schema that was not declared with setting() or composite()');
    if (this.#resolving.has(schema))
      throw new TypeError(`config default of ${meta.kind === 'setting' ? (meta.env ?? 'a constant') : 'a composite'} depends on itself`);
    this.#resolving.add(schema);
    const value = meta.kind === 'composite' ? this.#compose(meta) : this.#setting(schema, meta);
    this.#resolving.delete(schema);
    this.#values.set(schema, value);
    return value as z.output<S>;
  };

  #compose(meta: CompositeMeta): unknown {
    try {
      return meta.compose(this.get);
    } catch (e) {
      if (!(e instanceof TypeError)) throw e;
      this.errors.push(e.message);
      throw new Abort();
    }
  }

  #setting(schema: z.ZodType, meta: SettingMeta): unknown {
    const raw = this.#raw(meta);
    if (raw !== undefined) {
      const value = meta.read ? meta.read(raw.text) : fromString(schema, raw.text, meta.unit);
      const checked = schema.safeParse(value);
      if (checked.success) return value;
      const label = raw.from === 'env' ? meta.env! : `key "${meta.file!}" of ${this.#fileLabel}`;
      this.errors.push(explain(label, checked.error.issues[0]!, schema, value, raw.text, meta));
    }
    return typeof meta.default === 'function' ? (meta.default as (get: Get, host: Host) => unknown)(this.get, this.#host) : structuredClone(meta.default);
  }

  /** The env value (an empty variable counts as unset), else the file's, as the string an env value would be. */
  #raw(meta: SettingMeta): { text: string; from: 'env' | 'file' } | undefined {
    const e = meta.env === undefined ? undefined : this.#env[meta.env];
    if (e !== undefined && e !== '') return { text: e, from: 'env' };
    const f = meta.file === undefined ? undefined : this.#file[meta.file];
    if (f === undefined || f === null) return undefined;
    return { text: Array.isArray(f) ? f.join(',') : String(f), from: 'file' };
  }
}

/**
 * `Configuration <label> must be <expected>, received <value>`. In a list the offending element is named.
 * A check that wrote its own words ("must not contain …", "entries must look like …") keeps them: zod's
 * default messages never say "must".
 */
export function explain(
  label: string,
  issue: z.core.$ZodIssue,
  schema: z.ZodType,
  value: unknown,
  raw: unknown,
  meta?: Pick<SettingMeta, 'unit' | 'redact'>,
): string {
  let target = core(schema);
  let received = raw;
  if (target instanceof z.ZodArray && typeof issue.path[0] === 'number' && Array.isArray(value)) {
    received = value[issue.path[0]];
    target = target.element as z.ZodType;
  }
  const must = issue.message.includes('must ') ? issue.message : `must be ${expectation(target, meta?.unit)}`;
  return `Configuration ${label} ${must}, received ${shown(received, meta?.redact)}`;
}

function setAt(out: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let node = out;
  for (const key of path.slice(0, -1)) {
    node[key] ??= {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}
