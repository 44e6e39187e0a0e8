/**
 * Server spans for the HTTP routes that do work (GraphQL, the OpenAI and TEI routes, the usage and admin
 * routes): started when the request arrives, continued from its `traceparent`, made active around the
 * route's handler (so everything the handler starts nests under it and its log lines carry the trace id),
 * ended with the status code when the answer is sent. Health, metrics and static pages are not traced.
 * Registered only while tracing is on.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Logger } from '../log.ts';
import { contextWith, extractContext, startServerSpan, withContext } from './tracing.ts';
import { ROOT_CONTEXT, type Span, SpanStatusCode } from '@opentelemetry/api';

/** The landing page, health, metrics and static pages. */
const UNTRACED = /^\/(healthz|readyz|metrics|favicon\.ico|graphiql|dashboard)?(\/|$)/;

export function registerHttpTracing(app: FastifyInstance, logger: Logger): void {
  const spans = new WeakMap<FastifyRequest, { span: Span; start: number }>();
  app.addHook('onRequest', (req, _reply, done) => {
    const path = req.url.split('?', 1)[0]!;
    if (UNTRACED.test(path)) {
      done();
      return;
    }
    const route = req.routeOptions.url ?? path;
    const span = startServerSpan(`${req.method} ${route}`, extractContext(req.headers), {
      'http.request.method': req.method,
      'url.path': path,
      'http.route': route,
    });
    if (span) spans.set(req, { span, start: performance.now() });
    done();
  });
  // The handler runs inside the request's context: its promises, timers and log lines keep it.
  app.addHook('preHandler', (req, _reply, done) => {
    const s = spans.get(req);
    if (!s) {
      done();
      return;
    }
    withContext(contextWith(ROOT_CONTEXT, s.span), () => done());
  });
  app.addHook('onResponse', (req, reply, done) => {
    const s = spans.get(req);
    if (s) {
      spans.delete(req);
      s.span.setAttribute('http.response.status_code', reply.statusCode);
      if (reply.statusCode >= 500) s.span.setStatus({ code: SpanStatusCode.ERROR });
      s.span.end();
      const sc = s.span.spanContext();
      logger.debug(
        { trace_id: sc.traceId, span_id: sc.spanId, route: req.routeOptions.url, status: reply.statusCode, ms: Math.round(performance.now() - s.start) },
        'request',
      );
    }
    done();
  });
}
