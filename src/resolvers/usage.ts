/**
 * `Query.usage` and `Query.usageAll`: thin; access rules and figures live in src/accounting.
 */
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { AccountContext, ClientUsage } from '../accounting/request.ts';
import type { PolyrayContext } from './context.ts';

function account(ctx: PolyrayContext): AccountContext {
  if (!ctx.account) throw new PolyrayError(ErrorCode.UNAUTHENTICATED, 'This request has no authenticated client');
  return ctx.account;
}

export const usageResolvers = {
  Query: {
    usage: (_: unknown, args: { clientId?: string | null }, ctx: PolyrayContext): Promise<ClientUsage> => account(ctx).usage(args.clientId),
    usageAll: (_: unknown, __: unknown, ctx: PolyrayContext): Promise<ClientUsage[]> => account(ctx).usageAll(),
  },
};
