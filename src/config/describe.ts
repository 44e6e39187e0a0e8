/**
 * What a declared schema means as text: how an env/file string becomes a value of its type, what it
 * expects (for error messages: "an integer in [1, 4096]"), and how a default reads in the README. Derived
 * from the zod schema itself, so a bound changed in a module's config.ts changes its message and its docs.
 */
import { z } from 'zod';
import { list } from './define.ts';

/** The schema under a `maybe(…)` / `.optional()` wrapper: what a set value is checked against. */
export function core(schema: z.ZodType): z.ZodType {
  if (schema instanceof z.ZodOptional) return core(schema.unwrap() as z.ZodType);
  if (schema instanceof z.ZodUnion) {
    const set = (schema.options as readonly z.ZodType[]).filter((o) => !(o instanceof z.ZodUndefined));
    if (set.length === 1) return core(set[0]!);
  }
  return schema;
}

/** `1 | true | yes | on` and `0 | false | no | off`, any case; anything else is left for the schema to refuse. */
export function parseBool(raw: string): boolean | string {
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  return raw;
}

/**
 * An env/file string as a value of `schema`'s type. Numbers are integers *in the env unit* where the
 * option is an integer (`POLYRAY_POLICY_INTERVAL_S=0.5` is refused, not read as 500 ms); a string that is
 * no number becomes NaN, which every number schema refuses.
 */
export function fromString(schema: z.ZodType, raw: string, unit = 1): unknown {
  const s = core(schema);
  if (s instanceof z.ZodNumber) {
    const n = Number(raw);
    if (s.isInt && !Number.isSafeInteger(n)) return NaN;
    return n * unit;
  }
  if (s instanceof z.ZodBoolean) return parseBool(raw);
  if (s instanceof z.ZodArray) return list(raw);
  return raw;
}

const FAR = Number.MAX_SAFE_INTEGER;

/** What `schema` accepts, in the env unit: "an integer in [0, 65535]", "one of open, closed", … */
export function expectation(schema: z.ZodType, unit = 1): string {
  const s = core(schema);
  if (s instanceof z.ZodNumber) {
    const kind = s.isInt ? 'an integer' : 'a number';
    const min = s.minValue ?? -Infinity;
    const max = s.maxValue ?? Infinity;
    const lo = Number.isFinite(min) && min > -FAR ? (s.isInt ? Math.ceil(min / unit) : min / unit) : undefined;
    const hi = Number.isFinite(max) && max < FAR ? (s.isInt ? Math.floor(max / unit) : max / unit) : undefined;
    if (lo !== undefined && hi !== undefined) return `${kind} in [${lo}, ${hi}]`;
    if (lo !== undefined) return `${kind} ≥ ${lo}`;
    if (hi !== undefined) return `${kind} ≤ ${hi}`;
    return kind;
  }
  if (s instanceof z.ZodBoolean) return 'true or false';
  if (s instanceof z.ZodEnum) return `one of ${s.options.join(', ')}`;
  if (s instanceof z.ZodLiteral) return [...s.values].map((v) => JSON.stringify(v)).join(' or ');
  if (s instanceof z.ZodArray) {
    const e = core(s.element as z.ZodType);
    return e instanceof z.ZodEnum ? `a comma-separated list of ${e.options.join(', ')}` : 'a comma-separated list';
  }
  if (s instanceof z.ZodUnion) return (s.options as readonly z.ZodType[]).map((o) => expectation(o, unit)).join(', or ');
  if (s instanceof z.ZodObject) return 'an object';
  if (s instanceof z.ZodString) return 'a string';
  return 'a valid value';
}

/** A default value as the README shows it, in the env unit. */
export function defaultText(value: unknown, unit = 1): string {
  if (value === undefined) return 'unset';
  if (typeof value === 'number') return String(value / unit);
  if (Array.isArray(value)) return value.join(',');
  if (value === '') return '(empty)';
  return String(value);
}

/** A received value for a message: credentials in a URL (`//user:pass@`) are masked, a secret shows only its length. */
export function shown(value: unknown, redact?: 'secret'): string {
  if (redact === 'secret' && typeof value === 'string') return `a value of ${value.length} characters`;
  return (JSON.stringify(value) ?? String(value)).replace(/\/\/[^@/]*@/g, '//***@');
}
