/**
 * Request validation of the REST routes, from the JSON schemas the routes declare (the same schemas
 * `/openapi.json` publishes): Fastify validates every body with Ajv before the handler runs, and this module
 * turns Ajv's errors into one message that names the field, for each protocol's error shape.
 *
 * Ajv runs with `coerceTypes: false` (a string is never taken for a number) and `verbose: true` (an error
 * carries the schema it failed, so a field's `description` can say what was expected).
 *
 * One error is reported: the deepest one (the most precise field), preferring a failed constraint over a
 * type mismatch among `anyOf` branches ("input" is a list, but empty), then the branch that got furthest
 * into a list, then the `anyOf` itself, whose description lists what the field may be.
 */

/** An Ajv error as Fastify passes it on (`err.validation`). */
export interface ValidationIssue {
  keyword: string;
  instancePath: string;
  schemaPath?: string;
  params: Record<string, unknown>;
  message?: string;
  parentSchema?: { description?: string };
}

/** The Ajv options the REST schemas are written for (Fastify's `ajv.customOptions`). */
export const AJV_OPTIONS = { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false, verbose: true } as const;

/** `/input/3/0` → `input[3][0]`; `/a/b` → `a.b`; `` → `body`. */
export function paramOf(instancePath: string, missing?: unknown): string {
  const parts = instancePath.split('/').slice(1);
  if (typeof missing === 'string') parts.push(missing);
  if (parts.length === 0) return 'body';
  let out = '';
  for (const p of parts) out += /^\d+$/.test(p) ? `[${p}]` : out === '' ? p : `.${p}`;
  return out;
}

/** The one issue to report, with its field and a message for the caller. */
export function describeIssues(issues: readonly ValidationIssue[]): { param: string; message: string } {
  if (issues.length === 0) return { param: 'body', message: 'The request body is not valid' };
  const depth = (i: ValidationIssue): number => (i.instancePath === '' ? 0 : i.instancePath.split('/').length - 1) + (i.keyword === 'required' ? 1 : 0);
  const deepest = Math.max(...issues.map(depth));
  const at = issues.filter((i) => depth(i) === deepest);
  const constraints = at.filter((i) => i.keyword !== 'type' && i.keyword !== 'anyOf');
  const types = at.filter((i) => i.keyword === 'type');
  let pick: ValidationIssue;
  if (constraints.length > 0) pick = furthest(constraints);
  else if (types.length > 0) {
    // Of the `anyOf` branches that failed on a type, the one that got furthest into a list is the kind the
    // caller meant; where several stopped at the same place, the `anyOf` there says what may stand there.
    const far = furthest(types);
    pick = issues.find((i) => i.keyword === 'anyOf' && i.instancePath === far.instancePath) ?? far;
  } else pick = at[0]!;
  const param = paramOf(pick.instancePath, pick.keyword === 'required' ? pick.params['missingProperty'] : undefined);
  const name = param === 'body' ? 'The request body' : `"${param}"`;
  switch (pick.keyword) {
    case 'required':
      return { param, message: `${name} is required` };
    case 'anyOf':
      return { param, message: `${name} must be ${pick.parentSchema?.description ?? 'of another type'}` };
    case 'enum':
      return { param, message: `${name} must be one of ${(pick.params['allowedValues'] as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` };
    case 'type':
      return { param, message: `${name} must be ${article(String(pick.params['type']))}` };
    default:
      return { param, message: `${name} ${pick.message ?? 'is not valid'}` };
  }
}

/** The issue furthest into the document (list positions compared as numbers); the first of equals. */
function furthest(issues: readonly ValidationIssue[]): ValidationIssue {
  const key = (i: ValidationIssue): string[] => i.instancePath.split('/').slice(1);
  const after = (a: string[], b: string[]): boolean => {
    for (let k = 0; k < Math.min(a.length, b.length); k++) {
      if (a[k] === b[k]) continue;
      const [x, y] = [Number(a[k]), Number(b[k])];
      return Number.isInteger(x) && Number.isInteger(y) ? x > y : false;
    }
    return a.length > b.length;
  };
  let best = issues[0]!;
  for (const i of issues) if (after(key(i), key(best))) best = i;
  return best;
}

/** `integer,null` → "an integer or null"; `array` → "a list". */
function article(type: string): string {
  const one = (t: string): string => (t === 'array' ? 'a list' : t === 'null' ? 'null' : t === 'object' || t === 'integer' ? `an ${t}` : `a ${t}`);
  return type.split(',').map(one).join(' or ');
}
