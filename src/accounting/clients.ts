/**
 * Clients: who may call, with which models, at which quota; API keys stored only as SHA-256 hashes.
 *
 * Key format `prk_<clientId>_<secret>`: the client id (no `_` in ids) makes lookup O(1), the secret is
 * 32 random bytes (base64url). Keys are high-entropy, so a plain SHA-256 is enough (a slow password hash
 * protects low-entropy secrets, which these are not); hashes are compared with `timingSafeEqual`, over
 * every key of the client, so the comparison takes the same time whichever key (if any) matches.
 *
 * Clients file (JSON, `POLYRAY_CLIENTS_FILE`):
 *
 *   { "clients": [ { "id": "search", "name": "Search team", "role": "client", "models": ["text-glove"],
 *                    "quota": { "rate": 1000, "burst": 100000 },
 *                    "keys": [ { "sha256": "<hex>", "createdAt": "2026-01-01T00:00:00.000Z" } ] } ] }
 *
 * `models` is a list of model names or "*". Without a clients file the service runs with one local
 * development client (admin, every model, generous quota) and needs no key.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, PolyrayError } from '../errors.ts';
import { type Budget, parseBudget } from '../usage/budget.ts';

export type Role = 'client' | 'admin';

export interface ClientKey {
  /** Hex SHA-256 of the whole key string. */
  sha256: string;
  createdAt: string;
}

export interface Client {
  id: string;
  name: string;
  role: Role;
  models: string[] | '*';
  quota: { rate: number; burst: number };
  keys: ClientKey[];
  /**
   * `shared` (default): this client's inputs share cache entries with every other shared client (compute
   * saved once for all). `private`: its cache keys are its own, so nothing it sends is served to, or
   * joined with, another client's request, and hit timings say nothing about what others sent.
   */
  cacheScope?: 'shared' | 'private';
  /**
   * Whether answers tell this client where they came from (`Embedding.source`). A shared-cache hit reveals
   * that some client embedded the same input before; `false` hides it (source null). Default true; admins
   * always see it.
   */
  showSource?: boolean;
  /**
   * This client's share of a model's queue relative to other backlogged clients (weighted fair queuing).
   * Default 1.
   */
  weight?: number;
  /**
   * `interactive` (default) or `batch`: batch work only fills the capacity interactive work leaves. A
   * request may lower its own priority (`x-polyray-priority: batch`), never raise it.
   */
  priority?: 'interactive' | 'batch';
  /**
   * Cost units this client may spend per period (src/usage/budget.ts), enforced fleet-wide from the usage
   * database: BUDGET_EXCEEDED at or over it, soft alerts at the listed fractions. Default: none.
   */
  budget?: Budget;
}

export interface ClientsFile {
  clients: Client[];
}

export const CLIENT_ID_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
const KEY_RE = /^prk_([a-z0-9][a-z0-9-]{0,62})_([A-Za-z0-9_-]{32,})$/;
/** Ids that would collide with metric labels or the development client. */
const RESERVED_IDS = new Set(['other', 'unauthenticated']);

export const DEFAULT_QUOTA = { rate: 1000, burst: 100_000 };

export const DEV_CLIENT: Client = Object.freeze({
  id: 'local-dev',
  name: 'Local development (no clients file)',
  role: 'admin',
  models: '*',
  quota: { rate: 1_000_000, burst: 1_000_000_000 },
  keys: [],
}) as Client;

export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

export function newKey(clientId: string): string {
  return `prk_${clientId}_${randomBytes(32).toString('base64url')}`;
}

export function mayUseModel(client: Client, model: string): boolean {
  return client.models === '*' || client.models.includes(model);
}

