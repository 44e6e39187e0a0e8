/**
 * `polyray usage report` and `polyray db migrate`: the usage database from the command line (an operator's
 * or a finance person's tool; it reads PostgreSQL directly, so it needs POLYRAY_USAGE_DATABASE_URL).
 */
import type { PolyrayConfig } from '../config/index.ts';
import { parseFlags } from '../cli-args.ts';
import { isPolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { createUsageDatabase, migrateUsageDatabase } from './database.ts';
import { checkRange, GROUPINGS, type Grouping, type HistoryQuery, knownClient, parseInstant, toCsv, toTable, usageHistory } from './report.ts';

export const USAGE_USAGE = `  usage report --from DATE --to DATE [--client ID] [--by day|hour|month|model|source|surface]
               [--format table|csv|json]
                                usage from the usage database in [from, to) (ISO 8601 dates, UTC),
                                per client and bucket (default --by day, --format table)
  db migrate                    apply the usage database migrations (POLYRAY_USAGE_DATABASE_URL)
`;

export interface UsageCliIO {
  out: (s: string) => void;
  err: (s: string) => void;
}

const FORMATS = ['table', 'csv', 'json'] as const;

/** Runs `usage <sub>` or `db <sub>`; returns the exit code. */
export async function usageCommand(
  cmd: 'usage' | 'db',
  sub: string | undefined,
  args: string[],
  config: PolyrayConfig,
  logger: Logger,
  io: UsageCliIO,
): Promise<number> {
  const url = config.usage.databaseUrl;
  if (cmd === 'db' && sub === 'migrate') {
    parseFlags(args, {});
    if (!url) return missingUrl(io);
    const applied = await migrateUsageDatabase(url, logger);
    io.err(applied.length > 0 ? `applied ${applied.length} migration(s): ${applied.join(', ')}\n` : 'the usage database is up to date\n');
    return 0;
  }
  if (cmd === 'usage' && sub === 'report') {
    const values = parseFlags(args, { strings: ['from', 'to', 'client', 'by', 'format'] });
    if (values.from === undefined || values.to === undefined) {
      io.err(`usage report needs --from and --to (ISO 8601 dates, e.g. --from 2026-11-01 --to 2026-12-01)\n`);
      return 2;
    }
    const by = (values.by ?? 'day') as Grouping;
    if (!(GROUPINGS as readonly string[]).includes(by)) throw new TypeError(`--by must be one of ${GROUPINGS.join(', ')}, received "${values.by}"`);
    const format = values.format ?? 'table';
    if (!(FORMATS as readonly string[]).includes(format)) throw new TypeError(`--format must be one of ${FORMATS.join(', ')}, received "${format}"`);
    let query: HistoryQuery;
    try {
      query = { from: parseInstant(values.from, '--from'), to: parseInstant(values.to, '--to'), by, clientId: values.client };
      checkRange(query, config.usage.maxRangeDays);
    } catch (e) {
      if (isPolyrayError(e)) throw new TypeError(e.message.replace(/^`from`/, '--from'));
      throw e;
    }
    if (!url) return missingUrl(io);
    const db = createUsageDatabase(url, config.usage.timeoutMs, logger);
    try {
      if (values.client !== undefined && !(await knownClient(db, values.client))) {
        io.err(`unknown client: no usage of "${values.client.slice(0, 64)}" in the usage database\n`);
        return 3;
      }
      const rows = await usageHistory(db, query);
      if (format === 'json') {
        io.out(`${JSON.stringify({ from: query.from.toISOString(), to: query.to.toISOString(), by, rows }, null, 2)}\n`);
      } else io.out(format === 'csv' ? toCsv(rows, by) : toTable(rows, by));
      return 0;
    } finally {
      await db.end();
    }
  }
  io.err(`unknown command "${cmd} ${sub ?? ''}"\n${USAGE_USAGE}`);
  return 2;
}

function missingUrl(io: UsageCliIO): number {
  io.err('no usage database: set POLYRAY_USAGE_DATABASE_URL (postgres://user@host:port/db)\n');
  return 2;
}
