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

/** How late a deadline timer may fire before the event loop counts as stalled rather than Redis as slow. */
const STALL_SLACK_MS = 20;
/** Re-arms after a stall before the deadline is declared anyway (a loop that keeps stalling). */
const MAX_STALL_REARMS = 3;

/**
 * Settles like `p` when it settles within `ms`, else rejects with `DeadlineExceeded` (`p`'s own outcome
 * is then ignored; a late rejection is not reported as unhandled). `ms` undefined: `p` as it is.
 *
 * The deadline is a timer on the same event loop as the reply, so a loop stalled by other work (a long
 * synchronous task) would fire it with the reply already waiting unread in the socket: Redis would be
 * judged down because this process was busy. So when the timer fires, the verdict waits for the next
 * check phase (`setImmediate`), after the poll phase has read whatever arrived; and a timer that fired
 * late by more than STALL_SLACK_MS and half the deadline — the loop was stalled — is re-armed for another
 * `ms` (up to MAX_STALL_REARMS times), so Redis gets the time it was promised on a loop that runs.
 */
export function withDeadline<T>(p: Promise<T>, ms: number | undefined, label: DeadlineLabel): Promise<T> {
  if (ms === undefined) return p;
  let timer: NodeJS.Timeout | undefined;
  let immediate: NodeJS.Immediate | undefined;
  const late = new Promise<never>((_, reject) => {
    let rearms = 0;
    const arm = (): void => {
      const due = performance.now() + ms;
      timer = setTimeout(() => {
        const lateBy = performance.now() - due;
        if (lateBy > Math.max(STALL_SLACK_MS, ms / 2) && rearms < MAX_STALL_REARMS) {
          rearms++;
          arm();
          return;
        }
        immediate = setImmediate(() => reject(new DeadlineExceeded(ms, label)));
      }, ms);
    };
    arm();
  });
  return Promise.race([p, late]).finally(() => {
    clearTimeout(timer);
    if (immediate) clearImmediate(immediate);
  });
}