/** Validates a parsed clients file; throws a TypeError naming the entry and field. */
export function parseClientsFile(value: unknown, where: string): ClientsFile {
  const bad = (what: string): never => {
    throw new TypeError(`Clients file ${where}: ${what}`);
  };
  if (typeof value !== 'object' || value === null || !Array.isArray((value as { clients?: unknown }).clients)) bad('must be an object with a "clients" array');
  const seen = new Set<string>();
  const clients = (value as { clients: unknown[] }).clients.map((c, i): Client => {
    if (typeof c !== 'object' || c === null) return bad(`clients[${i}] must be an object`);
    const o = c as Record<string, unknown>;
    const id = o['id'];
    if (typeof id !== 'string' || !CLIENT_ID_RE.test(id) || RESERVED_IDS.has(id))
      return bad(`clients[${i}].id must match ${CLIENT_ID_RE} (and not be "other")`);
    if (seen.has(id)) bad(`client id "${id}" appears twice`);
    seen.add(id);
    const name = o['name'] ?? id;
    if (typeof name !== 'string') bad(`clients[${i}].name must be a string`);
    const role = o['role'] ?? 'client';
    if (role !== 'client' && role !== 'admin') bad(`clients[${i}].role must be "client" or "admin"`);
    const models = o['models'] ?? '*';
    if (models !== '*' && !(Array.isArray(models) && models.every((m) => typeof m === 'string')))
      bad(`clients[${i}].models must be "*" or a list of model names`);
    const q = (o['quota'] ?? DEFAULT_QUOTA) as Record<string, unknown>;
    const rate = q['rate'];
    const burst = q['burst'];
    if (typeof rate !== 'number' || !(rate > 0) || !Number.isFinite(rate)) bad(`clients[${i}].quota.rate must be a number > 0 (units per second)`);
    if (typeof burst !== 'number' || !(burst > 0) || !Number.isFinite(burst)) bad(`clients[${i}].quota.burst must be a number > 0 (units)`);
    const cacheScope = o['cacheScope'] ?? 'shared';
    if (cacheScope !== 'shared' && cacheScope !== 'private') bad(`clients[${i}].cacheScope must be "shared" or "private"`);
    const showSource = o['showSource'] ?? true;
    if (typeof showSource !== 'boolean') bad(`clients[${i}].showSource must be true or false`);
    const weight = o['weight'] ?? 1;
    if (typeof weight !== 'number' || !(weight > 0) || weight > 1000) bad(`clients[${i}].weight must be a number > 0 and at most 1000`);
    const priority = o['priority'] ?? 'interactive';
    if (priority !== 'interactive' && priority !== 'batch') bad(`clients[${i}].priority must be "interactive" or "batch"`);
    const budget = o['budget'] === undefined ? undefined : parseBudget(o['budget'], `Clients file ${where}: clients[${i}]`);
    const keys = o['keys'] ?? [];
    if (!Array.isArray(keys)) return bad(`clients[${i}].keys must be a list`);
    const parsedKeys = keys.map((k, j): ClientKey => {
      const sha = (k as Record<string, unknown> | null)?.['sha256'];
      if (typeof sha !== 'string' || !/^[0-9a-f]{64}$/.test(sha)) return bad(`clients[${i}].keys[${j}].sha256 must be 64 hex digits`);
      const createdAt = (k as Record<string, unknown>)['createdAt'];
      return { sha256: sha, createdAt: typeof createdAt === 'string' ? createdAt : '' };
    });
    return {
      id,
      name: name as string,
      role: role as Role,
      models: models as string[] | '*',
      quota: { rate: rate as number, burst: burst as number },
      keys: parsedKeys,
      ...(cacheScope === 'private' ? { cacheScope: 'private' as const } : {}),
      ...(showSource === false ? { showSource: false } : {}),
      ...(weight !== 1 ? { weight: weight as number } : {}),
      ...(priority === 'batch' ? { priority: 'batch' as const } : {}),
      ...(budget ? { budget } : {}),
    };
  });
  return { clients };
}

