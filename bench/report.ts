/**
 * Results: the JSON document, the stdout tables and `RESULTS.md` (explanations, tables, and notes
 * derived from the figures of the run, so a rerun never leaves stale prose next to new numbers).
 */
import type { CeilingResult, CeilingRow } from './ceiling.ts';
import type { Conditions } from './conditions.ts';
import type { ClientKind, PhaseResult } from './load.ts';
import type { GlobalHitResult } from './global-hit.ts';
import type { TransformerResults } from './transformer-run.ts';
import { type Table, mdTable, phaseLabel, ratio, textTable } from './tables.ts';
import { globalHitMarkdown, globalHitText, transformerMarkdown, transformerText } from './transformer-report.ts';

export interface ServiceSettings {
  workers: number;
  intraOpThreads: number;
  batchMaxItems: number;
  batchMaxTokens: number;
  batchMaxWaitUs: number;
  memoryCacheMb: number;
  nodeEnv: string;
}

export interface ServiceRun {
  label: string;
  /** Environment given to the service on top of the defaults. */
  overrides: Record<string, string>;
  settings: ServiceSettings;
  /** The load generator's HTTP client. */
  client: ClientKind;
  startupMs: number;
  phases: PhaseResult[];
  error?: string;
  /** Peak RSS (VmHWM) of the service process at the end of its phases, MiB. */
  peakRssMiB?: number;
}

export interface BenchResults {
  schema: 'polyray-bench/1';
  conditions: Conditions;
  ceiling: CeilingResult;
  main: ServiceRun;
  variants: ServiceRun[];
  globalHit?: GlobalHitResult;
  transformer?: TransformerResults;
}

// ---------- formatting ----------

const int = (x: number): string => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–');
const ms = (x: number): string => (!Number.isFinite(x) ? '–' : x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0));
const pct = (x: number): string => (!Number.isFinite(x) ? '–' : x < 0.1 ? `${(x * 100).toFixed(2)}%` : `${(x * 100).toFixed(1)}%`);
const cores = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : '–');

export function settingsLabel(s: ServiceSettings): string {
  return `workers=${s.workers} intra=${s.intraOpThreads} maxItems=${s.batchMaxItems} maxWaitUs=${s.batchMaxWaitUs}`;
}

// ---------- tables ----------

export function ceilingTable(c: CeilingResult): Table {
  const sessions = [...new Set(c.rows.map((r) => r.session))];
  const sizes = [...new Set(c.rows.map((r) => r.batchSize))];
  const head = ['batch', ...sessions.flatMap((s) => [`${s} items/s`, 'run p50 ms', 'cores']), 'others', 'padded len', 'fill'];
  const rows = sizes.map((b) => {
    const cells = sessions.flatMap((s) => {
      const r = c.rows.find((x) => x.batchSize === b && x.session === s);
      if (!r) return ['–', '–', '–'];
      return [`${int(r.itemsPerS)}${r.batchSize === c.best.batchSize && r.session === c.best.session ? ' *' : ''}`, r.runMsP50.toFixed(3), cores(r.cpuCores)];
    });
    const all = c.rows.filter((x) => x.batchSize === b);
    const others = all.reduce((a, x) => a + x.othersCores, 0) / all.length;
    return [String(b), ...cells, cores(others), all[0]!.meanPaddedLen.toFixed(1), pct(all[0]!.fill)];
  });
  return { head, rows };
}

export function hostCostTable(c: CeilingResult): Table {
  return {
    head: ['main-thread step (per item)', 'µs/item', 'items/s on one core'],
    rows: c.hostCosts.map((h) => [h.step, h.usPerItem.toFixed(2), int(h.itemsPerS)]),
  };
}

export function phaseTable(run: ServiceRun, ceiling: number): Table {
  return {
    head: [
      'phase',
      'req/s',
      'items/s',
      'p50 ms',
      'p99 ms',
      'of ceiling',
      'batch (mean)',
      'run ms/batch',
      'cpu bench',
      'svc main',
      'svc other',
      '(busiest)',
      'others',
      'errors',
      'sources',
    ],
    rows: run.phases.map((p) => [
      phaseLabel(p),
      int(p.reqPerS),
      int(p.itemsPerS),
      ms(p.latencyMs.p50),
      ms(p.latencyMs.p99),
      pct(p.itemsPerS / ceiling),
      p.batches ? p.batches.meanSize.toFixed(2) : '–',
      p.batches ? p.batches.meanRunMs.toFixed(3) : '–',
      cores(p.cpu.bench),
      cores(p.cpu.serviceMainThread),
      cores(p.cpu.serviceOtherThreads),
      cores(p.cpu.serviceBusiestOtherThread),
      cores(p.cpu.others),
      String(p.errors),
      sourcesLabel(p),
    ]),
  };
}

