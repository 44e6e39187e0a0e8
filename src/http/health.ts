/**
 * Liveness and readiness routes. `/healthz` answers while the process serves HTTP; `/readyz` only once
 * models are loaded and until shutdown begins, so a load balancer sends traffic to replicas that can
 * answer it.
 */
import type { FastifyInstance } from 'fastify';

export interface HealthProbes {
  live: () => boolean;
  ready: () => boolean;
  detail: () => Record<string, unknown>;
}

export function registerHealthRoutes(app: FastifyInstance, probes: HealthProbes): void {
  app.get('/healthz', async (_req, reply) => reply.code(probes.live() ? 200 : 503).send({ ok: probes.live() }));
  app.get('/readyz', async (_req, reply) => {
    const ok = probes.ready();
    return reply.code(ok ? 200 : 503).send({ ok, ...probes.detail() });
  });
}
