/**
 * Public error codes and the one error class that carries them.
 *
 * Every error a client can see has a code from `ErrorCode`; anything else is an internal error and is
 * masked before it leaves the service (see `src/resolvers/format-error.ts`). Messages say what was
 * expected, what arrived, and which option or argument to change — never input text, vectors or keys.
 */

export const ErrorCode = {
  BAD_USER_INPUT: 'BAD_USER_INPUT',
  MODEL_NOT_FOUND: 'MODEL_NOT_FOUND',
  MODEL_NOT_READY: 'MODEL_NOT_READY',
  INPUT_TOO_LARGE: 'INPUT_TOO_LARGE',
  TOO_MANY_INPUTS: 'TOO_MANY_INPUTS',
  /** The reply an operation asks for would exceed POLYRAY_MAX_RESPONSE_BYTES (refused before any work). */
  RESPONSE_TOO_LARGE: 'RESPONSE_TOO_LARGE',
  /** Too many fields selected, or nested too deep (POLYRAY_MAX_FIELDS, POLYRAY_MAX_DEPTH). */
  QUERY_TOO_COMPLEX: 'QUERY_TOO_COMPLEX',
  UNSUPPORTED_INPUT: 'UNSUPPORTED_INPUT',
  OVERLOADED: 'OVERLOADED',
  /** The request's deadline passed (or its caller went away) before its inputs were computed; nothing was charged. */
  DEADLINE_EXCEEDED: 'DEADLINE_EXCEEDED',
  SHUTTING_DOWN: 'SHUTTING_DOWN',
  UNAUTHENTICATED: 'UNAUTHENTICATED',
  FORBIDDEN: 'FORBIDDEN',
  QUOTA_EXCEEDED: 'QUOTA_EXCEEDED',
  /** The client has spent its cost budget for the current period (clients file `budget`); nothing was run. */
  BUDGET_EXCEEDED: 'BUDGET_EXCEEDED',
  /** Usage history needs the usage database (POLYRAY_USAGE_DATABASE_URL), which is not configured or not answering. */
  HISTORY_UNAVAILABLE: 'HISTORY_UNAVAILABLE',
  INFERENCE_FAILED: 'INFERENCE_FAILED',
  INTERNAL_SERVER_ERROR: 'INTERNAL_SERVER_ERROR',
  /** An image URL points somewhere Polyray may not fetch from (scheme, internal address). */
  IMAGE_FETCH_FORBIDDEN: 'IMAGE_FETCH_FORBIDDEN',
  /** An image exceeds the byte or pixel limit. */
  IMAGE_TOO_LARGE: 'IMAGE_TOO_LARGE',
  /** The bytes are not a JPEG, PNG, WebP or GIF image that can be decoded. */
  IMAGE_UNREADABLE: 'IMAGE_UNREADABLE',
  /** The image server did not deliver the image within the fetch time limit. */
  IMAGE_FETCH_TIMEOUT: 'IMAGE_FETCH_TIMEOUT',
  /** Any other fetch failure: DNS, connection, TLS (certificate or handshake), HTTP status, too many redirects. */
  IMAGE_FETCH_FAILED: 'IMAGE_FETCH_FAILED',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** HTTP status a REST route answers for each code. */
export const httpStatusOf: Record<ErrorCode, number> = {
  BAD_USER_INPUT: 400,
  MODEL_NOT_FOUND: 404,
  MODEL_NOT_READY: 503,
  INPUT_TOO_LARGE: 413,
  TOO_MANY_INPUTS: 413,
  RESPONSE_TOO_LARGE: 413,
  QUERY_TOO_COMPLEX: 400,
  UNSUPPORTED_INPUT: 400,
  OVERLOADED: 503,
  DEADLINE_EXCEEDED: 504,
  SHUTTING_DOWN: 503,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  QUOTA_EXCEEDED: 429,
  // 402, not 429: retrying does not help until the period renews, and SDKs retry 429 on their own.
  BUDGET_EXCEEDED: 402,
  HISTORY_UNAVAILABLE: 503,
  INFERENCE_FAILED: 500,
  INTERNAL_SERVER_ERROR: 500,
  IMAGE_FETCH_FORBIDDEN: 403,
  IMAGE_TOO_LARGE: 413,
  IMAGE_UNREADABLE: 422,
  IMAGE_FETCH_TIMEOUT: 504,
  IMAGE_FETCH_FAILED: 502,
};

/** An error whose message and extensions are safe to show a client. */
export class PolyrayError extends Error {
  readonly code: ErrorCode;
  readonly extensions: Record<string, unknown>;
  constructor(code: ErrorCode, message: string, extensions: Record<string, unknown> = {}) {
    // A client's mistake (a 4xx code) is an answer, not a fault, and carries no stack trace: capturing one,
    // async frames included, cost ~9 µs, and one request can be refused thousands of inputs (10,000 data:
    // URLs that are no image took 180 ms of the event loop in stack traces alone). Server-side codes keep
    // theirs for the logs.
    const limit = Error.stackTraceLimit;
    if (httpStatusOf[code] < 500) Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
    this.name = 'PolyrayError';
    this.code = code;
    this.extensions = extensions;
  }
}

export function isPolyrayError(e: unknown): e is PolyrayError {
  return e instanceof PolyrayError;
}