function sourcesLabel(p: PhaseResult): string {
  const total = Object.values(p.sources).reduce((a, b) => a + b, 0);
  if (total === 0) return '–';
  return Object.entries(p.sources)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => (v === total ? `${k} 100%` : `${k} ${pct(v / total)}`))
    .join(', ');
}

function baselineOf(r: BenchResults): ServiceRun {
  return r.variants.find((v) => v.label === 'default (repeat)' && !v.error) ?? r.main;
}

export function variantTable(r: BenchResults): Table {
  const base = baselineOf(r);
  const rows: string[][] = [];
  const ids = [...new Set(r.variants.flatMap((v) => v.phases.map((p) => p.id)))];
  for (const id of ids) {
    for (const v of r.variants) {
      const p = v.phases.find((x) => x.id === id);
      if (v.error || !p) {
        if (v.error && id === ids[0])
          rows.push([v.label, settingsLabel(v.settings), v.client, 'failed', '', '', '', '', '', '', '', '', v.error.split('\n')[0]!.slice(0, 80)]);
        continue;
      }
      const b = base.phases.find((x) => x.id === p.id);
      rows.push([
        v.label,
        settingsLabel(v.settings),
        v.client,
        phaseLabel(p),
        int(p.itemsPerS),
        (p.roundsItemsPerS ?? []).map((x) => int(x)).join(' / '),
        ms(p.latencyMs.p50),
        ms(p.latencyMs.p99),
        b ? ratio(p.itemsPerS / b.itemsPerS) : '–',
        pct(p.itemsPerS / r.ceiling.best.itemsPerS),
        p.batches ? p.batches.meanSize.toFixed(2) : '–',
        p.batches ? p.batches.meanRunMs.toFixed(3) : '–',
        `${cores(p.cpu.bench)} / ${cores(p.cpu.serviceMainThread)} / ${cores(p.cpu.serviceOtherThreads)} (${cores(p.cpu.serviceBusiestOtherThread)}) / ${cores(p.cpu.others)}`,
      ]);
    }
  }
  return {
    head: [
      'variant',
      'settings',
      'client',
      'phase',
      'items/s',
      'per round',
      'p50 ms',
      'p99 ms',
      'vs default (repeat)',
      'of ceiling',
      'batch (mean)',
      'run ms/batch',
      'cpu bench / svc main / svc other (busiest) / others',
    ],
    rows,
    right: [false, false, false, false, true, true, true, true, true, true, true, true, false],
  };
}

// ---------- notes (derived from the figures) ----------

const bestBy = <T>(xs: T[], f: (x: T) => number): T | undefined => xs.reduce<T | undefined>((a, x) => (a === undefined || f(x) > f(a) ? x : a), undefined);

