/**
 * Admin mutations: `Mutation.reloadModels` (model folders picked up without a restart; src/runtime/host.ts).
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { ReloadSummary } from '../runtime/host.ts';
import type { PolyrayContext } from './context.ts';
import { isAdmin } from './policy.ts';

export const adminResolvers = {
  Mutation: {
    reloadModels: (_: unknown, __: unknown, ctx: PolyrayContext): Promise<ReloadSummary> => {
      if (!isAdmin(ctx)) throw new PolyrayError(ErrorCode.FORBIDDEN, 'reloadModels needs an admin client');
      return ctx.catalog.reloadModels();
    },
  },
};
