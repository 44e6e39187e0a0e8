/**
 * `polyray accounting migrate-books`: moves usage books written under the v1 key layout
 * (`<old prefix>usage:<id>`, listed in `<old prefix>usage:clients`; standalone Redis only) into the current
 * layout (src/accounting/keys.ts), so an upgrade keeps every client's billed history.
 *
 * Exactly once per client, also when interrupted and run again:
 *   1. read the old hash;
 *   2. one script on the client's slot adds every figure to the new books and sets the client's marker
 *      key `<prefix>{client:<id>}:migrated-v1` — unless the marker is already there;
 *   3. delete the old hash, and the id from the old set.
 * A run that stops after 2 finds the marker next time and only does 3. Buckets are not migrated: they refill
 * by themselves. Replicas may keep running meanwhile: new usage goes to the new keys either way.
 */
import { parseArgs } from 'node:util';
import type { PolyrayConfig } from '../config/index.ts';
import { createAccountingRedis, type AccountingRedis } from './redis-client.ts';
import { AccountingKeys } from './keys.ts';

export interface MigrateOptions {
  /** Where the v1 books are (a standalone Redis; v1 never ran on a Cluster). */
  source: AccountingRedis;
  /** Prefix of the v1 keys, e.g. `polyray:acct:v1:`. */
  fromPrefix: string;
  /** The accounting Redis of the current configuration. */
  target: AccountingRedis;
  keys: AccountingKeys;
  /** Called once per client with what was done. */
  onClient?: (r: ClientMigration) => void;
}

export interface ClientMigration {
  clientId: string;
  /** `moved`: figures added now; `already`: a previous run added them, only the old keys were removed; `empty`: nothing to move. */
  outcome: 'moved' | 'already' | 'empty';
  fields: number;
}

export interface MigrateSummary {
  clients: number;
  moved: number;
  already: number;
  empty: number;
  fields: number;
}

/** Key of the marker that says a client's v1 books were added to the current ones. */
export function migratedMarker(keys: AccountingKeys, clientId: string): string {
  return `${keys.usage(clientId).slice(0, -':usage'.length)}:migrated-v1`;
}

/** KEYS: books, marker. ARGV: marker value, then field, value, field, value, … Returns 1 if added, 0 if the marker was there. */
const ADD_ONCE = `
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[1])
return 1`;

export async function migrateV1Books(o: MigrateOptions): Promise<MigrateSummary> {
  if (o.fromPrefix === o.keys.prefix) throw new TypeError(`--from-prefix must differ from the current prefix (${o.keys.prefix})`);
  const oldClients = `${o.fromPrefix}usage:clients`;
  const summary: MigrateSummary = { clients: 0, moved: 0, already: 0, empty: 0, fields: 0 };
  for (const clientId of (await o.source.smembers(oldClients)).sort()) {
    const oldKey = `${o.fromPrefix}usage:${clientId}`;
    const figures = await o.source.hgetall(oldKey);
    const entries = Object.entries(figures);
    let outcome: ClientMigration['outcome'] = entries.length === 0 ? 'empty' : 'moved';
    if (entries.length > 0) {
      const marker = migratedMarker(o.keys, clientId);
      const usage = o.keys.usage(clientId);
      // One script on two keys of one slot: atomic on standalone and Cluster alike.
      const added = await o.target.eval(ADD_ONCE, 2, usage, marker, new Date().toISOString(), ...entries.flat());
      if (added !== 1) outcome = 'already';
      // Listed for usageAll; idempotent.
      await o.target.sadd(o.keys.clients, clientId);
    }
    await o.source.del(oldKey);
    await o.source.srem(oldClients, clientId);
    summary.clients++;
    summary[outcome]++;
    if (outcome === 'moved') summary.fields += entries.length;
    o.onClient?.({ clientId, outcome, fields: entries.length });
  }
  return summary;
}

export const ACCOUNTING_USAGE = `  accounting migrate-books [--from-prefix PREFIX] [--from-url redis://HOST:PORT]
                                move usage books of the v1 key layout (default prefix polyray:acct:v1:,
                                on the accounting Redis unless --from-url) into the current one; safe to rerun
`;

/** Runs `accounting <sub> ...` against the configured accounting Redis; returns the exit code. */
export async function accountingCommand(
  sub: string | undefined,
  args: string[],
  config: PolyrayConfig['accounting'],
  io: { out: (s: string) => void; err: (s: string) => void },
): Promise<number> {
  if (sub !== 'migrate-books') {
    io.err(ACCOUNTING_USAGE);
    return 2;
  }
  const { values } = parseArgs({ args, options: { 'from-prefix': { type: 'string' }, 'from-url': { type: 'string' } } });
  if (config.redis.kind === 'none') {
    io.err('accounting migrate-books: no accounting Redis is configured (POLYRAY_QUOTA_REDIS_URL, REDIS_URL, ...): nothing to migrate into\n');
    return 2;
  }
  const fromUrl = values['from-url'] ?? (config.redis.kind === 'standalone' ? config.redis.url : undefined);
  if (!fromUrl) {
    io.err('accounting migrate-books: the accounting Redis is a Cluster; name the standalone Redis that holds the v1 books with --from-url\n');
    return 2;
  }
  const target = createAccountingRedis(config.redis, { timeoutMs: 10_000 });
  // The v1 books' server: the same client settings, but ioredis' default 10 s to connect (a one-off CLI may wait).
  const source = createAccountingRedis({ kind: 'standalone', url: fromUrl }, { timeoutMs: 10_000, connectTimeoutMs: 10_000 });
  try {
    await Promise.all([target.connect(), source.connect()]);
    const summary = await migrateV1Books({
      source,
      target,
      fromPrefix: values['from-prefix'] ?? 'polyray:acct:v1:',
      keys: new AccountingKeys(config.keyPrefix),
      onClient: (r) => io.out(`${JSON.stringify(r)}\n`),
    });
    io.out(`${JSON.stringify({ summary })}\n`);
    return 0;
  } finally {
    source.disconnect();
    target.disconnect();
  }
}