export function notes(r: BenchResults): string[] {
  const out: string[] = [];
  const c = r.ceiling;
  const best = c.best;
  const ncores = r.conditions.host.availableParallelism;
  const s = r.main.settings;

  // Noise first: how much of the machine other tenants took while we measured.
  const cells = [
    ...c.rows.map((x) => ({ what: `ceiling ${x.session} batch ${x.batchSize}`, others: x.othersCores })),
    ...r.main.phases.map((p) => ({ what: phaseLabel(p), others: p.cpu.others })),
    ...r.variants.flatMap((v) => v.phases.map((p) => ({ what: `${v.label} ${phaseLabel(p)}`, others: p.cpu.others }))),
  ];
  const noisy = cells.filter((x) => x.others > 0.25);
  const meanOthers = cells.reduce((a, x) => a + x.others, 0) / Math.max(1, cells.length);
  out.push(
    noisy.length === 0
      ? `**Noise.** Other processes used under 0.25 cores during every measurement (column *others*; mean ${cores(meanOthers)}).`
      : `**Noise.** Other processes on this shared machine used more than 0.25 cores during ${noisy.length} of ${cells.length} measurements ` +
          `(mean over all ${cores(meanOthers)} cores; worst: ${[...noisy]
            .sort((a, b) => b.others - a.others)
            .slice(0, 4)
            .map((x) => `${x.what} ${cores(x.others)}`)
            .join(
              ', ',
            )}). Those figures are depressed by an unknown amount; trust comparisons between rows measured side by side (the ceiling cells and the variants are interleaved in rounds for that reason) more than absolute numbers.`,
  );

  out.push(
    `**Ceiling.** Raw \`run()\` peaks at ${int(best.itemsPerS)} items/s (batch ${best.batchSize}, ${best.session}), ${(1e6 / best.itemsPerS).toFixed(2)} µs per item; ` +
      `one item alone (batch 1) costs ${ms(c.rows.find((x) => x.batchSize === 1 && x.session === best.session)?.runMsP50 ?? NaN)} ms per run. The model is two table lookups and a weighted mean: memory-bound and tiny, so inference itself is never what limits the service.`,
  );

  const sessions = [...new Set(c.rows.map((x) => x.session))];
  if (sessions.length > 1) {
    const tops = sessions.map(
      (sl) =>
        bestBy(
          c.rows.filter((x) => x.session === sl),
          (x) => x.itemsPerS,
        )!,
    );
    const one = tops.find((x) => x.intraOpThreads === 1 && !x.noSpin);
    const parts = tops.map(
      (t) =>
        `${t.session}: best ${int(t.itemsPerS)} items/s (batch ${t.batchSize}) using ${cores(t.cpuCores)} cores` +
        (one && t !== one ? ` (${ratio(t.itemsPerS / one.itemsPerS)} the items/s of intra=1 for ${ratio(t.cpuCores / one.cpuCores)} its CPU)` : ''),
    );
    const small = c.rows.filter((x) => x.batchSize <= 8 && !x.noSpin);
    const smallNote = small.length
      ? ` At the small batches the service actually forms (≤ 8), two threads buy nothing: ${small
          .filter((x) => x.intraOpThreads === 2)
          .map((x) => {
            const o = small.find((y) => y.batchSize === x.batchSize && y.intraOpThreads === 1);
            return o ? `batch ${x.batchSize}: ${ratio(x.itemsPerS / o.itemsPerS)} items/s for ${ratio(x.cpuCores / o.cpuCores)} CPU` : '';
          })
          .filter(Boolean)
          .join(', ')}.`
      : '';
    out.push(
      `**Intra-op threads, in isolation.** ${parts.join('; ')}. With 2 intra-op threads ONNX Runtime's extra thread spin-waits for work between and after runs ` +
        `(\`session.intra_op.allow_spinning\`, on by default; the service does not set it): the *cores* column shows it, and *no-spin* gets about the same items/s for less CPU.` +
        smallNote,
    );
  }

  const hc = c.hostCosts;
  if (hc.length) {
    const sum = hc.reduce((a, h) => a + h.usPerItem, 0);
    out.push(
      `**Main-thread work per miss besides inference** (timed alone): ${hc.map((h) => `${h.step} ${h.usPerItem.toFixed(2)} µs`).join('; ')} — ` +
        `${sum.toFixed(1)} µs in all (≤ ${int(1e6 / sum)} items/s), against ${(1e6 / best.itemsPerS).toFixed(2)} µs of inference per item at the ceiling. Tokenisation is the largest item-proportional cost, and it is still small next to the per-request costs below.`,
    );
  }

  const misses = r.main.phases.filter((p) => p.kind === 'miss');
  const singles = misses.filter((p) => p.inputsPerRequest === 1);
  const bestSingle = bestBy(singles, (p) => p.itemsPerS);
  const mem = r.main.phases.filter((p) => p.kind === 'memory');
  const bestMem = bestBy(mem, (p) => p.reqPerS);
  if (bestSingle) {
    const p = bestSingle;
    out.push(
      `**Service, one input per request (misses).** Best: ${int(p.itemsPerS)} items/s at N=${p.concurrency} = ${pct(p.itemsPerS / best.itemsPerS)} of the ceiling. ` +
        `The machine was ${cores(p.cpu.machine)} of ${ncores} cores busy: load generator ${cores(p.cpu.bench)}, service main thread ${cores(p.cpu.serviceMainThread)}, ` +
        `service other threads ${cores(p.cpu.serviceOtherThreads)} (the busiest single one ${cores(p.cpu.serviceBusiestOtherThread)}), other processes ${cores(p.cpu.others)}. ` +
        `Per request: ${int((p.cpu.serviceMainThread * 1e6) / p.reqPerS)} µs of service main-thread CPU, ${int((p.cpu.serviceOtherThreads * 1e6) / p.reqPerS)} µs on its other threads, ${int((p.cpu.bench * 1e6) / p.reqPerS)} µs in the client` +
        (bestMem
          ? ` (a memory hit: ${int((bestMem.cpu.serviceMainThread * 1e6) / bestMem.reqPerS)} µs main thread, ${int((bestMem.cpu.serviceOtherThreads * 1e6) / bestMem.reqPerS)} µs other threads)`
          : '') +
        '. ' +
        (p.cpu.machine >= 0.85 * ncores
          ? `The box is saturated, so the bound is CPU: the HTTP + GraphQL path, the hand-offs to the inference thread and back, and the load generator, all on the same ${ncores} cores — inference proper would need ${pct(p.itemsPerS / best.itemsPerS)} of one core.`
          : `The box is not saturated, so waiting — batching windows, thread wake-ups, round trips — not CPU, bounds this closed loop.`),
    );
    const runCores = (x: PhaseResult): number => (x.batches ? (x.batches.count * x.batches.meanRunMs) / (x.warmupMs + x.durationMs) : NaN);
    const intra1 = r.variants.find(
      (v) => !v.error && v.settings.intraOpThreads === 1 && v.settings.workers === 1 && v.settings.batchMaxWaitUs === s.batchMaxWaitUs,
    );
    const i1 = intra1?.phases.find((x) => x.id === p.id);
    if (s.intraOpThreads > 1) {
      out.push(
        `**Where the service's other-thread CPU goes.** At N=${p.concurrency} with intra-op threads = ${s.intraOpThreads}, the busiest non-main service thread used ${cores(p.cpu.serviceBusiestOtherThread)} cores, ` +
          `while ONNX Runtime's \`run()\` itself accounted for ${cores(runCores(p))} cores (batches × run time from /metrics)` +
          (i1
            ? `; with intra-op threads = 1 (variant *${intra1!.label}*) the busiest one used ${cores(i1.cpu.serviceBusiestOtherThread)} and all other threads ${cores(i1.cpu.serviceOtherThreads)} ` +
              `(default (repeat): ${cores(baselineOf(r).phases.find((x) => x.id === p.id)?.cpu.serviceOtherThreads ?? NaN)}), i.e. still ${int((i1.cpu.serviceOtherThreads * 1e6) / i1.reqPerS)} µs per request spread over threads none of which is busy ` +
              `(presumably V8's GC helpers and the inference worker), where a memory hit costs ${bestMem ? int((bestMem.cpu.serviceOtherThreads * 1e6) / bestMem.reqPerS) : '–'} µs`
            : '') +
          '. ' +
          (p.cpu.serviceBusiestOtherThread > 3 * runCores(p) && i1 && i1.cpu.serviceBusiestOtherThread < 0.6 * p.cpu.serviceBusiestOtherThread
            ? `A thread busy far beyond the run time it serves, which goes away with one intra-op thread, is ONNX Runtime's second intra-op thread spin-waiting between the many tiny runs, on a box where the event loop and the client need that core.`
            : p.cpu.serviceBusiestOtherThread > 3 * runCores(p) && !i1
              ? `A thread busy far beyond the run time it serves looks like ONNX Runtime's second intra-op thread spin-waiting between tiny runs; the full run's intra=1 variants test that.`
              : `No clear sign of a spinning intra-op thread in this run.`),
      );
    }
  }
  const batchNotes = r.main.phases
    .filter((x) => x.batches)
    .map((x) => `${phaseLabel(x)} ${x.batches!.meanSize.toFixed(1)} items (${x.batches!.meanRunMs.toFixed(3)} ms per run)`);
  if (batchNotes.length) {
    const raw = (b: number): CeilingRow | undefined => c.rows.find((x) => x.batchSize === b && x.intraOpThreads === s.intraOpThreads && !x.noSpin);
    const raw1 = raw(1);
    const raw8 = raw(8);
    out.push(
      `**Batches the service formed** (its /metrics): ${batchNotes.join(', ')}. One-input requests arrive no faster than the HTTP path delivers them, so batches stay far below the ` +
        `batch sizes where the ceiling is reached (batch ${best.batchSize}); with runs this cheap the batcher has little to amortise, and its window is pure latency for a request that is alone. ` +
        (raw1
          ? `Note the service's own run time per batch (measured in its worker around \`await session.run()\`) against the raw one here: ${raw1.runMsP50.toFixed(3)} ms at batch 1${raw8 ? `, ${raw8.runMsP50.toFixed(3)} ms at batch 8` : ''} (p50, back-to-back runs, same session options): ` +
            `the worker's runs come one at a time to an idle thread on a box shared with the event loop and the load generator, so they presumably pay thread wake-ups and colder caches that a tight loop does not.`
          : ''),
    );
  }
  const n1 = singles.find((p) => p.concurrency === 1);
  if (n1) {
    const memN1 = mem.find((p) => p.concurrency === 1);
    const noWait = r.variants.find(
      (v) =>
        !v.error &&
        v.client === 'fetch' &&
        v.settings.batchMaxWaitUs === 0 &&
        v.settings.intraOpThreads === s.intraOpThreads &&
        v.settings.workers === s.workers,
    );
    const nw = noWait?.phases.find((p) => p.id === n1.id);
    const rep = baselineOf(r).phases.find((p) => p.id === n1.id);
    out.push(
      `**Latency at N=1** (miss): p50 ${ms(n1.latencyMs.p50)} ms, against ${memN1 ? `${ms(memN1.latencyMs.p50)} ms for a memory hit` : '–'}. ` +
        `A lone miss never has company, so it waits the whole batching window (POLYRAY_BATCH_MAX_WAIT_US = ${s.batchMaxWaitUs} µs, a \`setTimeout\`) before its run` +
        (nw && rep
          ? `: in the variants, the same service with the window at 0 answered at p50 ${ms(nw.latencyMs.p50)} ms against ${ms(rep.latencyMs.p50)} ms (${ratio(nw.itemsPerS / rep.itemsPerS)} the requests/s of one sequential client) — the window costs more than its nominal ${(s.batchMaxWaitUs / 1000).toFixed(1)} ms, timer slack included.`
          : `, which caps one sequential client at ${int(1e6 / Math.max(1, s.batchMaxWaitUs))} requests/s.`),
    );
  }
  const batched = misses.find((p) => p.inputsPerRequest > 1);
  const same = singles.find((p) => batched && p.concurrency === batched.concurrency);
  if (batched && same) {
    out.push(
      `**Batched client** (${batched.inputsPerRequest} inputs per request, N=${batched.concurrency}): ${int(batched.itemsPerS)} items/s, ${ratio(batched.itemsPerS / same.itemsPerS)} the one-input requests at the same N ` +
        `(${pct(batched.itemsPerS / best.itemsPerS)} of the ceiling), at ${ratio(batched.reqPerS / same.reqPerS)} the request rate: the cost is per request, not per item. Clients that can send many inputs per call should.`,
    );
  }
  if (bestMem && bestSingle) {
    out.push(
      `**Memory hits** peak at ${int(bestMem.reqPerS)} requests/s (N=${bestMem.concurrency}), ${ratio(bestMem.reqPerS / bestSingle.reqPerS)} the best one-input miss rate, p50 ${ms(bestMem.latencyMs.p50)} ms. ` +
        `A hit skips tokenisation, batching, the worker hand-off and inference; what remains (HTTP, GraphQL parse/validate/execute, JSON and base64 on both ends, the client) is the floor of any one-input request.`,
    );
  }

  const base = baselineOf(r);
  const repeat = r.variants.find((v) => v.label === 'default (repeat)' && !v.error);
  if (r.variants.length) {
    const ids = [...new Set(r.variants.flatMap((v) => v.phases.map((p) => p.id)))];
    if (repeat) {
      const spread = ids
        .map((id) => {
          const p = repeat.phases.find((x) => x.id === id);
          const rr = p?.roundsItemsPerS ?? [];
          return p && rr.length > 1 ? `${phaseLabel(p)}: rounds ${rr.map((x) => int(x)).join(' / ')} items/s` : '';
        })
        .filter(Boolean)
        .join('; ');
      const mainSame = ids
        .map((id) => {
          const p = r.main.phases.find((x) => x.id === id);
          return p ? `${phaseLabel(p)} ${int(p.itemsPerS)} items/s, p50 ${ms(p.latencyMs.p50)} ms` : '';
        })
        .filter(Boolean)
        .join('; ');
      if (spread)
        out.push(
          `**Noise yardstick.** The default settings, round by round: ${spread}. A variant whose ratio to the default is within that spread is not distinguishable from it. ` +
            (mainSame
              ? `The main run measured the same settings earlier, alone and in one longer window: ${mainSame}; compare variants with *default (repeat)*, not with the main run.`
              : ''),
        );
    }
    for (const id of ids) {
      const rows = r.variants
        .filter((v) => !v.error && v !== base)
        .map((v) => ({ v, p: v.phases.find((x) => x.id === id), b: base.phases.find((x) => x.id === id) }))
        .filter((x): x is { v: ServiceRun; p: PhaseResult; b: PhaseResult } => !!x.p && !!x.b)
        .sort((a, b) => b.p.itemsPerS - a.p.itemsPerS);
      if (rows.length === 0) continue;
      const b = rows[0]!.b;
      out.push(
        `**Variants, ${phaseLabel(b)}** (default (repeat): ${int(b.itemsPerS)} items/s, p50 ${ms(b.latencyMs.p50)} ms): ` +
          rows
            .map(
              (x) =>
                `${x.v.label} ${ratio(x.p.itemsPerS / x.b.itemsPerS)} (${int(x.p.itemsPerS)} items/s, p50 ${ms(x.p.latencyMs.p50)} ms, svc other threads ${cores(x.p.cpu.serviceOtherThreads)} cores)`,
            )
            .join('; ') +
          '.',
      );
    }
  }
  out.push(
    `**Caveats.** Client and service share the same ${ncores} cores, so the service figures are lower bounds for a service on its own box${r.variants.some((v) => v.client === 'http') ? ' (the *default, http client* variant shows how much a cheaper client alone changes them)' : ''}. ` +
      `The ceiling pads random sentences together (fill ${pct(c.rows[c.rows.length - 1]!.fill)} at batch ${c.rows[c.rows.length - 1]!.batchSize}), while the batcher groups similar lengths, so the service pads less. ` +
      `Closed-loop clients: at N=1 throughput is 1 / latency, not capacity. Load average before/after: ${r.conditions.loadAvgBefore.join(' ')} / ${(r.conditions.loadAvgAfter ?? []).join(' ')}.`,
  );
  return out;
}

