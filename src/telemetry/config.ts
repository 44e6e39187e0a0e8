/**
 * Options of OpenTelemetry tracing (src/telemetry/tracing.ts). Off unless an OTLP endpoint is set.
 * Declared with src/config/define.ts; src/config assembles and validates them.
 */
import { z } from 'zod';
import { maybe, setting } from '../config/define.ts';

export const telemetrySchema = z
  .object({
    /**
     * OTLP/HTTP (JSON) traces endpoint of a collector, e.g. `http://otel-collector:4318/v1/traces`. Unset: no
     * tracing, and no cost on the request path. `POLYRAY_OTEL_ENDPOINT`; default unset.
     */
    endpoint: setting(maybe(z.string().url()), {
      env: 'POLYRAY_OTEL_ENDPOINT',
      file: 'otelEndpoint',
      default: undefined,
      doc: 'OTLP/HTTP traces URL (e.g. `http://collector:4318/v1/traces`); unset: tracing off',
    }),
    /** `service.name` of the spans. `POLYRAY_OTEL_SERVICE_NAME`; default polyray. */
    serviceName: setting(z.string().min(1).max(128), {
      env: 'POLYRAY_OTEL_SERVICE_NAME',
      file: 'otelServiceName',
      default: 'polyray',
      doc: '`service.name` of the spans',
    }),
    /**
     * Share of new traces recorded (0–1). A request whose `traceparent` says sampled (or not) is followed as
     * it says, so a router's sampling decision holds. `POLYRAY_OTEL_SAMPLE_RATIO`; default 1.
     */
    sampleRatio: setting(z.number().min(0).max(1), {
      env: 'POLYRAY_OTEL_SAMPLE_RATIO',
      file: 'otelSampleRatio',
      default: 1,
      doc: 'share of new traces recorded; a `traceparent` from the router decides for its request',
    }),
  })
  .strict();

export type TelemetryConfig = z.infer<typeof telemetrySchema>;
