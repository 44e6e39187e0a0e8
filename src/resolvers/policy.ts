/**
 * `Query.cachePolicy` (admin only): the live recommendation of src/policy/controller.ts, shaped for GraphQL.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { LivePolicy } from '../policy/controller.ts';
import type { EstimatedResult } from '../policy/estimate.ts';
import type { PolyrayContext } from './context.ts';

/** Admin: the request's authenticated client has the admin role (the local development client does). */
export function isAdmin(ctx: PolyrayContext): boolean {
  return ctx.scope.account.client.role === 'admin';
}

function setting(r: EstimatedResult, hours: number) {
  const perHour = (j: number) => (hours > 0 ? j / hours : j);
  return {
    memoryBytes: r.setting.memoryBytes,
    memoryTtlSeconds: r.setting.memoryTtlMs / 1000,
    globalTtlSeconds: r.setting.globalTtlMs === null ? null : r.setting.globalTtlMs / 1000,
    memoryHitRate: r.memoryHitRate,
    memoryHitRateError: r.error.memoryHitRate,
    globalHitRate: r.globalHitRate,
    computeRate: r.computeRate,
    joulesPerHour: r.costPerHour,
    joulesPerHourError: r.error.costPerHour,
    computeJoulesPerHour: perHour(r.cost.compute),
    storageJoulesPerHour: perHour(r.cost.memoryStorage + r.cost.globalStorage),
    servingJoulesPerHour: perHour(r.cost.serving),
  };
}

export function shapePolicy(p: LivePolicy, autoApply: boolean) {
  const hours = p.windowSpanMs / 3_600_000;
  return {
    computedAt: new Date(p.computedAt).toISOString(),
    windowSamples: p.windowRecords,
    windowSeconds: p.windowSpanMs / 1000,
    sampleRate: p.sampleRate,
    current: setting(p.current, hours),
    recommended: setting(p.recommended, hours),
    savingFraction: p.savingFraction,
    savingJoulesPerHour: p.savingPerHour,
    savingJoulesPerHourError: p.savingPerHourError,
    significant: p.significant,
    measuredMemoryHitRate: p.measured.allKeys?.memoryHitRate ?? null,
    autoApply,
    candidates: p.results.map((r) => setting(r, hours)),
  };
}

export const policyResolvers = {
  Query: {
    cachePolicy: (_: unknown, __: unknown, ctx: PolyrayContext) => {
      if (!isAdmin(ctx)) throw new PolyrayError(ErrorCode.FORBIDDEN, 'cachePolicy needs an admin client');
      const live = ctx.policy?.latest();
      return live ? shapePolicy(live, ctx.policy!.autoApply) : null;
    },
  },
};
