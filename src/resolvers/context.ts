/**
 * The per-request GraphQL context: the operation's request scope (model handles, DataLoaders, charged
 * pipeline calls; src/service/scope.ts), its account (usage queries) and what resolvers may read besides.
 */
import type { AccountContext } from '../accounting/request.ts';
import type { PolicyController } from '../policy/controller.ts';
import type { ModelInfo } from '../runtime/handle.ts';
import type { RequestScope } from '../service/scope.ts';

export type { ModelInfo };

/** What resolvers may read besides the scope: the model list and request limits. */
export interface Catalog {
  models(): ModelInfo[];
  defaultPostModel: string;
  maxInputsPerRequest: number;
}

export interface PolyrayContext {
  scope: RequestScope;
  catalog: Catalog;
  /** The request's accounting: client, quota, usage (src/accounting). */
  account: AccountContext;
  /** The live cache policy, for the admin query `cachePolicy` (src/policy). */
  policy?: PolicyController;
}
