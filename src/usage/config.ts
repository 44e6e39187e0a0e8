/**
 * Options of the durable usage books (src/usage): the PostgreSQL database that is the book of record, how
 * often each replica writes its batches there, how long rows and raw batches are kept, and how budgets
 * are refreshed. Declared with src/config/define.ts; src/config assembles and validates them.
 */
import { z } from 'zod';
import { maybe, setting } from '../config/define.ts';

export const usageSchema = z
  .object({
    /**
     * PostgreSQL connection string of the usage books (`postgres://user@host:port/db`). Unset: the books
     * live only in Redis (or per replica), as before, with no history, reports or budgets across restarts.
     * `POLYRAY_USAGE_DATABASE_URL`; default unset.
     */
    databaseUrl: setting(maybe(z.string().regex(/^postgres(ql)?:\/\//, { error: 'must start with postgres:// or postgresql://' })), {
      env: 'POLYRAY_USAGE_DATABASE_URL',
      file: 'usageDatabaseUrl',
      read: (raw) => raw || undefined,
      default: undefined,
      doc: 'PostgreSQL of the usage books (history, reports, budgets); unset = Redis books only',
    }),
    /** Apply the database migrations (db/migrations) at start. `POLYRAY_USAGE_DATABASE_MIGRATE`; default true. */
    migrate: setting(z.boolean(), {
      env: 'POLYRAY_USAGE_DATABASE_MIGRATE',
      file: 'usageDatabaseMigrate',
      default: true,
      doc: 'apply the usage database migrations at start (else run `polyray db migrate`)',
    }),
    /**
     * How often a replica cuts its usage into a batch (written to the Redis outbox at once, then to the
     * database): the most usage a replica killed outright can lose from the books of record.
     * `POLYRAY_USAGE_DATABASE_FLUSH_MS`; default 200 ms.
     */
    flushMs: setting(z.number().int().min(10).max(3_600_000), {
      env: 'POLYRAY_USAGE_DATABASE_FLUSH_MS',
      file: 'usageDatabaseFlushMs',
      default: 200,
      doc: 'how often a replica cuts its usage into a batch for the database (the most a replica killed outright loses)',
    }),
    /**
     * Batches a replica keeps while the database does not confirm them (in memory, and in Redis for any
     * replica to deliver); beyond it, new usage accumulates in memory only, bounded by the distinct rows.
     * `POLYRAY_USAGE_MAX_UNCONFIRMED_BATCHES`; default 3600.
     */
    maxUnconfirmed: setting(z.number().int().min(1).max(1_000_000), {
      env: 'POLYRAY_USAGE_MAX_UNCONFIRMED_BATCHES',
      file: 'usageMaxUnconfirmedBatches',
      default: 3600,
      doc: 'batches kept while the database is unreachable (then usage accumulates in memory, bounded by rows)',
    }),
    /** Longest wait for one database write or read. `POLYRAY_USAGE_DATABASE_TIMEOUT_MS`; default 5000 ms. */
    timeoutMs: setting(z.number().int().min(10).max(600_000), {
      env: 'POLYRAY_USAGE_DATABASE_TIMEOUT_MS',
      file: 'usageDatabaseTimeoutMs',
      default: 5000,
      doc: 'longest wait for one usage database statement',
    }),
    /** Hourly rows older than this are deleted. `POLYRAY_USAGE_RETENTION_DAYS`; default 400 days. */
    retentionDays: setting(z.number().int().min(1).max(36_500), {
      env: 'POLYRAY_USAGE_RETENTION_DAYS',
      file: 'usageRetentionDays',
      default: 400,
      doc: 'hourly usage rows are kept this many days',
    }),
    /** Raw batches (the audit trail of what each replica sent) are kept this long. `POLYRAY_USAGE_BATCH_RETENTION_DAYS`; default 30. */
    batchRetentionDays: setting(z.number().int().min(1).max(36_500), {
      env: 'POLYRAY_USAGE_BATCH_RETENTION_DAYS',
      file: 'usageBatchRetentionDays',
      default: 30,
      doc: 'raw usage batches (audit trail) are kept this many days',
    }),
    /**
     * How often each replica reads the fleet's spend of budgeted clients from the database: the most a
     * budget can be overrun by is about what the fleet serves that client in this interval.
     * `POLYRAY_BUDGET_REFRESH_MS`; default 1000 ms.
     */
    budgetRefreshMs: setting(z.number().int().min(50).max(3_600_000), {
      env: 'POLYRAY_BUDGET_REFRESH_MS',
      file: 'budgetRefreshMs',
      default: 1000,
      doc: "how often the fleet's spend of budgeted clients is read (bounds a budget's overrun)",
    }),
    /** Longest range one history query or report may cover, in days. `POLYRAY_USAGE_MAX_RANGE_DAYS`; default 1100 (~3 years). */
    maxRangeDays: setting(z.number().int().min(1).max(36_500), {
      env: 'POLYRAY_USAGE_MAX_RANGE_DAYS',
      file: 'usageMaxRangeDays',
      default: 1100,
      doc: 'longest range one usage history query or report may cover',
    }),
  })
  .strict();

export type UsageConfig = z.output<typeof usageSchema>;