// ---------- documents ----------

export function conditionsTable(r: BenchResults): Table {
  const c = r.conditions;
  const s = r.main.settings;
  return {
    head: ['condition', 'value'],
    right: [false, false],
    rows: [
      ['date', `${c.startedAt} → ${c.finishedAt ?? '?'} (${c.wallSeconds?.toFixed(0) ?? '?'} s, ${c.mode} mode)`],
      ['CPU', `${c.host.cpuModel}, ${c.host.cores} cores (availableParallelism ${c.host.availableParallelism}), ${c.host.memTotalGiB} GiB RAM`],
      ['OS', c.host.kernel],
      ['Node', c.nodeVersion],
      ['onnxruntime-node', c.onnxruntimeNodeVersion],
      ['model', `${c.model.name}@${c.model.version} (${c.model.dimensions} dims, ${(c.model.onnxBytes / 2 ** 20).toFixed(0)} MiB ONNX)`],
      [
        'service settings (main run)',
        `${settingsLabel(s)} maxTokens=${s.batchMaxTokens} memoryCacheMb=${s.memoryCacheMb} NODE_ENV=${s.nodeEnv}${Object.keys(r.main.overrides).length ? ` overrides ${JSON.stringify(r.main.overrides)}` : ' (service defaults)'}`,
      ],
      ['service start-up', `${ms(r.main.startupMs)} ms spawn → /readyz 200`],
      ['service source', c.git],
      ['service environment', c.serviceEnv],
      ['models loaded by the services', c.modelsLoaded],
      ['phase durations', phaseDurations(r)],
      ['load average before / after', `${c.loadAvgBefore.join(' ')} / ${(c.loadAvgAfter ?? []).join(' ')}`],
      ['other processes before start', `${cores(c.othersCoresBefore ?? NaN)} cores busy (1 s sample of /proc/stat)`],
      ['client', c.client],
      ['corpus', c.corpus],
    ],
  };
}

