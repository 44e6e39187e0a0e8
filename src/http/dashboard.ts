/**
 * The dashboard: `/dashboard` (page), `/dashboard/data.json` (its data), and static assets — the page's
 * script and Chart.js, served from node_modules (no CDN: the page works offline).
 *
 * The page and its data need an admin key, the same one GraphQL takes: `x-api-key` / `Authorization:
 * Bearer` headers, or `?key=` on the page URL (the page then sends it as a header to data.json). In the
 * embedded default (no clients file) every request is the local development client, an admin.
 * The assets hold no data and are public.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isPolyrayError } from '../errors.ts';
import type { LivePolicy, PolicyController } from '../policy/controller.ts';
import type { EstimatedResult } from '../policy/estimate.ts';
import type { SimSetting } from '../policy/simulator.ts';
import type { Tracer, TracerStats } from '../policy/trace.ts';
import type { ServiceStats } from '../service/types.ts';

export const DASHBOARD_DIR = fileURLToPath(new URL('../../dashboard/', import.meta.url));

/** Who is calling, as far as the dashboard cares. Throws a PolyrayError (UNAUTHENTICATED) for a bad key. */
export type DashboardAuthenticate = (headers: Record<string, string | string[] | undefined>) => { id: string; role: string };

export interface UsageFigure {
  client: string;
  model: string;
  items: number;
  cost: number;
}

export interface DashboardSources {
  authenticate: DashboardAuthenticate;
  policy: PolicyController;
  tracer: Tracer;
  stats: () => ServiceStats;
  /** Billed usage per client and model (the accounting ledger); without it the trace window is used. */
  usage?: () => Promise<{ unit: string; fleetWide: boolean; rows: UsageFigure[] }>;
  /** Cost over time from the usage database (src/usage): the last 24 h by hour, the last 30 days by day. */
  history?: () => Promise<UsageHistoryData>;
}

/** One bucket of one client's cost over time. */
export interface HistoryPoint {
  client: string;
  /** Start of the bucket, ISO 8601 UTC. */
  start: string;
  items: number;
  cost: number;
}

export interface UsageHistoryData {
  unit: string;
  last24h: HistoryPoint[];
  last30d: HistoryPoint[];
}

export interface DashboardSetting {
  memoryBytes: number;
  memoryTtlMs: number;
  globalTtlMs: number | null;
}

export interface DashboardPoint extends DashboardSetting {
  memoryHitRate: number;
  globalHitRate: number;
  computeRate: number;
  costPerHour: number;
  /** 95 % half-widths (0 when the window is not sampled). */
  memoryHitRateError: number;
  globalHitRateError: number;
  costPerHourError: number;
}

export interface DashboardData {
  generatedAt: number;
  service: { items: number; bySource: ServiceStats['bySource'] };
  setting: DashboardSetting & { autoApply: boolean };
  trace: TracerStats;
  usage: { source: 'ledger' | 'trace'; unit: string; fleetWide: boolean; rows: UsageFigure[] };
  /** Null without a usage database (or while it does not answer). */
  history: UsageHistoryData | null;
  hitRates: { t: number; memory: number; global: number; computed: number }[];
  policy: {
    computedAt: number;
    windowRecords: number;
    windowSpanMs: number;
    sampleRate: number;
    /** Share of the window's items from heavy keys traced at rate 1. */
    exactShare: number;
    /** Models in the window: the population simulated and measured below. */
    models: string[];
    current: DashboardPoint;
    recommended: DashboardPoint;
    savingFraction: number;
    savingPerHour: number;
    savingPerHourError: number;
    /** The saving exceeds its error bar (what auto-apply requires). */
    significant: boolean;
    /** Measured over the same window: the sampled keys and all keys (joins and repeats as memory hits). */
    measured: LivePolicy['measured'];
    grid: DashboardPoint[];
  } | null;
}

function point(r: EstimatedResult): DashboardPoint {
  const s: SimSetting = r.setting;
  return {
    memoryHitRateError: r.error.memoryHitRate,
    globalHitRateError: r.error.globalHitRate,
    costPerHourError: r.error.costPerHour,
    memoryBytes: s.memoryBytes,
    memoryTtlMs: s.memoryTtlMs,
    globalTtlMs: s.globalTtlMs,
    memoryHitRate: r.memoryHitRate,
    globalHitRate: r.globalHitRate,
    computeRate: r.computeRate,
    costPerHour: r.costPerHour,
  };
}

