/**
 * Budgets: a client's cost units per period (`budget` in the clients file), enforced fleet-wide from the
 * usage database.
 *
 *   { "budget": { "cost": 5000, "period": "month", "alerts": [0.8, 0.95] } }
 *
 * `period` is `month` or `day` (calendar, UTC) or a rolling window of whole days (`"7d"`, over hourly
 * rows). Every `refreshMs` each replica reads, in one query per period start, what the fleet has spent in
 * the current period (usage_hourly); a client's spend is that plus what this replica recorded that the
 * database does not hold yet. At or over the budget a request is refused before any work with
 * BUDGET_EXCEEDED (`retryAfterMs` = until the period ends); the fleet may overrun a budget by about what it
 * serves the client in one refresh interval plus one flush. Crossing an alert threshold is recorded once
 * per client, period and threshold for the whole fleet (a row in budget_alerts: the replica that inserted
 * it logs the alert and counts it in `polyray_budget_alerts_total`). Rolling windows alert at most once
 * per UTC day per threshold.
 *
 * The clients file is re-read within seconds of a change, and the next check uses the new budget.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { UsageBooks } from './books.ts';
import { HOUR_MS } from './books.ts';
import type { UsageDatabase } from './database.ts';

const DAY_MS = 24 * HOUR_MS;

export interface Budget {
  /** Cost units per period. */
  cost: number;
  /** `month` / `day`: calendar periods in UTC; `<n>d`: a rolling window of n whole days (1–366). */
  period: 'month' | 'day' | `${number}d`;
  /** Fractions of the budget at which a soft alert is raised once per period (0 < a < 1). Default [0.8]. */
  alerts: number[];
}

export interface BudgetedClient {
  id: string;
  budget?: Budget | undefined;
}

/** Where a client stands against its budget now. */
export interface BudgetStatus {
  budget: number;
  spent: number;
  remaining: number;
  /** Start and end of the current period, ms since the epoch. */
  periodStart: number;
  periodEnd: number;
}

/** Start and end (ms) of the period containing `now`. A rolling window ends when its oldest hour leaves it. */
export function periodOf(period: Budget['period'], now: number): { start: number; end: number; alertKey: number } {
  const d = new Date(now);
  if (period === 'month') {
    const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
    return { start, end: Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1), alertKey: start };
  }
  if (period === 'day') {
    const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
    return { start, end: start + DAY_MS, alertKey: start };
  }
  const hour = Math.floor(now / HOUR_MS) * HOUR_MS;
  const start = hour - Number.parseInt(period, 10) * DAY_MS + HOUR_MS;
  return { start, end: hour + HOUR_MS, alertKey: Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()) };
}

/** Parses a clients file's `budget`; throws a TypeError naming the field. */
export function parseBudget(value: unknown, where: string): Budget {
  const bad = (what: string): never => {
    throw new TypeError(`${where}.${what}`);
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return bad('budget must be an object like { "cost": 1000, "period": "month" }');
  const o = value as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['cost', 'period', 'alerts'].includes(k)) bad(`budget has an unknown field "${k.slice(0, 40)}" (cost, period, alerts)`);
  const cost = o['cost'];
  if (typeof cost !== 'number' || !Number.isFinite(cost) || !(cost > 0)) bad('budget.cost must be a number > 0 (cost units per period)');
  const p = o['period'] ?? 'month';
  let period: Budget['period'];
  if (p === 'month' || p === 'day') period = p;
  else if (typeof p === 'string' && /^[1-9]\d{0,2}d$/.test(p) && Number.parseInt(p, 10) <= 366) period = p as `${number}d`;
  else return bad('budget.period must be "month", "day" or a rolling window of 1 to 366 days like "30d"');
  const alerts = o['alerts'] ?? [0.8];
  if (!Array.isArray(alerts) || alerts.length > 10 || !alerts.every((a) => typeof a === 'number' && a > 0 && a < 1))
    bad('budget.alerts must be a list of at most 10 fractions between 0 and 1, like [0.8, 0.95]');
  return { cost: cost as number, period, alerts: [...new Set(alerts as number[])].sort((a, b) => a - b) };
}

export interface BudgetsOptions {
  db: UsageDatabase;
  books: UsageBooks;
  /** The clients now (the clients file is reloaded in place). */
  clients: () => readonly BudgetedClient[];
  refreshMs: number;
  logger: Logger;
  clock?: () => number;
  /** Called once per alert this replica recorded for the fleet. */
  onAlert?: (clientId: string, threshold: number) => void;
}

export class Budgets {
  readonly #o: BudgetsOptions;
  readonly #clock: () => number;
  /** Fleet spend per client as of the last refresh, for the period that started at `start`. */
  #fleet = new Map<string, { start: number; spent: number }>();
  /** Alerts already recorded (here or by another replica): `client|periodKey|threshold`. */
  readonly #alerted = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #refreshing: Promise<void> | undefined;
  #failing = false;

