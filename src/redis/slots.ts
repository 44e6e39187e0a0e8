/**
 * Redis Cluster hash slots: which slot a key hashes to, which node serves it, and how to group keys so a
 * pipeline stays on one node and a multi-key command on one slot (`pipelinePerNode`).
 *
 * The slot comes from `cluster-key-slot`, the function ioredis itself routes commands (and checks
 * pipelines) with, so a grouping made here is one ioredis accepts. It agrees with the server's
 * CLUSTER KEYSLOT (test/redis-cluster.test.ts) except for a key whose first `{...}` is empty and that has
 * a later `}` (`a{}b}c`): the server hashes the whole key, the package the text between `{}` and that
 * `}`. A command for such a key costs a MOVED; none of Polyray's key layouts can produce one (cache
 * prefixes refuse braces, accounting tags are never empty).
 */
import calculateSlot from 'cluster-key-slot';
import { Cluster, type ChainableCommander } from 'ioredis';
import type { RedisClient } from './client.ts';

/** Redis Cluster hash slot (0..16383) of `key`, honouring `{hash tags}` (first `{`, next `}`, non-empty). */
export function keySlot(key: string): number {
  return calculateSlot(key);
}

/** Node name while a Cluster has not loaded its slot map yet: every key maps to it until it has. */
export const UNKNOWN_CLUSTER_NODE = 'cluster';

/**
 * The node that serves `key`: on a Cluster the master of its hash slot, as the client's slot map names it
 * (`host:port`, the same map ioredis routes by); a standalone server is one node (`host:port`).
 */
export function nodeOf(redis: RedisClient, key: string): string {
  if (redis instanceof Cluster) return redis.slots[keySlot(key)]?.[0] ?? UNKNOWN_CLUSTER_NODE;
  return `${redis.options.host}:${redis.options.port}`;
}

/** The nodes that serve a slot now (Cluster masters; the one standalone server); undefined while that is not known. */
export function servingNodes(redis: RedisClient): ReadonlySet<string> | undefined {
  if (!(redis instanceof Cluster)) return new Set([nodeOf(redis, '')]);
  const masters = new Set<string>();
  for (const owners of redis.slots) if (owners?.[0]) masters.add(owners[0]);
  return masters.size > 0 ? masters : undefined;
}

/**
 * Groups the indices of `keys` by the Cluster node serving their slot (the grouping ioredis checks a
 * pipeline against), then by slot. Throws when a slot has no known node (the slot map is changing): it
 * asks ioredis to refresh the map first, so a later call can succeed.
 */
function groupBySlotOwner(cluster: Cluster, keys: readonly string[]): Map<string, Map<number, number[]>> {
  const slots = cluster.slots;
  const groups = new Map<string, Map<number, number[]>>();
  for (let i = 0; i < keys.length; i++) {
    const slot = keySlot(keys[i]!);
    const nodes = slots[slot];
    if (!nodes || nodes.length === 0) {
      cluster.refreshSlotsCache();
      throw new Error(`no node serves slot ${slot}`);
    }
    const id = nodes.join(';');
    const bySlot = groups.get(id) ?? new Map<number, number[]>();
    groups.set(id, bySlot);
    const idx = bySlot.get(slot);
    if (idx) idx.push(i);
    else bySlot.set(slot, [i]);
  }
  return groups;
}

/**
 * One pipeline per Cluster node that serves `keys`, sent in parallel: `fill` adds a node's commands (it
 * gets the indices of that node's keys, by slot) and may return what to do with each reply, by the
 * command's position in its pipeline. Resolves with the first error (undefined when every node answered
 * every command) and never rejects; the replies that did arrive are used either way.
 */
export async function pipelinePerNode(
  cluster: Cluster,
  keys: readonly string[],
  fill: (pipeline: ChainableCommander, bySlot: Map<number, number[]>) => ((j: number, reply: unknown) => void) | undefined,
): Promise<unknown> {
  let groups: Map<string, Map<number, number[]>>;
  try {
    groups = groupBySlotOwner(cluster, keys);
  } catch (e) {
    return e;
  }
  const settled = await Promise.allSettled(
    [...groups.values()].map(async (bySlot) => {
      const pipeline = cluster.pipeline();
      const use = fill(pipeline, bySlot);
      const results = await pipeline.exec();
      if (!results) throw new Error('pipeline discarded');
      let firstErr: unknown;
      for (const [j, [err, reply]] of results.entries()) {
        if (err) firstErr ??= err;
        else use?.(j, reply);
      }
      if (firstErr) throw firstErr;
    }),
  );
  const failed = settled.find((r) => r.status === 'rejected');
  return failed ? ((failed as PromiseRejectedResult).reason ?? new Error('pipeline failed')) : undefined;
}
