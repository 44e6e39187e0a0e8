/**
 * Closed-loop HTTP GraphQL load: N clients, each sending its next request as soon as the previous one
 * answered, over keep-alive connections, for a warm-up and then a timed window.
 *
 * Two clients: `fetch` (Node's global fetch, whose bundled undici agent keeps connections alive; the
 * default, as no `undici` package is installed) and `http` (node:http with a keep-alive Agent, about
 * a third of fetch's CPU per request here), used to show how much the load generator's own CPU, on the
 * same cores as the service, weighs on the service figures.
 *
 * Only responses that complete inside the timed window count, so requests/s is completions/s of the
 * window; latency is send-to-body-parsed of those responses. Every response is parsed and every item's
 * `source` is tallied (cache-miss phases must be all COMPUTED, memory phases all MEMORY).
 */
import http from 'node:http';
import { cpuSnapshot, cpuUse, type CpuSnapshot, type CpuUse } from './service.ts';

export type ClientKind = 'fetch' | 'http';

export const EMBED_QUERY = 'query($inputs:[EmbedInput!]!){ embed(model:"text-glove", inputs:$inputs){ source base64 } }';

export interface PhaseSpec {
  id: string;
  kind: 'miss' | 'memory' | 'global';
  concurrency: number;
  inputsPerRequest: number;
  warmupMs: number;
  durationMs: number;
  client: ClientKind;
}

export interface Latency {
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  max: number;
}

/** What every timed load counts: this file's phases and the transformer bench's loads. */
export interface LoadCounts {
  requests: number;
  items: number;
  itemsPerS: number;
  latencyMs: Latency;
  errors: number;
  firstError?: string;
  /** Items by `source` over the timed window. */
  sources: Record<string, number>;
  /** Items whose source was not the one the load expects. */
  unexpectedSource: number;
  cpu: CpuUse;
}

export interface PhaseResult extends PhaseSpec, LoadCounts {
  seconds: number;
  reqPerS: number;
  /** Items/s of each interleaved round, when the result merges several rounds. */
  roundsItemsPerS?: number[];
  /** The service's own batch metrics over the phase (warm-up included), when it exposes /metrics. */
  batches?: BatchStats;
}

export interface BatchStats {
  count: number;
  /** Mean items per inference batch. */
  meanSize: number;
  /** Mean ONNX Runtime run() time per batch, measured in the worker. */
  meanRunMs: number;
}

export interface MetricsSample {
  sizeSum: number;
  sizeCount: number;
  secondsSum: number;
}

/** Reads the text-glove batch histograms from the service's /metrics; undefined when there are none. */
export async function scrapeBatchMetrics(url: string, model = 'text-glove'): Promise<MetricsSample | undefined> {
  try {
    const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    if (res.status !== 200) return undefined;
    const read = (name: string): number => {
      const m = new RegExp(`^${name}\\{[^}]*model="${model}"[^}]*\\} ([0-9.eE+-]+)$`, 'm').exec(text);
      return m ? Number(m[1]) : NaN;
    };
    const sample = {
      sizeSum: read('polyray_batch_size_sum'),
      sizeCount: read('polyray_batch_size_count'),
      secondsSum: read('polyray_inference_batch_seconds_sum'),
    };
    // No batch yet: the series may not exist; count it as zero if the histogram is declared.
    if (Number.isNaN(sample.sizeCount) && /polyray_batch_size/.test(text)) return { sizeSum: 0, sizeCount: 0, secondsSum: 0 };
    return Number.isFinite(sample.sizeCount) ? sample : undefined;
  } catch {
    return undefined;
  }
}

function batchStats(a: MetricsSample | undefined, b: MetricsSample | undefined): BatchStats | undefined {
  if (!a || !b) return undefined;
  const count = b.sizeCount - a.sizeCount;
  if (!(count > 0)) return undefined;
  return { count, meanSize: (b.sizeSum - a.sizeSum) / count, meanRunMs: ((b.secondsSum - a.secondsSum) * 1000) / count };
}