function phaseDurations(r: BenchResults): string {
  const m = r.main.phases[0];
  const v = r.variants.find((x) => x.phases.length)?.phases[0];
  return (
    `main: ${m ? `${m.warmupMs / 1000} s warm-up + ${m.durationMs / 1000} s timed` : '–'} per phase; ` +
    `variants: ${v ? `${r.variants.find((x) => x.phases.length)?.phases[0]?.roundsItemsPerS?.length ?? '?'} rounds × (${v.warmupMs / 1000} s + ${(v.durationMs / 1000 / (v.roundsItemsPerS?.length || 1)).toFixed(1)} s)` : 'not run'}; ` +
    `ceiling: ${r.ceiling.rounds} rounds × ${Math.round(r.ceiling.cellMsPerRound)} ms per cell`
  );
}

export function stdoutReport(r: BenchResults): string {
  const parts = [
    'Polyray bench — text-glove',
    textTable(conditionsTable(r)),
    '',
    `Ceiling: raw InferenceSession.run() items/s (* = best = the ceiling, ${int(r.ceiling.best.itemsPerS)} items/s)`,
    textTable(ceilingTable(r.ceiling)),
    '',
    textTable(hostCostTable(r.ceiling)),
    '',
    `Service through HTTP GraphQL (${settingsLabel(r.main.settings)}); cpu columns in cores`,
    textTable(phaseTable(r.main, r.ceiling.best.itemsPerS)),
  ];
  if (r.variants.length) parts.push('', 'Service variants (cache misses; cpu bench/svc main/svc other in cores)', textTable(variantTable(r)));
  if (r.globalHit) parts.push('', globalHitText(r.globalHit));
  if (r.transformer) parts.push('', transformerText(r.transformer, extraMemory(r)));
  if (r.conditions.transformerError) parts.push('', `Issue-7 section failed: ${r.conditions.transformerError}`);
  parts.push('', 'Notes', ...notes(r).map((n) => `- ${n.replaceAll('**', '').replaceAll('`', '')}`));
  return parts.join('\n');
}

function extraMemory(r: BenchResults): { label: string; mib: number; startupMs: number; what: string }[] {
  const out: { label: string; mib: number; startupMs: number; what: string }[] = [];
  if (r.main.peakRssMiB !== undefined)
    out.push({ label: 'text-glove main', mib: r.main.peakRssMiB, startupMs: r.main.startupMs, what: 'Polyray serving text-glove (the glove sections above)' });
  for (const [k, v] of Object.entries(r.globalHit?.peakRssMiB ?? {}))
    out.push({ label: `text-glove ${k}`, mib: v, startupMs: NaN, what: 'Polyray serving text-glove with Redis' });
  return out;
}

export function markdownReport(r: BenchResults): string {
  const ceil = r.ceiling.best;
  return `# Polyray bench results — \`text-glove\`, \`text-bert-synthetic\`

Produced by \`npm run bench\` (\`bench/run.ts\`) on ${r.conditions.startedAt}; the raw figures are in \`results.json\`. Rerun to refresh: this file is
rewritten by every run, notes included (they are computed from the figures).

## How to run

\`\`\`sh
npm run models:build                  # once: builds models/ (text-glove, text-bert-synthetic*)
npm run bench                         # full run (~6 min on 2 cores): writes bench/RESULTS.md and bench/results.json
npm run bench -- --quick              # smoke run (~60 s) into bench/out/quick/ (git-ignored)
npm run bench -- --no-transformer     # skip issue 7 (text-bert-synthetic); --no-redis skips the GLOBAL row
npm run bench -- --out DIR            # write the two files elsewhere
npm run bench -- --no-variants        # skip the alternative-settings runs
npm run bench -- --all-models         # services load every model of models/ (default: text-glove only)
npm run bench -- --render bench/results.json   # rewrite RESULTS.md from existing figures (measures nothing)
npm run bench -- --set POLYRAY_BATCH_MAX_WAIT_US=0   # extra service environment for the main run (repeatable)
\`\`\`

The bench starts and stops its own service processes (loopback only, free ports) and kills them on exit, error, SIGINT or
SIGTERM; a service also stops by itself if the bench process dies (\`bench/orphan-guard.mjs\`). Run it on an otherwise idle
machine: the *others* columns show how much CPU other processes took during each measurement. Services run with the current
defaults (\`POLYRAY_BATCH_MAX_WAIT_US\` = 0, inference threads at nice 10, ONNX Runtime spinning as each manifest asks: off for text-glove). Row meanings and targets: \`docs/BENCH.md\`.

## What each table measures

- **Ceiling** — raw onnxruntime-node \`InferenceSession.run()\` in the bench process, with the session options of the service's
  workers (\`src/runtime/worker.ts\`), on bench sentences tokenised with the model's \`WordTokenizer\` and padded per batch.
  No HTTP, GraphQL, cache or worker messages. items/s = batch size × runs ÷ time; *run p50* is one \`run()\` call; *cores* is the
  CPU the bench process used meanwhile (a spinning ONNX Runtime thread shows here); *others* is the CPU every other process on the
  machine used meanwhile; *padded len* the mean padded sequence length; *fill* real ÷ padded tokens. All sessions are created first
  and the cells measured in ${r.ceiling.rounds} interleaved round(s) of ${Math.round(r.ceiling.cellMsPerRound)} ms each, so drift on this shared
  machine hits every cell alike. *intra=2 no-spin* is intra=2 with \`session.intra_op.allow_spinning = "0"\`, an option the
  service does not set (shown for comparison only; it is not eligible as the ceiling). The best eligible cell is **the ceiling**.
- **Main-thread steps** — the per-item work the service does on its event loop for a cache miss besides inference
  (cache key, tokenisation, building the int64 feeds as \`src/runtime/batcher.ts\` does), timed alone on one core.
- **Service** — the real service (\`node dist/main.js\`, as \`npm start\` runs it) as a child process on a free loopback port, driven through
  \`POST /graphql\` by N closed-loop clients (each sends its next request when the previous one answers) over keep-alive HTTP.
  *miss*: every input is a sentence never sent before (all \`COMPUTED\`, checked on every response: see *sources*);
  *×16/req*: 16 inputs per request; *memory hit*: a warmed set of 1,024 sentences, one per request, all \`MEMORY\`.
  req/s and items/s count responses completed inside the timed window; latency is send → response parsed, per request.
  *of ceiling* = items/s ÷ the ceiling. *batch (mean)* and *run ms/batch* come from the service's own \`/metrics\`
  (\`polyray_batch_size\`, \`polyray_inference_batch_seconds\` for text-glove) scraped before and after the phase. CPU columns are cores used during the window (1.00 = one core busy): the bench
  process (*cpu bench*, the load generator), the service's main thread (*svc main*: HTTP, GraphQL, cache, tokeniser, batcher),
  the service's other threads (*svc other*: inference worker, ONNX Runtime threads, GC, libuv) and the busiest one of those alone,
  and every other process on this shared machine (*others*).
- **Variants** — the service started with one setting changed (environment only; \`src/\` untouched), cache-miss phases only.
  All variant services run at the same time (the idle ones use no CPU) and are driven in interleaved rounds with a rotating
  order (*per round*), and compared with the defaults run the same way in the same rounds (*default (repeat)*).
  *default, http client* drives the default service with node:http instead of fetch: same service, cheaper client.

## Conditions

${mdTable(conditionsTable(r))}

## Ceiling (raw \`InferenceSession.run()\`)

The ceiling: **${int(ceil.itemsPerS)} items/s** (batch ${ceil.batchSize}, intra-op threads ${ceil.intraOpThreads}; marked *).
Mean sentence length ${r.ceiling.meanTokens.toFixed(1)} tokens. Session creation: ${Object.entries(r.ceiling.sessionCreateMs)
    .map(([k, v]) => `${k} ${v} ms`)
    .join(', ')}.

${mdTable(ceilingTable(r.ceiling))}

${mdTable(hostCostTable(r.ceiling))}

## Service through HTTP GraphQL

Settings: ${settingsLabel(r.main.settings)} (${Object.keys(r.main.overrides).length ? `overrides ${JSON.stringify(r.main.overrides)}` : 'the service defaults on this machine'}).

${mdTable(phaseTable(r.main, ceil.itemsPerS))}
${
  r.main.phases.some((p) => p.errors)
    ? `\nFirst errors: ${r.main.phases
        .filter((p) => p.firstError)
        .map((p) => `${phaseLabel(p)}: ${p.firstError}`)
        .join('; ')}\n`
    : ''
}
${
  r.variants.length
    ? `## Variants (not applied: measured only)

${mdTable(variantTable(r))}
`
    : ''
}
${r.globalHit ? globalHitMarkdown(r.globalHit) : ''}
${r.transformer ? transformerMarkdown(r.transformer, extraMemory(r)) : r.conditions.transformerError ? `## Issue 7\n\nThe section failed: ${r.conditions.transformerError}\n` : ''}
## Notes (text-glove sections)

${notes(r)
  .map((n) => `- ${n}`)
  .join('\n')}
`;
}