  constructor(options: BudgetsOptions) {
    this.#o = options;
    this.#clock = options.clock ?? Date.now;
  }

  /** Reads the fleet's spend once (bounded wait), then every `refreshMs`. */
  async start(): Promise<void> {
    await this.refresh();
    this.#timer = setInterval(() => void this.refresh(), this.#o.refreshMs);
    this.#timer.unref();
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Reads what the fleet spent in each budgeted client's current period, then raises due alerts. */
  refresh(): Promise<void> {
    this.#refreshing ??= this.#refresh().finally(() => {
      this.#refreshing = undefined;
    });
    return this.#refreshing;
  }

  async #refresh(): Promise<void> {
    const now = this.#clock();
    const byStart = new Map<number, string[]>();
    for (const c of this.#o.clients()) {
      if (!c.budget) continue;
      const { start } = periodOf(c.budget.period, now);
      byStart.set(start, [...(byStart.get(start) ?? []), c.id]);
    }
    const fleet = new Map<string, { start: number; spent: number }>();
    try {
      for (const [start, ids] of byStart) {
        const r = await this.#o.db.query<{ client_id: string; cost: string }>(
          'SELECT client_id, sum(cost)::text AS cost FROM usage_hourly WHERE client_id = ANY($1) AND hour >= to_timestamp($2 / 1000.0) GROUP BY client_id',
          [ids, start],
        );
        for (const id of ids) fleet.set(id, { start, spent: 0 });
        for (const row of r.rows) fleet.set(row.client_id, { start, spent: Number(row.cost) });
      }
      this.#fleet = fleet;
      if (this.#failing) this.#o.logger.info('budget spend read from the usage database again');
      this.#failing = false;
    } catch (e) {
      // The last figures stay; this replica's own new usage still counts against them.
      if (!this.#failing)
        this.#o.logger.warn({ reason: (e as Error).message }, 'budget spend could not be read from the usage database; using the last figures');
      this.#failing = true;
      return;
    }
    await this.#alerts(now);
  }

  async #alerts(now: number): Promise<void> {
    for (const c of this.#o.clients()) {
      if (!c.budget) continue;
      const s = this.status(c);
      if (!s) continue;
      const key = periodOf(c.budget.period, now).alertKey;
      for (const t of c.budget.alerts) {
        const id = `${c.id}|${key}|${t}`;
        if (s.spent < t * s.budget || this.#alerted.has(id)) continue;
        try {
          const r = await this.#o.db.query(
            'INSERT INTO budget_alerts (client_id, period_start, threshold, spent, budget, alerted_by) VALUES ($1, to_timestamp($2 / 1000.0), $3, $4, $5, $6) ON CONFLICT DO NOTHING',
            [c.id, key, t, s.spent, s.budget, this.#o.books.replica],
          );
          this.#alerted.add(id);
          if (r.rowCount === 1) {
            this.#o.logger.warn(
              { client: c.id, threshold: t, spent: s.spent, budget: s.budget, periodEnd: new Date(s.periodEnd).toISOString() },
              'client reached a budget alert threshold',
            );
            this.#o.onAlert?.(c.id, t);
          }
        } catch {
          // Tried again at the next refresh.
        }
      }
    }
    if (this.#alerted.size > 100_000) this.#alerted.clear(); // bounded; a cleared entry only costs one INSERT that finds the row
  }

  /** The client's standing now, or undefined when it has no budget. */
  status(client: BudgetedClient): BudgetStatus | undefined {
    const b = client.budget;
    if (!b) return undefined;
    const { start, end } = periodOf(b.period, this.#clock());
    const fleet = this.#fleet.get(client.id);
    // A period that began after the last refresh starts from nothing in the database.
    const spent = (fleet && fleet.start === start ? fleet.spent : 0) + this.#o.books.localSpend(client.id, start);
    return { budget: b.cost, spent, remaining: Math.max(0, b.cost - spent), periodStart: start, periodEnd: end };
  }

  /** Throws BUDGET_EXCEEDED when the client has spent its budget for this period. */
  check(client: BudgetedClient): void {
    const s = this.status(client);
    if (!s || s.spent < s.budget) return;
    const retryAfterMs = Math.max(1000, s.periodEnd - this.#clock());
    throw new PolyrayError(
      ErrorCode.BUDGET_EXCEEDED,
      `Client "${client.id}" has spent its budget of ${s.budget} cost units for this period (${Math.round(s.spent * 1e6) / 1e6} spent); it renews at ${new Date(s.periodEnd).toISOString()}`,
      { retryAfterMs, budget: s.budget, periodEnd: new Date(s.periodEnd).toISOString() },
    );
  }
}