export async function dashboardData(src: DashboardSources): Promise<DashboardData> {
  const stats = src.stats();
  const live = src.policy.latest();
  let usage: DashboardData['usage'];
  const ledger = src.usage ? await src.usage().catch(() => undefined) : undefined;
  if (ledger) usage = { source: 'ledger', ...ledger };
  else {
    usage = {
      source: 'trace',
      unit: 'J',
      fleetWide: false,
      rows: src.policy.usage().map((u) => ({ client: u.client, model: u.model, items: u.items, cost: u.joules })),
    };
  }
  return {
    generatedAt: Date.now(),
    service: { items: stats.items, bySource: stats.bySource },
    setting: { ...src.policy.effective(), autoApply: src.policy.autoApply },
    trace: src.tracer.stats(),
    usage,
    history: src.history ? await src.history().catch(() => null) : null,
    hitRates: src.policy.series(),
    policy: live
      ? {
          computedAt: live.computedAt,
          windowRecords: live.windowRecords,
          windowSpanMs: live.windowSpanMs,
          sampleRate: live.sampleRate,
          exactShare: live.exactShare,
          models: live.models,
          current: point(live.current),
          recommended: point(live.recommended),
          savingFraction: live.savingFraction,
          savingPerHour: live.savingPerHour,
          savingPerHourError: live.savingPerHourError,
          significant: live.significant,
          measured: live.measured,
          grid: live.results.map(point),
        }
      : null,
  };
}

/** A Map, not an object: a name such as `constructor` or `__proto__` must be unknown, not a prototype's member. */
const ASSETS = new Map<string, { file: () => string; type: string }>([
  ['app.js', { file: () => path.join(DASHBOARD_DIR, 'app.js'), type: 'text/javascript; charset=utf-8' }],
  ['style.css', { file: () => path.join(DASHBOARD_DIR, 'style.css'), type: 'text/css; charset=utf-8' }],
  [
    'chart.umd.min.js',
    {
      file: () => path.join(path.dirname(createRequire(import.meta.url).resolve('chart.js')), 'chart.umd.min.js'),
      type: 'text/javascript; charset=utf-8',
    },
  ],
]);

function authorize(src: DashboardSources, req: FastifyRequest, reply: FastifyReply): boolean {
  const headers: Record<string, string | string[] | undefined> = { ...req.headers };
  const q = (req.query ?? {}) as Record<string, unknown>;
  if (typeof q['key'] === 'string' && q['key'] !== '' && !headers['authorization'] && !headers['x-api-key']) headers['x-api-key'] = q['key'];
  try {
    const who = src.authenticate(headers);
    if (who.role !== 'admin') {
      void reply.code(403).send({ error: 'FORBIDDEN', message: 'The dashboard needs an admin key' });
      return false;
    }
    return true;
  } catch (e) {
    const message = isPolyrayError(e) ? e.message : 'An admin API key is required';
    void reply.code(401).send({ error: 'UNAUTHENTICATED', message });
    return false;
  }
}

export function registerDashboardRoutes(app: FastifyInstance, src: DashboardSources): void {
  const cache = new Map<string, Buffer>();
  const asset = async (name: string): Promise<Buffer> => {
    let b = cache.get(name);
    if (!b) {
      b = await readFile(ASSETS.get(name)!.file());
      cache.set(name, b);
    }
    return b;
  };
  app.get('/dashboard', async (req, reply) => {
    if (!authorize(src, req, reply)) return reply;
    return reply
      .header('content-type', 'text/html; charset=utf-8')
      .header('cache-control', 'no-store')
      .send(await readFile(path.join(DASHBOARD_DIR, 'index.html')));
  });
  app.get('/dashboard/data.json', async (req, reply) => {
    if (!authorize(src, req, reply)) return reply;
    return reply.header('cache-control', 'no-store').send(await dashboardData(src));
  });
  app.get<{ Params: { name: string } }>('/dashboard/assets/:name', async (req, reply) => {
    const a = ASSETS.get(req.params.name);
    if (!a) return reply.code(404).send({ error: 'NOT_FOUND' });
    return reply
      .header('content-type', a.type)
      .header('cache-control', 'public, max-age=3600')
      .send(await asset(req.params.name));
  });
}
