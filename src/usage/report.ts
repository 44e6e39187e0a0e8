/**
 * Usage history from the database: one query shape for `Query.usageHistory`, `polyray usage report` and
 * the dashboard. Rows are grouped by client and by a time bucket (hour, day, month, UTC) or by a
 * dimension (model, source, surface). Ranges are checked before any query: dates must be ISO 8601, `from`
 * before `to`, the range at most `maxRangeDays` (hour buckets at most 93 days), a named client known.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { UsageDatabase } from './database.ts';

export const GROUPINGS = ['hour', 'day', 'month', 'model', 'source', 'surface'] as const;
export type Grouping = (typeof GROUPINGS)[number];

/** Longest range of hourly buckets (about three months: 2,232 buckets per client). */
export const MAX_HOUR_RANGE_DAYS = 93;
const DAY_MS = 86_400_000;

export interface HistoryQuery {
  from: Date;
  to: Date;
  by: Grouping;
  /** Only this client; all clients when unset. */
  clientId?: string | undefined;
}

export interface HistoryRow {
  clientId: string;
  /** The bucket's start (ISO 8601, UTC) or the dimension's value. */
  key: string;
  items: number;
  tokens: number;
  inferenceMs: number;
  cost: number;
}

const DATE_RE = /^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?(?:Z|[+-]\d{2}:\d{2}))?$/;

/** Parses an ISO 8601 date (`2026-12-01`, UTC midnight) or date-time with a zone; BAD_USER_INPUT naming `argument` otherwise. */
export function parseInstant(value: unknown, argument: string): Date {
  const bad = (): never => {
    throw new PolyrayError(
      ErrorCode.BAD_USER_INPUT,
      `${argument} must be an ISO 8601 date (2026-12-01) or date-time with a zone (2026-12-01T08:00:00Z), received ${JSON.stringify(String(value).slice(0, 40))}`,
      { argument },
    );
  };
  if (typeof value !== 'string' || !DATE_RE.test(value)) return bad();
  const d = new Date(value.length === 10 ? `${value}T00:00:00Z` : value);
  // `2026-02-31` would roll over to March 3rd: the calendar date must exist as written.
  const [y, m, day] = value.slice(0, 10).split('-').map(Number) as [number, number, number];
  const calendar = new Date(Date.UTC(y, m - 1, day));
  if (Number.isNaN(d.getTime()) || calendar.getUTCMonth() !== m - 1 || calendar.getUTCDate() !== day) return bad();
  const year = d.getUTCFullYear();
  if (year < 2000 || year > 2999) return bad();
  return d;
}

/** Checks a query's range; BAD_USER_INPUT with the argument at fault. */
export function checkRange(q: HistoryQuery, maxRangeDays: number): void {
  if (q.from.getTime() >= q.to.getTime()) throw new PolyrayError(ErrorCode.BAD_USER_INPUT, '`from` must be before `to`', { argument: 'from' });
  const days = (q.to.getTime() - q.from.getTime()) / DAY_MS;
  if (days > maxRangeDays)
    throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `The range covers ${Math.ceil(days)} days; at most ${maxRangeDays} (POLYRAY_USAGE_MAX_RANGE_DAYS)`, {
      argument: 'to',
    });
  if (q.by === 'hour' && days > MAX_HOUR_RANGE_DAYS)
    throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `Hourly buckets cover at most ${MAX_HOUR_RANGE_DAYS} days; ask for days or months`, {
      argument: 'granularity',
    });
}

/** Usage rows in [from, to), grouped by client and `by`, ordered by client then key. */
export async function usageHistory(db: UsageDatabase, q: HistoryQuery): Promise<HistoryRow[]> {
  const time = q.by === 'hour' || q.by === 'day' || q.by === 'month';
  // `by` is one of a closed list, so it may name a column or a date_trunc field; values are parameters.
  const key = time ? `to_char(date_trunc('${q.by}', hour, 'UTC') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')` : q.by;
  const params: unknown[] = [q.from.toISOString(), q.to.toISOString()];
  let where = 'hour >= $1::timestamptz AND hour < $2::timestamptz';
  if (q.clientId !== undefined) {
    params.push(q.clientId);
    where += ' AND client_id = $3';
  }
  const r = await db.query<{ client_id: string; key: string; items: string; tokens: string; inference_ms: string; cost: string }>(
    `SELECT client_id, ${key} AS key, sum(items)::text AS items, sum(tokens)::text AS tokens, sum(inference_ms)::text AS inference_ms, sum(cost)::text AS cost
     FROM usage_hourly WHERE ${where} GROUP BY client_id, 2 ORDER BY client_id, 2`,
    params,
  );
  return r.rows.map((row) => ({
    clientId: row.client_id,
    key: row.key,
    items: Number(row.items),
    tokens: Number(row.tokens),
    inferenceMs: Number(row.inference_ms),
    cost: Number(row.cost),
  }));
}

/** Client ids with any usage in the database (for "unknown client" checks of clients no longer in the file). */
export async function knownClient(db: UsageDatabase, clientId: string): Promise<boolean> {
  const r = await db.query('SELECT 1 FROM usage_hourly WHERE client_id = $1 LIMIT 1', [clientId]);
  return (r.rowCount ?? 0) > 0;
}

const COLUMNS = ['client', 'key', 'items', 'tokens', 'inferenceMs', 'cost'] as const;

function csvCell(v: string | number): string {
  const s = String(v);
  // Quoted when needed; a leading =, +, - or @ would be a formula in a spreadsheet.
  const safe = /^[=+\-@]/.test(s) && typeof v === 'string' ? `'${s}` : s;
  return /[",\n\r]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
}

/** The rows as CSV (header `client,<by>,items,tokens,inferenceMs,cost`). */
export function toCsv(rows: readonly HistoryRow[], by: Grouping): string {
  const header = ['client', by, ...COLUMNS.slice(2)].join(',');
  return `${[header, ...rows.map((r) => [r.clientId, r.key, r.items, r.tokens, r.inferenceMs, r.cost].map(csvCell).join(','))].join('\n')}\n`;
}

/** The rows as an aligned text table, with a total line. */
export function toTable(rows: readonly HistoryRow[], by: Grouping): string {
  const total = rows.reduce(
    (t, r) => ({ items: t.items + r.items, tokens: t.tokens + r.tokens, inferenceMs: t.inferenceMs + r.inferenceMs, cost: t.cost + r.cost }),
    {
      items: 0,
      tokens: 0,
      inferenceMs: 0,
      cost: 0,
    },
  );
  const fmt = (n: number): string => (Number.isInteger(n) ? String(n) : n.toFixed(3));
  const lines = [
    ['client', by, 'items', 'tokens', 'inference ms', 'cost'],
    ...rows.map((r) => [r.clientId, r.key, fmt(r.items), fmt(r.tokens), fmt(r.inferenceMs), fmt(r.cost)]),
    ['total', '', fmt(total.items), fmt(total.tokens), fmt(total.inferenceMs), fmt(total.cost)],
  ];
  const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
  return `${lines.map((l) => l.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n')}\n`;
}
