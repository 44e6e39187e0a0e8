/**
 * The per-request GraphQL context: the operation's request scope (its account, model handles,
 * DataLoaders, charged pipeline calls; src/service/scope.ts) and what resolvers may read besides.
 */
import type { AccountContext } from '../accounting/request.ts';
import type { PolicyController } from '../policy/controller.ts';
import type { ModelInfo } from '../runtime/handle.ts';
import type { ReloadSummary } from '../runtime/host.ts';
import type { RequestScope } from '../service/scope.ts';

export type { ModelInfo };

/** What resolvers may read besides the scope: the model list and request limits. */
export interface Catalog {
  models(): ModelInfo[];
  /** Rescans the models directory and loads, reloads or unloads what changed (admin). */
  reloadModels(): Promise<ReloadSummary>;
  defaultPostModel: string;
  maxInputsPerRequest: number;
}

export interface PolyrayContext {
  /** The operation's scope; `scope.account` is its client, quota and usage (src/accounting). */
  scope: RequestScope<AccountContext>;
  catalog: Catalog;
  /** The live cache policy, for the admin query `cachePolicy` (src/policy). */
  policy?: PolicyController;
}
