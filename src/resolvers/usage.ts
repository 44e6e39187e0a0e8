/**
 * `Query.usage` and `Query.usageAll`: thin; access rules and figures live in src/accounting.
 */
import type { ClientUsage } from '../accounting/request.ts';
import type { PolyrayContext } from './context.ts';

export const usageResolvers = {
  Query: {
    usage: (_: unknown, args: { clientId?: string | null }, ctx: PolyrayContext): Promise<ClientUsage> => ctx.scope.account.usage(args.clientId),
    usageAll: (_: unknown, __: unknown, ctx: PolyrayContext): Promise<ClientUsage[]> => ctx.scope.account.usageAll(),
  },
};
