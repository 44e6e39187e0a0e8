/**
 * OpenTelemetry tracing, off unless POLYRAY_OTEL_ENDPOINT is set (src/telemetry/config.ts).
 *
 * One trace per request, continued from the caller's W3C `traceparent` (the router's):
 *
 *   POST /graphql (or the REST route)          the server span, named after the GraphQL operation
 *     polyray.quota.reserve / .settle          the request's account (src/accounting/request.ts)
 *     polyray.cache.lookup                     one pipeline call's read through the tiers
 *       polyray.cache.read {tier}              one per tier asked
 *     polyray.tokenize                         the misses' tokenisation (a tokenizer thread)
 *     polyray.image.fetch                      an image URL fetched
 *     polyray.queue.wait                       from the submit until its last input starts running
 *     polyray.inference.batch                  the batch that ran the request's inputs; a batch serves many
 *                                              requests, so it is the child of the first and linked to all
 *
 * Spans are created from the active context (AsyncLocalStorage, entered by the HTTP hooks around each
 * route's handler), except where work leaves the request's async chain: the queue keeps each submit's
 * context with its items. Log lines written inside a request carry its `trace_id` and `span_id`.
 *
 * While tracing is off, `tracing.on` is false and every helper here returns at once: no span objects on the
 * hit path.
 */
import { type Attributes, type Context, context, type Link, ROOT_CONTEXT, type Span, SpanKind, SpanStatusCode, trace, type Tracer } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, NodeTracerProvider, ParentBasedSampler, type SpanExporter, TraceIdRatioBasedSampler } from '@opentelemetry/sdk-trace-node';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';
import type { TelemetryConfig } from './config.ts';

/** Read on hot paths: whether spans are being recorded at all. */
export const tracing = { on: false };

let tracer: Tracer | undefined;
const propagator = new W3CTraceContextPropagator();

export interface Tracing {
  /** Exports what has ended so far. */
  flush(): Promise<void>;
  /** Exports what is left and stops recording. */
  shutdown(): Promise<void>;
}

/**
 * Starts recording when the config names an endpoint (or a test passes an exporter); undefined otherwise.
 * Process-wide: OpenTelemetry's context and tracer provider are globals, so one server per process traces.
 */
export function startTracing(config: TelemetryConfig, version: string, exporter?: SpanExporter): Tracing | undefined {
  const out = exporter ?? (config.endpoint === undefined ? undefined : new OTLPTraceExporter({ url: config.endpoint }));
  if (!out) return undefined;
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: config.serviceName, [ATTR_SERVICE_VERSION]: version }),
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.sampleRatio) }),
    spanProcessors: [new BatchSpanProcessor(out, { scheduledDelayMillis: 1000 })],
  });
  // Registers the AsyncLocalStorage context manager and the W3C propagator too.
  provider.register();
  tracer = provider.getTracer('polyray', version);
  tracing.on = true;
  return {
    flush: () => provider.forceFlush(),
    shutdown: async () => {
      tracing.on = false;
      tracer = undefined;
      await provider.shutdown();
      trace.disable();
      context.disable();
    },
  };
}

/** The caller's trace context from its `traceparent` / `tracestate` headers (none: a new trace). */
export function extractContext(headers: Record<string, string | string[] | undefined>): Context {
  return propagator.extract(ROOT_CONTEXT, headers, {
    keys: (h) => Object.keys(h),
    get: (h, k) => h[k],
  });
}

/** A server span for an incoming request, child of the caller's context; undefined while off. */
export function startServerSpan(name: string, parent: Context, attributes: Attributes): Span | undefined {
  return tracer?.startSpan(name, { kind: SpanKind.SERVER, attributes }, parent);
}

/** A span under `parent` (default: the active context); undefined while off. */
export function startSpan(name: string, attributes?: Attributes, parent?: Context, links?: Link[]): Span | undefined {
  if (!tracer) return undefined;
  return tracer.startSpan(name, { ...(attributes ? { attributes } : {}), ...(links ? { links } : {}) }, parent ?? context.active());
}

/** Runs `fn` inside a span of the active context (children of it nest under it); `fn` alone while off. */
export async function inSpan<T>(name: string, attributes: Attributes, fn: (span: Span | undefined) => Promise<T>): Promise<T> {
  if (!tracer) return fn(undefined);
  const span = tracer.startSpan(name, { attributes }, context.active());
  try {
    return await context.with(trace.setSpan(context.active(), span), () => fn(span));
  } catch (e) {
    failed(span, e);
    throw e;
  } finally {
    span.end();
  }
}

/** Marks a span failed with the error's code (a PolyrayError's) or name, never its message's data. */
export function failed(span: Span | undefined, e: unknown): void {
  if (!span) return;
  const code = typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string' ? e.code : e instanceof Error ? e.name : 'error';
  span.setStatus({ code: SpanStatusCode.ERROR, message: code });
  span.setAttribute('polyray.error.code', code);
}

/** The active context while tracing (to carry past the request's async chain), else undefined. */
export function activeContext(): Context | undefined {
  return tracer ? context.active() : undefined;
}

/** Runs `fn` with `ctx` active. */
export function withContext<T>(ctx: Context, fn: () => T): T {
  return context.with(ctx, fn);
}

/** `context` with `span` as its current span. */
export function contextWith(ctx: Context, span: Span): Context {
  return trace.setSpan(ctx, span);
}

/** A link to the span current in `ctx`, if any. */
export function linkTo(ctx: Context): Link | undefined {
  const sc = trace.getSpanContext(ctx);
  return sc ? { context: sc } : undefined;
}

/** `trace_id` / `span_id` of the active span, for log lines (empty while off or outside a request). */
export function traceFields(): Record<string, string> {
  if (!tracing.on) return {};
  const sc = trace.getSpanContext(context.active());
  return sc ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}