export function readClientsFileSync(file: string): ClientsFile {
  let raw: string;
  try {
    raw = readFileSync(file, 'utf8');
  } catch (e) {
    throw new TypeError(`Clients file ${file} could not be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (e) {
    throw new TypeError(`Clients file ${file} is not valid JSON: ${(e as Error).message}`);
  }
  return parseClientsFile(json, file);
}

/** Looks clients up by id and authenticates keys. Immutable: a reload builds a new one. */
export class ClientDirectory {
  readonly #byId: Map<string, Client>;
  readonly #hashes: Map<string, Buffer[]>;
  /** True when no clients file is configured: every request is the development client. */
  readonly open: boolean;

  constructor(clients: readonly Client[] | 'dev') {
    this.open = clients === 'dev';
    const list = clients === 'dev' ? [DEV_CLIENT] : clients;
    this.#byId = new Map(list.map((c) => [c.id, c]));
    this.#hashes = new Map(list.map((c) => [c.id, c.keys.map((k) => Buffer.from(k.sha256, 'hex'))]));
  }

  get(id: string): Client | undefined {
    return this.#byId.get(id);
  }

  list(): Client[] {
    return [...this.#byId.values()];
  }

  /**
   * The client a request's headers name: `Authorization: Bearer <key>` or `x-api-key: <key>`.
   * Throws UNAUTHENTICATED for a missing, malformed or unknown key. In open (development) mode every
   * request is the development client.
   */
  authenticate(headers: Record<string, string | string[] | undefined>): Client {
    if (this.open) return DEV_CLIENT;
    const key = keyFromHeaders(headers);
    if (!key) throw new PolyrayError(ErrorCode.UNAUTHENTICATED, 'An API key is required: send "Authorization: Bearer <key>" or "x-api-key: <key>"');
    const m = KEY_RE.exec(key);
    const client = m ? this.#byId.get(m[1]!) : undefined;
    const hashes = client ? this.#hashes.get(client.id)! : [];
    const h = createHash('sha256').update(key, 'utf8').digest();
    let ok = false;
    for (const stored of hashes) ok = timingSafeEqual(h, stored) || ok;
    if (!client || !ok) throw new PolyrayError(ErrorCode.UNAUTHENTICATED, 'The API key is not valid');
    return client;
  }
}

function keyFromHeaders(headers: Record<string, string | string[] | undefined>): string | undefined {
  const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);
  // A Bearer token when there is one; any other Authorization scheme (Basic from a proxy, say) does not
  // hide an x-api-key sent beside it.
  const auth = first(headers['authorization']);
  const bearer = auth ? /^Bearer\s+(\S+)\s*$/i.exec(auth) : null;
  if (bearer) return bearer[1];
  const k = first(headers['x-api-key']);
  if (k?.trim()) return k.trim();
  return auth ? '' : undefined;
}

export interface AddClientSpec {
  id: string;
  name?: string;
  role?: Role;
  models?: string[] | '*';
  rate?: number;
  burst?: number;
  /** Share of a model's queue against other backlogged clients (default 1). */
  weight?: number;
  priority?: 'interactive' | 'batch';
  /** Cost budget per period (`none` removes it); checked like the clients file's `budget`. */
  budget?: Budget | 'none';
  /** Drop the client's existing keys (rotation); otherwise the new key is added beside them. */
  replaceKeys?: boolean;
}

/**
 * Creates or updates a client in the clients file (written atomically, mode 0600) and returns the new
 * key. The key itself is stored nowhere: only its hash.
 */
export async function addClient(file: string, spec: AddClientSpec, now: Date = new Date()): Promise<{ key: string; client: Client; created: boolean }> {
  if (!CLIENT_ID_RE.test(spec.id) || RESERVED_IDS.has(spec.id)) {
    throw new TypeError(`--id must be 1 to 63 characters of a-z, 0-9 and "-", starting with a letter or digit (and not "other"), received "${spec.id}"`);
  }
  for (const [k, v] of [
    ['rate', spec.rate],
    ['burst', spec.burst],
    ['weight', spec.weight],
  ] as const) {
    if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw new TypeError(`--${k} must be a number > 0, received "${String(v)}"`);
  }
  let data: ClientsFile = { clients: [] };
  try {
    data = parseClientsFile(JSON.parse(await readFile(file, 'utf8')), file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const key = newKey(spec.id);
  const entry: ClientKey = { sha256: hashKey(key), createdAt: now.toISOString() };
  let client = data.clients.find((c) => c.id === spec.id);
  const created = !client;
  if (!client) {
    client = { id: spec.id, name: spec.name ?? spec.id, role: spec.role ?? 'client', models: spec.models ?? '*', quota: { ...DEFAULT_QUOTA }, keys: [] };
    data.clients.push(client);
  }
  if (spec.name !== undefined) client.name = spec.name;
  if (spec.role !== undefined) client.role = spec.role;
  if (spec.models !== undefined) client.models = spec.models;
  if (spec.rate !== undefined) client.quota.rate = spec.rate;
  if (spec.burst !== undefined) client.quota.burst = spec.burst;
  if (spec.weight !== undefined) client.weight = spec.weight;
  if (spec.priority !== undefined) client.priority = spec.priority;
  if (spec.budget === 'none') delete client.budget;
  else if (spec.budget !== undefined) client.budget = spec.budget;
  client.keys = spec.replaceKeys ? [entry] : [...client.keys, entry];
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, `${JSON.stringify(data, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, file);
  return { key, client, created };
}
