/**
 * How a request's computations queue (src/runtime/dispatch-queue.ts `SubmitOptions`), from its client and
 * headers, for every entry point:
 *
 *   weight     the client's (clients file `weight`, default 1)
 *   priority   `batch` when the client is a batch client or the request says `x-polyray-priority: batch`;
 *              a request can lower its priority, never raise it
 *   deadline   now + the smaller of `x-request-timeout-ms` and POLYRAY_REQUEST_TIMEOUT_MS (none when 0)
 *   signal     aborts when the HTTP connection closes before the answer was sent (the caller went away)
 *   arrivedAt  now: admission by time counts what the request spent before its inputs were queued
 *   trace      the request's trace context while tracing is on (the queue's spans are its children)
 */
import type { ServerResponse } from 'node:http';
import type { Client } from '../accounting/clients.ts';
import type { SubmitOptions } from '../runtime/dispatch-queue.ts';
import { activeContext } from '../telemetry/tracing.ts';

type Headers = Record<string, string | string[] | undefined>;

/** `now` is the queue's clock (`performance.now()` in milliseconds). */
export function serveOptions(client: Client, headers: Headers, timeoutMs: number, response: ServerResponse | undefined, now: number): SubmitOptions {
  const asked = headers['x-polyray-priority'];
  const batch = client.priority === 'batch' || (typeof asked === 'string' && asked.trim().toLowerCase() === 'batch');
  const timeout = deadlineMs(headers['x-request-timeout-ms'], timeoutMs);
  const trace = activeContext();
  // Assigned, not spread in: this runs for every request, cache hits included.
  const options: SubmitOptions = { weight: client.weight ?? 1, priority: batch ? 'batch' : 'interactive', arrivedAt: now };
  if (timeout > 0) options.deadline = now + timeout;
  if (trace) options.trace = trace;
  if (response) {
    // Made when first read: only a request that queues work needs it, and an AbortController per request
    // cost a cache hit ~2.6 µs (createAbortSignal was the largest single function in a profile of
    // bench:hit's one-post rows).
    let signal: AbortSignal | undefined;
    Object.defineProperty(options, 'signal', { enumerable: true, get: () => (signal ??= closedSignal(response)) });
  }
  return options;
}

/** The request's timeout: the header's when it is a positive integer below the configured one (0: none). */
export function deadlineMs(header: string | string[] | undefined, configured: number): number {
  const asked = typeof header === 'string' && /^\d{1,9}$/.test(header.trim()) ? Number(header.trim()) : 0;
  if (asked > 0 && (configured === 0 || asked < configured)) return asked;
  return configured;
}

/**
 * Aborts when the response's connection closes before the response was finished (at once when it already
 * has: the signal is made when first read).
 */
function closedSignal(response: ServerResponse): AbortSignal {
  const gone = new AbortController();
  if (response.destroyed && !response.writableFinished) {
    gone.abort();
    return gone.signal;
  }
  response.once('close', () => {
    if (!response.writableFinished) gone.abort();
  });
  return gone.signal;
}
