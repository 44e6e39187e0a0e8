/**
 * `Query.usage`, `Query.usageAll` and `Query.usageHistory`: thin; access rules and figures live in src/accounting.
 */
import type { ClientUsage, UsageHistoryView } from '../accounting/request.ts';
import type { PolyrayContext } from './context.ts';

export const usageResolvers = {
  Query: {
    usage: (_: unknown, args: { clientId?: string | null }, ctx: PolyrayContext): Promise<ClientUsage> => ctx.scope.account.usage(args.clientId),
    usageAll: (_: unknown, __: unknown, ctx: PolyrayContext): Promise<ClientUsage[]> => ctx.scope.account.usageAll(),
    usageHistory: (
      _: unknown,
      args: { from: string; to: string; granularity?: 'HOUR' | 'DAY' | 'MONTH' | null; clientId?: string | null },
      ctx: PolyrayContext,
    ): Promise<UsageHistoryView> => ctx.scope.account.usageHistory(args),
  },
};
