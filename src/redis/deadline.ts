/**
 * The one deadline helper: a promise that settles like the call it bounds, or rejects with
 * `DeadlineExceeded` once the deadline has passed.
 *
 * Why callers need it on top of ioredis' own timeouts: a Cluster client retries internally (after a
 * closed node connection, CLUSTERDOWN or TRYAGAIN it waits and tries again, up to 16 times), so its
 * `commandTimeout` does not bound a call; and a pipeline or a fan-out over nodes has no timeout of its
 * own. The bounded call itself is not cancelled: a command already sent may still be applied later, which
 * its caller must tolerate (the ledger's numbered batches, a cache write landing late).
 */

/** Names what did not answer, for the error message. */
export interface DeadlineLabel {
  /** What was waited for, e.g. `accounting Redis`. */
  what: string;
  /** The setting that sets the deadline, named in the message so an operator knows what to change. */
  option?: string;
}

/** The bounded call had not settled when its deadline passed. */
export class DeadlineExceeded extends Error {
  override readonly name = 'DeadlineExceeded';
  /** The deadline, milliseconds. */
  readonly ms: number;

  constructor(ms: number, label: DeadlineLabel) {
    super(`${label.what} did not answer within ${ms} ms${label.option ? ` (${label.option})` : ''}`);
    this.ms = ms;
  }
}

/**
 * Settles like `p` when it settles within `ms`, else rejects with `DeadlineExceeded` (`p`'s own outcome
 * is then ignored; a late rejection is not reported as unhandled). `ms` undefined: `p` as it is.
 */
export function withDeadline<T>(p: Promise<T>, ms: number | undefined, label: DeadlineLabel): Promise<T> {
  if (ms === undefined) return p;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineExceeded(ms, label)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
