/**
 * The accounting key layout in Redis (standalone or Cluster), in one place.
 *
 *   <prefix>{client:<id>}:bucket   hash {tokens, ts}: the client's token bucket (redis-bucket.ts)
 *   <prefix>{client:<id>}:usage    hash `<model>|<SOURCE>|<figure>` → total: the client's books (ledger.ts)
 *   <prefix>{client:<id>}:flushseq:<replica>   last usage batch a replica process added (ledger.ts; TTL 7 days)
 *   <prefix>usage:clients          set of the client ids that have books
 *   <prefix>ledger:replica:<id>    a replica process's marker: gone means Redis lost the books (ledger.ts; TTL 7 days)
 *   <prefix>usage:outbox           hash `<replica>:<seq>` → JSON: usage batches not yet confirmed by PostgreSQL (src/usage/books.ts)
 *   <prefix>usage:alive:<replica>  a replica process that delivers its own outbox batches (TTL: a few flushes)
 *
 * The `{client:<id>}` hash tag puts every key of one client in one Cluster hash slot, so a script or a
 * transaction may touch any of them together. The tag is what Cluster hashes whatever the prefix holds:
 * both keys share `<prefix>{client:<id>}`, which contains the first `{` of the key and a `}` after it,
 * so the tag Redis picks lies inside that shared part — unless the prefix contains an empty tag `{}`
 * (Redis then hashes the whole key), which `loadConfig` refuses. A prefix that carries a tag of its own
 * (`{acct}:`) pins all accounting keys to one slot: still correct, just on one node. Keys still begin
 * with the prefix, so `SCAN MATCH <prefix>*` and ACL key patterns keep working.
 *
 * The layout of `polyray:acct:v1:` was `<prefix>bucket:<id>` and `<prefix>usage:<id>` (no tags); the
 * default prefix moved to `polyray:acct:v2:` with this layout, so the two never mix under one prefix.
 */

export class AccountingKeys {
  readonly prefix: string;

  constructor(prefix: string) {
    if (prefix.includes('{}')) {
      throw new TypeError(`AccountingKeys prefix must not contain an empty hash tag "{}" (it would split a client's keys over slots), received "${prefix}"`);
    }
    this.prefix = prefix;
  }

  bucket(clientId: string): string {
    return `${this.prefix}{client:${clientId}}:bucket`;
  }

  usage(clientId: string): string {
    return `${this.prefix}{client:${clientId}}:usage`;
  }

  /** A replica process's marker (ledger.ts): present while Redis still holds the books it flushed. */
  ledgerMarker(replica: string): string {
    return `${this.prefix}ledger:replica:${replica}`;
  }

  /** The last usage batch number a replica process flushed for the client (ledger.ts): same slot as the books. */
  flushSeq(clientId: string, replica: string): string {
    return `${this.prefix}{client:${clientId}}:flushseq:${replica}`;
  }

  /** Usage batches waiting for the database, any replica's (src/usage/books.ts). One key of its own. */
  get usageOutbox(): string {
    return `${this.prefix}usage:outbox`;
  }

  /** Present while a replica process is alive to deliver its own outbox batches. */
  usageAlive(replica: string): string {
    return `${this.prefix}usage:alive:${replica}`;
  }

  /** The set of client ids with books. One key (one slot) of its own, written with one SADD per flush. */
  get clients(): string {
    return `${this.prefix}usage:clients`;
  }
}
