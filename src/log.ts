/**
 * Structured logging (pino). Logs carry counts, ids, model names and timings — never input text,
 * vectors or cache keys in clear; the redaction list is a second line of defence for fields that could.
 */
import { pino, type Logger } from 'pino';
import { traceFields } from './telemetry/tracing.ts';

export type { Logger };

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'polyray' },
      // Inside a traced request: its trace_id and span_id (nothing while tracing is off).
      mixin: traceFields,
      redact: { paths: ['text', 'input', 'inputs', 'vector', 'key', 'keys', 'req.headers.authorization', 'req.headers["x-api-key"]'], censor: '[redacted]' },
    },
    destination,
  );
}

/** A logger that discards everything, for components built without one. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
