/**
 * The pure pieces of the usage books: budget periods (calendar and rolling, in UTC), the clients file's
 * `budget` parser, the history's date parser and range checks, and the CSV writer (property-tested).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { isPolyrayError } from '../src/errors.ts';
import { parseBudget, periodOf } from '../src/usage/budget.ts';
import { checkRange, type HistoryRow, parseInstant, toCsv } from '../src/usage/report.ts';

const H = 3_600_000;
const D = 24 * H;

describe('budget periods', () => {
  test('calendar month and day in UTC, including year ends and leap days', () => {
    assert.deepEqual(periodOf('month', Date.UTC(2026, 11, 31, 23, 59, 59)), {
      start: Date.UTC(2026, 11, 1),
      end: Date.UTC(2027, 0, 1),
      alertKey: Date.UTC(2026, 11, 1),
    });
    const feb = periodOf('month', Date.UTC(2028, 1, 29, 12));
    assert.equal(feb.end - feb.start, 29 * D);
    const day = periodOf('day', Date.UTC(2026, 5, 15, 0, 0, 0));
    assert.deepEqual([day.start, day.end], [Date.UTC(2026, 5, 15), Date.UTC(2026, 5, 16)]);
  });

  test('a rolling window covers n days of whole hours, ending with the current hour', () => {
    fc.assert(
      fc.property(fc.integer({ min: Date.UTC(2020, 0, 1), max: Date.UTC(2030, 0, 1) }), fc.integer({ min: 1, max: 366 }), (now, days) => {
        const p = periodOf(`${days}d`, now);
        assert.equal(p.end - p.start, days * D);
        assert.ok(p.start <= now && now < p.end);
        assert.equal(p.start % H, 0);
      }),
    );
  });

  test('every instant lies in its calendar period, and the next period starts where it ends', () => {
    fc.assert(
      fc.property(fc.integer({ min: Date.UTC(2000, 0, 1), max: Date.UTC(2100, 0, 1) }), fc.constantFrom('month' as const, 'day' as const), (now, period) => {
        const p = periodOf(period, now);
        assert.ok(p.start <= now && now < p.end);
        assert.equal(periodOf(period, p.end).start, p.end);
      }),
    );
  });
});

describe('clients file budget', () => {
  test('defaults and accepted forms', () => {
    assert.deepEqual(parseBudget({ cost: 10 }, 'c'), { cost: 10, period: 'month', alerts: [0.8] });
    assert.deepEqual(parseBudget({ cost: 5, period: '30d', alerts: [0.95, 0.5, 0.95] }, 'c'), { cost: 5, period: '30d', alerts: [0.5, 0.95] });
  });

  test('bad budgets name the field', () => {
    for (const [value, field] of [
      [null, 'budget must be an object'],
      [[], 'budget must be an object'],
      [{ cost: 0 }, 'budget.cost'],
      [{ cost: -1 }, 'budget.cost'],
      [{ cost: Number.NaN }, 'budget.cost'],
      [{ cost: '10' }, 'budget.cost'],
      [{ cost: 1, period: 'week' }, 'budget.period'],
      [{ cost: 1, period: '0d' }, 'budget.period'],
      [{ cost: 1, period: '400d' }, 'budget.period'],
      [{ cost: 1, alerts: [1.5] }, 'budget.alerts'],
      [{ cost: 1, alerts: 0.8 }, 'budget.alerts'],
      [{ cost: 1, limit: 3 }, 'unknown field "limit"'],
    ] as const) {
      assert.throws(
        () => parseBudget(value, 'clients[0]'),
        (e: Error) => e instanceof TypeError && e.message.includes(field),
        JSON.stringify(value),
      );
    }
  });

  test('any JSON value either parses into a valid budget or is refused with a TypeError', () => {
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), fc.record({ cost: fc.jsonValue(), period: fc.jsonValue(), alerts: fc.jsonValue() }, { requiredKeys: [] })), (v) => {
        try {
          const b = parseBudget(v, 'x');
          assert.ok(b.cost > 0 && Number.isFinite(b.cost));
          assert.ok(b.alerts.every((a) => a > 0 && a < 1));
        } catch (e) {
          assert.ok(e instanceof TypeError, String(e));
        }
      }),
    );
  });
});

describe('history dates and ranges', () => {
  test('dates and date-times with a zone; nonexistent dates refused', () => {
    assert.equal(parseInstant('2026-12-01', 'from').toISOString(), '2026-12-01T00:00:00.000Z');
    assert.equal(parseInstant('2026-12-01T08:30:00+02:00', 'from').toISOString(), '2026-12-01T06:30:00.000Z');
    for (const bad of ['2026-02-29', '2026-13-01', '2026-12-01T08:00', '1999-12-31', 'tomorrow', '', '2026-12-01T25:00:00Z']) {
      assert.throws(
        () => parseInstant(bad, 'from'),
        (e: unknown) => isPolyrayError(e) && e.code === 'BAD_USER_INPUT' && e.extensions['argument'] === 'from',
        bad,
      );
    }
  });

  test('any string either parses into a date whose calendar day is as written, or is BAD_USER_INPUT', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.date({ min: new Date(Date.UTC(1990, 0, 1)), max: new Date(Date.UTC(3100, 0, 1)), noInvalidDate: true }).map((d) => d.toISOString().slice(0, 10)),
        ),
        (s) => {
          try {
            const d = parseInstant(s, 'to');
            assert.equal(d.toISOString().slice(0, 10), s.slice(0, 10));
          } catch (e) {
            assert.ok(isPolyrayError(e) && e.code === 'BAD_USER_INPUT', String(e));
          }
        },
      ),
    );
  });

  test('ranges: from before to, at most the limit, hourly buckets at most 93 days', () => {
    const q = (from: string, to: string, by: 'hour' | 'day' = 'day') => ({ from: new Date(from), to: new Date(to), by });
    checkRange(q('2026-01-01', '2026-12-01'), 1100);
    const code = (f: () => void): unknown => {
      try {
        f();
      } catch (e) {
        return isPolyrayError(e) ? e.extensions['argument'] : e;
      }
      return undefined;
    };
    assert.equal(
      code(() => checkRange(q('2026-12-01', '2026-12-01'), 1100)),
      'from',
    );
    assert.equal(
      code(() => checkRange(q('2020-01-01', '2026-12-01'), 1100)),
      'to',
    );
    assert.equal(
      code(() => checkRange(q('2026-01-01', '2026-12-01', 'hour'), 1100)),
      'granularity',
    );
  });
});

describe('CSV', () => {
  test('every cell survives a round trip through a CSV reader, and no cell starts a formula', () => {
    const parse = (text: string): string[][] => {
      const rows: string[][] = [];
      let row: string[] = [];
      let cell = '';
      let quoted = false;
      for (let i = 0; i < text.length; i++) {
        const ch = text[i]!;
        if (quoted) {
          if (ch === '"' && text[i + 1] === '"') {
            cell += '"';
            i++;
          } else if (ch === '"') quoted = false;
          else cell += ch;
        } else if (ch === '"') quoted = true;
        else if (ch === ',') {
          row.push(cell);
          cell = '';
        } else if (ch === '\n') {
          row.push(cell);
          rows.push(row);
          row = [];
          cell = '';
        } else cell += ch;
      }
      return rows;
    };
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            clientId: fc.string(),
            key: fc.string(),
            items: fc.nat(),
            tokens: fc.nat(),
            inferenceMs: fc.double({ noNaN: true, noDefaultInfinity: true }),
            cost: fc.nat(),
          }),
          { maxLength: 5 },
        ),
        (rows: HistoryRow[]) => {
          const parsed = parse(toCsv(rows, 'model'));
          assert.equal(parsed.length, rows.length + 1);
          rows.forEach((r, i) => {
            const cells = parsed[i + 1]!;
            for (const [got, want] of [
              [cells[0]!, r.clientId],
              [cells[1]!, r.key],
            ] as const) {
              assert.ok(!/^[=+\-@]/.test(got), `no formula: ${got}`);
              assert.equal(/^[=+\-@]/.test(want) ? got.slice(1) : got, want);
            }
            assert.equal(Number(cells[2]), r.items);
          });
        },
      ),
    );
  });
});