/** A phase result with its raw latencies (not serialised). */
export interface PhaseRun {
  result: PhaseResult;
  latencies: number[];
}

export function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

export function summarise(latencies: number[]): Latency {
  const s = Float64Array.from(latencies).sort();
  const mean = latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length);
  return { p50: percentile(s, 0.5), p90: percentile(s, 0.9), p99: percentile(s, 0.99), mean, max: s.length ? s[s.length - 1]! : NaN };
}

interface EmbedReply {
  data?: { embed?: { source?: string; base64?: string }[] } | null;
  errors?: { message?: string; extensions?: { code?: string } }[];
}

export interface EmbedOutcome {
  ok: boolean;
  sources: string[];
  error?: string;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

/** POSTs a JSON body with node:http on a keep-alive agent (the transformer bench passes its own agents and timeout). */
export function postHttp(
  url: string,
  body: string,
  via: http.Agent = agent,
  timeoutMs = 20_000,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method: 'POST',
        agent: via,
        timeout: timeoutMs,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

async function postFetch(url: string, body: string): Promise<{ status: number; text: string }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(20_000) });
  return { status: res.status, text: await res.text() };
}

/** One `embed` request; never throws. */
export async function embed(url: string, texts: readonly string[], base64Length: number, client: ClientKind = 'fetch'): Promise<EmbedOutcome> {
  try {
    const payload = JSON.stringify({ query: EMBED_QUERY, variables: { inputs: texts.map((text) => ({ text })) } });
    const res = await (client === 'http' ? postHttp(`${url}/graphql`, payload) : postFetch(`${url}/graphql`, payload));
    const body = JSON.parse(res.text) as EmbedReply;
    const embeds = body.data?.embed;
    if (res.status !== 200 || body.errors?.length || !embeds || embeds.length !== texts.length) {
      const e = body.errors?.[0];
      return { ok: false, sources: [], error: `HTTP ${res.status} ${e?.extensions?.code ?? ''} ${e?.message ?? 'wrong number of embeddings'}`.slice(0, 300) };
    }
    for (const x of embeds) {
      if (typeof x.base64 !== 'string' || x.base64.length !== base64Length)
        return { ok: false, sources: [], error: `bad base64 vector (length ${String(x.base64?.length)})` };
    }
    return { ok: true, sources: embeds.map((x) => x.source ?? '?') };
  } catch (e) {
    return { ok: false, sources: [], error: `${(e as Error).name}: ${(e as Error).message}`.slice(0, 300) };
  }
}

export interface PhaseContext {
  url: string;
  servicePid: number | undefined;
  base64Length: number;
  /** Texts for the next request of this phase. */
  nextTexts: (n: number) => string[];
  checkAbort: () => void;
}

export async function runPhase(spec: PhaseSpec, ctx: PhaseContext): Promise<PhaseRun> {
  ctx.checkAbort();
  const metricsBefore = await scrapeBatchMetrics(ctx.url);
  const expected = spec.kind === 'miss' ? 'COMPUTED' : spec.kind === 'global' ? 'GLOBAL' : 'MEMORY';
  const t0 = performance.now();
  const windowStart = t0 + spec.warmupMs;
  const windowEnd = windowStart + spec.durationMs;
  const latencies: number[] = [];
  const sources: Record<string, number> = {};
  let requests = 0;
  let items = 0;
  let errors = 0;
  let unexpectedSource = 0;
  let firstError: string | undefined;
  let cpuA: CpuSnapshot | undefined;
  let cpuB: CpuSnapshot | undefined;
  const ta = setTimeout(() => (cpuA = cpuSnapshot(ctx.servicePid)), Math.max(0, windowStart - performance.now()));
  const tb = setTimeout(() => (cpuB = cpuSnapshot(ctx.servicePid)), Math.max(0, windowEnd - performance.now()));

  const client = async (): Promise<void> => {
    while (performance.now() < windowEnd) {
      const texts = ctx.nextTexts(spec.inputsPerRequest);
      const s = performance.now();
      const r = await embed(ctx.url, texts, ctx.base64Length, spec.client);
      const e = performance.now();
      if (e < windowStart || e > windowEnd) continue;
      if (!r.ok) {
        errors++;
        firstError ??= r.error;
        continue;
      }
      requests++;
      items += texts.length;
      latencies.push(e - s);
      for (const src of r.sources) {
        sources[src] = (sources[src] ?? 0) + 1;
        if (src !== expected) unexpectedSource++;
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: spec.concurrency }, () => client()));
  } finally {
    clearTimeout(ta);
    clearTimeout(tb);
  }
  const batches = batchStats(metricsBefore, metricsBefore ? await scrapeBatchMetrics(ctx.url) : undefined);
  const seconds = spec.durationMs / 1000;
  const a = cpuA ?? cpuSnapshot(ctx.servicePid);
  const b = cpuB ?? cpuSnapshot(ctx.servicePid);
  const result: PhaseResult = {
    ...spec,
    requests,
    items,
    seconds,
    reqPerS: requests / seconds,
    itemsPerS: items / seconds,
    latencyMs: summarise(latencies),
    errors,
    ...(firstError ? { firstError } : {}),
    sources,
    unexpectedSource,
    cpu: cpuUse(a, b),
    ...(batches ? { batches } : {}),
  };
  return { result, latencies };
}

/** Merges interleaved rounds of one phase: sums, time-weighted CPU, percentiles over all latencies. */
export function mergeRounds(runs: PhaseRun[]): PhaseResult {
  const first = runs[0]!.result;
  const seconds = runs.reduce((s, r) => s + r.result.seconds, 0);
  const requests = runs.reduce((s, r) => s + r.result.requests, 0);
  const items = runs.reduce((s, r) => s + r.result.items, 0);
  const sources: Record<string, number> = {};
  for (const r of runs) for (const [k, v] of Object.entries(r.result.sources)) sources[k] = (sources[k] ?? 0) + v;
  const w = (f: (c: CpuUse) => number): number => runs.reduce((s, r) => s + f(r.result.cpu) * r.result.seconds, 0) / seconds;
  const firstError = runs.find((r) => r.result.firstError)?.result.firstError;
  return {
    ...first,
    durationMs: seconds * 1000,
    requests,
    items,
    seconds,
    reqPerS: requests / seconds,
    itemsPerS: items / seconds,
    latencyMs: summarise(runs.flatMap((r) => r.latencies)),
    errors: runs.reduce((s, r) => s + r.result.errors, 0),
    ...(firstError ? { firstError } : {}),
    sources,
    unexpectedSource: runs.reduce((s, r) => s + r.result.unexpectedSource, 0),
    cpu: {
      bench: w((c) => c.bench),
      serviceMainThread: w((c) => c.serviceMainThread),
      serviceOtherThreads: w((c) => c.serviceOtherThreads),
      serviceBusiestOtherThread: w((c) => c.serviceBusiestOtherThread),
      machine: w((c) => c.machine),
      others: w((c) => c.others),
    },
    roundsItemsPerS: runs.map((r) => r.result.itemsPerS),
    ...mergeBatches(runs.map((r) => r.result.batches)),
  };
}

function mergeBatches(xs: (BatchStats | undefined)[]): { batches?: BatchStats } {
  const ok = xs.filter((x): x is BatchStats => x !== undefined);
  if (ok.length === 0) return {};
  const count = ok.reduce((s, x) => s + x.count, 0);
  return {
    batches: {
      count,
      meanSize: ok.reduce((s, x) => s + x.meanSize * x.count, 0) / count,
      meanRunMs: ok.reduce((s, x) => s + x.meanRunMs * x.count, 0) / count,
    },
  };
}
