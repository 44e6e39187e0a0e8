/**
 * The dispatch loop shared by every batcher: a bounded queue of pending items, the wait-for-company
 * timer, worker-lease acquisition, settling each item from its batch's results, and drain.
 *
 * A batch is dispatched when the policy says the queue is full or when the head item has waited
 * `maxWaitUs`. Dispatch first acquires a worker lease; items that arrive while it waits still join,
 * which is what makes batches grow under load. What a batch is (which items, how they are padded or
 * stacked, how results are split) belongs to the policy: the token batcher groups by length, the tensor
 * batcher takes in order by cost. The policy returns one result per item; settling is done here, in one
 * place, so a policy cannot leave a waiter hanging: a run that throws, or that returns a different
 * number of results than it was given items, rejects every item of its batch.
 *
 * Many clients, one queue (fair serving):
 * - Each client has its own FIFO; the policy sees the queue in *fair order*: start-time fair queuing over
 *   the policy's cost (tokens, pixels) divided by the client's weight, so a client that floods the queue
 *   waits behind its own backlog, not in front of everyone else's. Only the first `window` items of that
 *   order are offered to the policy, so a batch fills with the clients at the front, not with whoever
 *   queued most; batches still mix clients.
 * - Priority classes: `batch` items come after every `interactive` one in that order, so batch work only
 *   fills capacity interactive work leaves.
 * - Bounds: a client may queue at most `maxQueueItemsPerClient` (the flooding client gets OVERLOADED), and
 *   everything together at most `maxQueueItems`.
 * - Deadlines: a submit may carry a deadline and an abort signal; its items still queued when either fires
 *   are removed and rejected (DEADLINE_EXCEEDED), so a caller who gave up is never computed.
 * - A batch whose worker died (INFERENCE_FAILED, reason `worker-exit`) goes back to the front of the queue
 *   once, for a fresh worker; a second death fails it.
 * - Admission by time: the queue measures what a unit of cost takes to run (moving average over batches,
 *   per size class of a batch's largest item) and refuses a submit whose expected wait passes
 *   `maxQueueWaitMs` (OVERLOADED, `retryAfterMs` = that wait). Queued work is priced at each item's own
 *   class rate: a long input behind short ones does not price their tokens at its own (higher) rate.
 *   The wait counts what runs before the new items in fair order: the client's own backlog, each other
 *   client's backlog up to its weighted share of it, and the batches running; a light client beside a
 *   flood is admitted, the flood is refused.
 * - Paced refusals (`refusalPaceMs`, 250 ms by default): an OVERLOADED answer is given that long after the
 *   submit, not at once. Refused clients otherwise come back within milliseconds (at once, or after a short
 *   fixed delay), hundreds of requests a second, each costing the event loop what a cache hit costs; on 2
 *   cores that took the inference worker's CPU, batches slowed, the estimate grew and more was refused:
 *   throughput halved (bench:overload, 48 connections of 8 texts: 36-46 items/s retrying at once, 41-54
 *   waiting 100 ms; paced at 250 ms, 72-98 and 80-100). Pacing holds each connection to one refusal per pace.
 * - Calibrated admission: what the model leaves out (work that arrives later but is served first in fair
 *   order, a loaded event loop, tokenisers and workers sharing the cores) is measured instead of guessed:
 *   each admitted request's real wait is compared with the wait predicted for it, and predictions are scaled
 *   by a high quantile of that ratio over recent requests, so the bound holds for most admitted requests,
 *   not only for the average one. The real wait is compared with the work the request was admitted behind
 *   priced at the rates measured by then, so rates still being learnt are not counted twice.
 * - Following a slowdown at once: rates move half-way up towards a slower batch and a fifth of the way
 *   down towards a faster one; a batch running now counts for the part of it still to run, and one already
 *   running longer than its rate says scales every prediction by how late it is. Under a sudden load (the
 *   tokenisers and the event loop taking the cores) the synthetic BERT's rate doubled within a batch, and
 *   the requests admitted before the rates caught up waited ~2x the bound.
 */
import type { Context, Link } from '@opentelemetry/api';
import { ErrorCode, PolyrayError } from '../errors.ts';
import { failed, linkTo, startSpan } from '../telemetry/tracing.ts';
import type { InferencePool, Lease } from './pool.ts';

/** A queued item as a policy sees it. */
export interface Waiting<T> {
  readonly item: T;
  /** `Clock.now()` when it was submitted. */
  readonly enqueuedAt: number;
}

/** Who a submit is for and how urgent it is. */
export interface SubmitOptions {
  /** The client (fair share and per-client bound). Default: one shared anonymous client. */
  client?: string | undefined;
  /** The client's share relative to others (clients file `weight`). Default 1. */
  weight?: number | undefined;
  /** `batch` work waits while `interactive` work is queued. Default interactive. */
  priority?: Priority | undefined;
  /** `Clock.now()` after which the items are not worth computing; still queued then, they are rejected. */
  deadline?: number | undefined;
  /** The caller went away (HTTP request closed): items still queued are rejected. */
  signal?: AbortSignal | undefined;
  /**
   * `Clock.now()` when the request arrived: admission by time counts what it already spent (tokenisation,
   * a loaded event loop) against POLYRAY_QUEUE_MAX_WAIT_MS. Default: the moment of the submit.
   */
  arrivedAt?: number | undefined;
  /** The request's trace context (tracing on): its queue wait and the batches that run it are traced under it. */
  trace?: Context | undefined;
}

export type Priority = 'interactive' | 'batch';

interface Pending<T, R> extends Waiting<T> {
  resolve: (r: R) => void;
  reject: (e: Error) => void;
  client: ClientQueue<T, R>;
  /** 0 interactive, 1 batch. */
  readonly rank: number;
  /** Fair-share cost (tokens, pixels). */
  readonly cost: number;
  /** Virtual start and finish times: the fair order. */
  readonly start: number;
  readonly finish: number;
  readonly seq: number;
  /** Set once the item has left the queue (taken, expired or aborted). */
  gone?: boolean;
  /** Called when it leaves the queue. */
  onGone?: () => void;
  /** Already put back once after its worker died. */
  retried?: boolean;
  /** The submit's trace context (tracing on). */
  trace?: Context;
  /** Called once when it first leaves the queue (ends the submit's queue-wait span with its last item). */
  waited?: () => void;
}

interface ClientQueue<T, R> {
  id: string;
  items: Pending<T, R>[];
  /** Virtual finish time of the client's last queued item. */
  last: number;
  /** Cost of its queued items, and its weight and class as last submitted. */
  cost: number;
  /** Cost of its queued items by size class (see `sizeClass`): each class is priced at its own rate. */
  byClass: Map<number, number>;
  weight: number;
  rank: number;
}

/** Time source and timer of a queue; tests pass a fake one to drive `maxWaitUs` without sleeping. */
export interface Clock {
  /** Monotonic milliseconds. */
  now(): number;
  /** Calls `fn` once after `ms` milliseconds; the returned function cancels the call. */
  after(ms: number, fn: () => void): () => void;
}

/** `performance.now()` and Node's timers. */
export const systemClock: Clock = {
  now: () => performance.now(),
  after: (ms, fn) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
};

/**
 * The batchers' fourth constructor argument: a whole `Clock`, or (the older form) only a `now` function,
 * which keeps Node's timers.
 */
export type ClockOption = Clock | (() => number);

export function toClock(c: ClockOption): Clock {
  return typeof c === 'function' ? { now: c, after: systemClock.after } : c;
}

/** Queue bounds every batcher takes. */
export interface QueueOptions {
  /** How long the oldest item waits for company before dispatch, in microseconds. */
  maxWaitUs: number;
  /** Most items queued; beyond it submits fail with OVERLOADED. */
  maxQueueItems: number;
  /** Most items one client may have queued; beyond it that client's submits fail with OVERLOADED. Default `maxQueueItems`. */
  maxQueueItemsPerClient?: number;
  /** How many items of the fair order the policy may choose a batch from. Default 256. */
  window?: number;
  /** Longest expected wait a submit may face, in ms; beyond it OVERLOADED. 0: no bound by time (default). */
  maxQueueWaitMs?: number;
  /** Called with each item's time in the queue (ms) as its batch starts (the queue-wait histogram). */
  observeWait?: ((ms: number) => void) | undefined;
  /** How long after the submit an OVERLOADED refusal is delivered, in ms (see the file header). Default 0: at once. */
  refusalPaceMs?: number;
}

/**
 * Checks a batcher's options: `integers` must be integers >= 1, `maxWaitUs` finite and >= 0. The
 * TypeError names the owner, the option and the value received.
 */
export function checkQueueOptions<O extends QueueOptions>(owner: string, o: O, integers: readonly (keyof O & string)[]): O {
  for (const k of integers) {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new TypeError(`${owner} option ${k} must be an integer >= 1, received ${String(v)}`);
  }
  if (!Number.isFinite(o.maxWaitUs) || o.maxWaitUs < 0) throw new TypeError(`${owner} option maxWaitUs must be >= 0, received ${String(o.maxWaitUs)}`);
  return o;
}

export interface BatchPolicy<T, R> {
  /** Model name, for messages. */
  readonly name: string;
  /** Whether the queue already holds a full batch. */
  full(queue: readonly Waiting<T>[]): boolean;
  /**
   * Picks the next batch as indices into the queue (oldest first, never empty). The batch keeps queue
   * order whatever order the indices come in; picking none sends the oldest item alone.
   */
  take(queue: readonly Waiting<T>[]): Iterable<number>;
  /** Runs one batch on a leased worker; one result per item, in the order given. */
  run(items: T[], run: Lease['run']): Promise<R[]>;
  /** What an item costs in fair-share terms (tokens, pixels). Default 1. */
  cost?(item: T): number;
}

type QueueState = { kind: 'open' } | { kind: 'draining'; done: Promise<void> } | { kind: 'closed' };

/** The error every item of a failed batch gets; `reason` says which check failed (for logs, not clients). */
export const batchFailed = (reason?: string): PolyrayError =>
  new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed for this batch; the request can be retried', reason ? { reason } : undefined);

const ANONYMOUS = '';

export class DispatchQueue<T, R> {
  readonly #policy: BatchPolicy<T, R>;
  readonly #pool: Pick<InferencePool, 'acquire'>;
  readonly #options: Required<Omit<QueueOptions, 'observeWait'>>;
  readonly #clock: Clock;
  /** Clients with items queued. */
  readonly #clients = new Map<string, ClientQueue<T, R>>();
  #size = 0;
  /** System virtual time: the start of the item at the head of the last batch taken. */
  #virtual = 0;
  #seq = 0;
  #expired = 0;
  #retried = 0;
  /** Measured milliseconds per unit of cost (moving average); undefined until a batch has run. */
  #msPerCost: number | undefined;
  /** The batches running now: each one's cost by size class, and when it started. */
  readonly #running = new Set<{ byClass: Map<number, number>; at: number }>();
  readonly #observeWait: ((ms: number) => void) | undefined;
  /** When the last batch ended with items still queued (the queue was never idle since); else undefined. */
  #backloggedSince: number | undefined;
  /**
   * Measured ms per unit of cost by the size class of a batch's largest item (log2 of its cost): a unit
   * costs more in long sequences (attention grows with the length; measured ~3x from 40 to 300 tokens on
   * the synthetic BERT), so one rate for all lengths admitted long inputs on short ones' speed.
   */
  readonly #rates = new Map<number, number>();
  /** Size class of the last batch measured: the rate a request of unknown size is estimated with. */
  #lastClass: number | undefined;
  /** Recent admitted requests' real wait ÷ predicted wait, with when each was measured (see `correction`). */
  readonly #calibration: { at: number; ratio: number }[] = [];
  /** The correction as of the last sample (recomputed per sample, not per submit). */
  #corrected = 1;
  #cancelTimer: (() => void) | undefined;
  #acquiring = false;
  #inFlight = 0;
  #state: QueueState = { kind: 'open' };
  #idleWaiters: (() => void)[] = [];
  #rejected = 0;
  #failedBatches = 0;

  constructor(policy: BatchPolicy<T, R>, pool: Pick<InferencePool, 'acquire'>, options: QueueOptions, clock: ClockOption = systemClock) {
    this.#policy = policy;
    this.#pool = pool;
    this.#options = {
      maxWaitUs: options.maxWaitUs,
      maxQueueItems: options.maxQueueItems,
      maxQueueItemsPerClient: options.maxQueueItemsPerClient ?? options.maxQueueItems,
      window: options.window ?? 256,
      maxQueueWaitMs: options.maxQueueWaitMs ?? 0,
      refusalPaceMs: options.refusalPaceMs ?? 0,
    };
    this.#observeWait = options.observeWait;
    this.#clock = toClock(clock);
  }

  get length(): number {
    return this.#size;
  }

  /** Items removed before inference because their deadline passed or their caller went away. */
  get expired(): number {
    return this.#expired;
  }

  /** Measured milliseconds per unit of cost (tokens, pixels); undefined before the first batch. */
  get msPerCost(): number | undefined {
    return this.#msPerCost;
  }

  /**
   * Expected wait, in ms, before work of `cost` from client `id` (weight, class) would start running:
   * undefined until the queue has measured a batch.
   */
  expectedWaitMs(id: string, cost: number, weight = 1, rank = 0, largestItem = 0): number | undefined {
    if (this.#rateFor(largestItem) === undefined) return undefined;
    return this.#timeOf(this.#aheadOf(id, cost, weight, rank));
  }

  /**
   * The cost, by size class, that runs before work of `cost` from client `id`: the batches running, the
   * client's own backlog, and each other client's backlog up to its weighted share of it. Each class is
   * priced at its own rate: a queue of short items ahead of a long one is not priced at the long one's
   * rate per token (mixed lengths were over-refused ~2x that way).
   */
  #aheadOf(id: string, cost: number, weight: number, rank: number): Map<number, number> {
    const mine = this.#clients.get(id);
    const share = ((mine?.cost ?? 0) + cost) / weight;
    const ahead = new Map<number, number>();
    // A running batch counts for the part of it still to run (all of it would refuse work that fits once it
    // ends: large requests were refused whenever a batch ran while small ones still fitted, and starved).
    const now = this.#clock.now();
    for (const r of this.#running) {
      const expected = this.#timeOf(r.byClass);
      addScaled(ahead, r.byClass, expected > 0 ? Math.max(MIN_LEFT, 1 - (now - r.at) / expected) : 1);
    }
    if (mine) addScaled(ahead, mine.byClass, 1);
    for (const c of this.#clients.values()) {
      if (c.id === id || c.rank > rank || c.cost <= 0) continue;
      addScaled(ahead, c.byClass, Math.min(1, (share * c.weight) / c.cost));
    }
    return ahead;
  }

  /** Ms to run work of these costs by size class, each at its class's rate. */
  #timeOf(byClass: ReadonlyMap<number, number>): number {
    let ms = 0;
    for (const [cls, cost] of byClass) if (cost > 0) ms += cost * (this.#rateForClass(cls) ?? 0);
    return ms;
  }

  /**
   * Ms per unit of cost for work whose largest item costs `largestItem` (0: unknown, the last class
   * measured). A class not measured yet takes the nearest measured one below it scaled up by the length
   * ratio (pessimistic until measured), or the nearest above it as it is.
   */
  #rateFor(largestItem: number): number | undefined {
    if (this.#lastClass === undefined) return undefined;
    return this.#rateForClass(largestItem > 0 ? sizeClass(largestItem) : this.#lastClass);
  }

  #rateForClass(cls: number): number | undefined {
    if (this.#lastClass === undefined) return undefined;
    const exact = this.#rates.get(cls);
    if (exact !== undefined) return exact;
    let below: number | undefined;
    let above: number | undefined;
    for (const k of this.#rates.keys()) {
      if (k < cls && (below === undefined || k > below)) below = k;
      if (k > cls && (above === undefined || k < above)) above = k;
    }
    if (below !== undefined) return this.#rates.get(below)! * 2 ** (cls - below);
    return this.#rates.get(above!)!;
  }

  /** Items refused because the queue was full. */
  get rejected(): number {
    return this.#rejected;
  }

  /** Batches whose every item was rejected (run failed, or returned the wrong number of results). */
  get failedBatches(): number {
    return this.#failedBatches;
  }

  /**
   * OVERLOADED when what is already queued ahead of this client's next item, plus `atLeast` (a lower bound of
   * the new items' costs, when the caller knows one), would take longer than POLYRAY_QUEUE_MAX_WAIT_MS:
   * callers ask before they tokenise, so a refusal under overload costs no tokenisation (which would
   * otherwise compete with inference for the cores). Counted as `count` rejected items.
   */
  refuseEarly(options: SubmitOptions, count: number, atLeast: readonly number[] = []): PolyrayError | undefined {
    const bound = this.#options.maxQueueWaitMs;
    if (bound <= 0 || this.#state.kind !== 'open') return undefined;
    const weight = options.weight !== undefined && options.weight > 0 && Number.isFinite(options.weight) ? options.weight : 1;
    const ahead = this.expectedWaitMs(options.client ?? ANONYMOUS, 0, weight, options.priority === 'batch' ? 1 : 0);
    if (ahead === undefined || ahead === 0) return undefined;
    // The request's own work, from a lower bound of its items' costs when the caller knows one (a text's
    // tokens from its length): most refusals then come before tokenising, not after.
    let own = 0;
    for (const c of atLeast) if (c >= 1) own += c * (this.#rateForClass(sizeClass(c)) ?? 0);
    const raw = ahead + own;
    const wait = raw * this.#scale();
    if (wait <= bound - this.#spent(options)) return undefined;
    this.#rejected += count;
    return new PolyrayError(
      ErrorCode.OVERLOADED,
      `The ${this.#policy.name} queue would take about ${Math.ceil(wait)} ms to reach this request (at most ${bound} ms, POLYRAY_QUEUE_MAX_WAIT_MS); retry later`,
      { retryAfterMs: Math.ceil(wait) },
    );
  }

  /**
   * A rejection with `e`, delivered `refusalPaceMs` from now (at once when 0); for OVERLOADED refusals. Its
   * `retryAfterMs` counts from when it is answered: the pace already waited is taken off (at least 100 ms left).
   */
  paced(e: PolyrayError): Promise<never> {
    const pace = this.#options.refusalPaceMs;
    if (pace <= 0) return Promise.reject(e);
    const retry = e.extensions['retryAfterMs'];
    const answer = typeof retry === 'number' ? new PolyrayError(e.code, e.message, { ...e.extensions, retryAfterMs: Math.max(100, retry - pace) }) : e;
    const p = new Promise<never>((_, reject) => {
      this.#clock.after(pace, () => reject(answer));
    });
    // Its callers attach their own handlers; this one only keeps an unobserved copy from being reported.
    p.catch(() => undefined);
    return p;
  }

  /** What the request already spent before its submit (ms), from `arrivedAt`. */
  #spent(options: SubmitOptions): number {
    return options.arrivedAt === undefined ? 0 : Math.max(0, this.#clock.now() - options.arrivedAt);
  }

  /** Queues items; each promise settles with its own result or the error of its batch. */
  submit(items: readonly T[], options: SubmitOptions = {}): Promise<R>[] {
    if (this.#state.kind !== 'open') {
      const e = new PolyrayError(ErrorCode.SHUTTING_DOWN, 'The service is shutting down; retry on another replica');
      return items.map(() => Promise.reject(e));
    }
    const refuse = (e: PolyrayError): Promise<R>[] => {
      this.#rejected += items.length;
      return items.map(() => this.paced(e));
    };
    const id = options.client ?? ANONYMOUS;
    const queued = this.#clients.get(id)?.items.length ?? 0;
    const { maxQueueItems: max, maxQueueItemsPerClient: perClient } = this.#options;
    if (perClient < max && queued + items.length > perClient) {
      return refuse(
        new PolyrayError(ErrorCode.OVERLOADED, `This client has ${queued} items queued for ${this.#policy.name} (at most ${perClient}); retry later`, {
          retryAfterMs: Math.max(100, Math.ceil(this.expectedWaitMs(id, 0) ?? 0)),
        }),
      );
    }
    if (this.#size + items.length > max) {
      return refuse(new PolyrayError(ErrorCode.OVERLOADED, `The ${this.#policy.name} queue is full (${max} items); retry later`, { retryAfterMs: 100 }));
    }
    if (options.signal?.aborted || (options.deadline !== undefined && this.#clock.now() >= options.deadline)) {
      this.#expired += items.length;
      const e = expiredError(options);
      return items.map(() => Promise.reject(e));
    }
    const weight = options.weight !== undefined && options.weight > 0 && Number.isFinite(options.weight) ? options.weight : 1;
    const rank = options.priority === 'batch' ? 1 : 0;
    const costs = items.map((item) => Math.max(1, this.#policy.cost?.(item) ?? 1));
    const bound = this.#options.maxQueueWaitMs;
    let predicted: number | undefined;
    /** The work the prediction priced, by size class (the request's own included), to price again at calibration. */
    let work: Map<number, number> | undefined;
    if (bound > 0 && this.#rateFor(Math.max(...costs)) !== undefined) {
      // Until the request's own work is done, not only until it starts: a request of many long inputs
      // spans several batches, and its caller waits for the last.
      work = this.#aheadOf(
        id,
        costs.reduce((a, b) => a + b, 0),
        weight,
        rank,
      );
      const start = this.#timeOf(work);
      for (const c of costs) addClass(work, c, 1);
      // Nothing ahead (an idle queue) admits any request: its wait is its own work, which refusing cannot shorten.
      // Learnt from either way: an idle queue's prediction is the request's own work.
      predicted = this.#timeOf(work);
      const wait = start === 0 ? undefined : predicted * this.#scale();
      const allowed = bound - this.#spent(options);
      if (wait !== undefined && wait > allowed) {
        return refuse(
          new PolyrayError(
            ErrorCode.OVERLOADED,
            `The ${this.#policy.name} queue would take about ${Math.ceil(wait)} ms to answer this request (at most ${bound} ms, POLYRAY_QUEUE_MAX_WAIT_MS); retry later`,
            { retryAfterMs: Math.max(100, Math.ceil(wait - allowed)) },
          ),
        );
      }
    }
    let client = this.#clients.get(id);
    if (!client) {
      client = { id, items: [], last: 0, cost: 0, byClass: new Map(), weight, rank };
      this.#clients.set(id, client);
    }
    client.weight = weight;
    client.rank = rank;
    const enqueuedAt = this.#clock.now();
    // Start-time fair queuing: a client's items follow each other in virtual time; one that was idle starts
    // at the current virtual time (no credit saved up while away).
    let start = Math.max(this.#virtual, client.last);
    const mine: Pending<T, R>[] = [];
    const promises = items.map(
      (item, j) =>
        new Promise<R>((resolve, reject) => {
          const cost = costs[j]!;
          const finish = start + cost / weight;
          const p: Pending<T, R> = { item, enqueuedAt, resolve, reject, client: client!, rank, cost, start, finish, seq: this.#seq++ };
          start = finish;
          mine.push(p);
          client!.items.push(p);
          client!.cost += cost;
          addClass(client!.byClass, cost, 1);
        }),
    );
    client.last = start;
    this.#size += mine.length;
    this.#watch(mine, options);
    if (options.trace) this.#traceWait(mine, options.trace);
    if (work !== undefined && predicted !== undefined && predicted >= MIN_CALIBRATION_MS) this.#calibrate(promises, work, enqueuedAt);
    this.#schedule();
    return promises;
  }

  /**
   * The factor predictions are scaled by: the 90th percentile of real ÷ predicted wait over the requests
   * admitted in the last CALIBRATION_WINDOW_MS (at most CALIBRATION_SAMPLES), within [0.5, 4] (at least 1
   * with fewer than MIN_CALIBRATION_SAMPLES); 1 without recent samples. Below 1 when the model overestimates
   * (queued work whose callers give up). Computed when a sample arrives; read on every submit.
   */
  get correction(): number {
    const newest = this.#calibration.at(-1);
    return newest !== undefined && this.#clock.now() - newest.at <= CALIBRATION_WINDOW_MS ? this.#corrected : 1;
  }

  /**
   * What predictions are scaled by at admission: the correction, or more when a batch running now has already
   * taken longer than its rate says, by that much. Rates learn from batches that ended; a sudden load (the
   * tokenisers and the event loop taking the cores) slowed the synthetic BERT ~2x at once, and the requests
   * admitted before the next batch ended waited ~2x the bound.
   */
  #scale(): number {
    const now = this.#clock.now();
    let overdue = 1;
    for (const r of this.#running) {
      const expected = this.#timeOf(r.byClass);
      if (expected > 0) overdue = Math.max(overdue, (now - r.at) / expected);
    }
    return Math.max(this.correction, overdue);
  }

  #recalibrate(now: number): void {
    const recent = this.#calibration.filter((c) => now - c.at <= CALIBRATION_WINDOW_MS).map((c) => c.ratio);
    if (recent.length === 0) {
      this.#corrected = 1;
      return;
    }
    recent.sort((a, b) => a - b);
    const q = recent[Math.min(recent.length - 1, Math.floor(0.9 * recent.length))]!;
    // One or two samples may only raise predictions (to the larger of them): the requests admitted in a
    // load's first seconds were otherwise priced without the correction until a third had finished, and
    // waited up to ~1.5x the bound.
    this.#corrected = Math.min(4, Math.max(recent.length < MIN_CALIBRATION_SAMPLES ? 1 : 0.5, q));
  }

  /**
   * Once every item of an admitted request has its result, records its real wait against the wait of the
   * work it was admitted behind, priced at the rates measured by then: the correction is for what the model
   * leaves out, not for rates still being learnt (those were counted twice: under a sudden load the rates
   * grew ~2x within seconds, and the ratios of the requests admitted meanwhile kept the correction at ~3 for
   * the next minute, admitting nothing but requests to an idle queue).
   */
  #calibrate(promises: readonly Promise<R>[], work: ReadonlyMap<number, number>, submittedAt: number): void {
    void Promise.all(promises).then(
      () => {
        const now = this.#clock.now();
        const predicted = this.#timeOf(work);
        if (predicted <= 0) return;
        this.#calibration.push({ at: now, ratio: (now - submittedAt) / predicted });
        if (this.#calibration.length > CALIBRATION_SAMPLES) this.#calibration.shift();
        this.#recalibrate(now);
      },
      // A failed, dropped or abandoned request says nothing about how long work waits.
      () => undefined,
    );
  }

  /** Rejects `mine` still queued when the deadline passes or the signal aborts. */
  #watch(mine: Pending<T, R>[], options: SubmitOptions): void {
    if (options.deadline === undefined && !options.signal) return;
    let cancelTimer: (() => void) | undefined;
    const expire = (): void => {
      cancelTimer?.();
      options.signal?.removeEventListener('abort', expire);
      const e = expiredError(options);
      const left = mine.filter((p) => !p.gone);
      this.#removeAll(left);
      this.#expired += left.length;
      for (const p of left) p.reject(e);
      this.#notifyIdle();
    };
    if (options.deadline !== undefined) cancelTimer = this.#clock.after(Math.max(0, options.deadline - this.#clock.now()), expire);
    options.signal?.addEventListener('abort', expire, { once: true });
    // Once every item has left the queue, the watch has nothing left to do.
    let left = mine.length;
    const gone = (): void => {
      if (--left > 0) return;
      cancelTimer?.();
      options.signal?.removeEventListener('abort', expire);
    };
    for (const p of mine) p.onGone = gone;
  }

  /** A span from the submit until its last item leaves the queue (to a batch, or dropped). */
  #traceWait(mine: Pending<T, R>[], ctx: Context): void {
    const span = startSpan('polyray.queue.wait', { 'polyray.model': this.#policy.name, 'polyray.items': mine.length, 'polyray.queue.length': this.#size }, ctx);
    if (!span) return;
    let left = mine.length;
    const waited = (): void => {
      if (--left === 0) span.end();
    };
    for (const p of mine) {
      p.trace = ctx;
      p.waited = waited;
    }
  }

  /** Puts a batch whose worker died back at the front of its clients' queues, once (the caller reschedules). */
  #requeue(batch: readonly Pending<T, R>[]): void {
    this.#retried += batch.length;
    const byClient = new Map<ClientQueue<T, R>, Pending<T, R>[]>();
    for (const q of batch) {
      // The client's queue may have emptied and been replaced by a new one since the batch was taken.
      let c = this.#clients.get(q.client.id);
      if (!c) {
        c = q.client;
        c.items = [];
        c.cost = 0;
        c.byClass = new Map();
        this.#clients.set(c.id, c);
      }
      q.client = c;
      q.retried = true;
      q.gone = false;
      byClient.set(c, [...(byClient.get(c) ?? []), q]);
    }
    for (const [c, qs] of byClient) {
      c.items = [...qs, ...c.items];
      c.cost += qs.reduce((n, q) => n + q.cost, 0);
      for (const q of qs) addClass(c.byClass, q.cost, 1);
    }
    this.#size += batch.length;
  }

  /** Items put back once because their worker died mid-batch. */
  get retried(): number {
    return this.#retried;
  }

  /** Takes `ps` out of their clients' queues (not settling them): one pass over each client's queue. */
  #removeAll(ps: readonly Pending<T, R>[]): void {
    const touched = new Set<ClientQueue<T, R>>();
    for (const p of ps) {
      if (p.gone) continue;
      p.gone = true;
      p.onGone?.();
      p.waited?.();
      p.waited = undefined;
      p.client.cost -= p.cost;
      addClass(p.client.byClass, p.cost, -1);
      this.#size--;
      touched.add(p.client);
    }
    for (const c of touched) {
      c.items = c.items.filter((p) => !p.gone);
      if (c.items.length === 0 && this.#clients.get(c.id) === c) this.#clients.delete(c.id);
    }
    // A queue emptied by callers giving up is idle from now on: the time until the next batch is not a
    // backlog's and must not be measured as the cost of that batch (it made the rate ~10x too slow under
    // abandoning callers, and admission then refused nearly everything while the worker idled).
    if (this.#size === 0) this.#backloggedSince = undefined;
  }

  /** The first `window` queued items in fair order: class, then virtual finish time, then arrival. */
  #view(): Pending<T, R>[] {
    const limit = this.#options.window;
    // One client (the common case): its own FIFO is the fair order.
    if (this.#clients.size === 1) return this.#clients.values().next().value!.items.slice(0, limit);
    const heads = [...this.#clients.values()].map((c) => ({ c, at: 0 }));
    const out: Pending<T, R>[] = [];
    while (out.length < limit) {
      let best: { c: ClientQueue<T, R>; at: number } | undefined;
      for (const h of heads) {
        const p = h.c.items[h.at];
        if (!p) continue;
        const b = best && best.c.items[best.at]!;
        if (!b || p.rank < b.rank || (p.rank === b.rank && (p.finish < b.finish || (p.finish === b.finish && p.seq < b.seq)))) best = h;
      }
      if (!best) break;
      out.push(best.c.items[best.at]!);
      best.at++;
    }
    return out;
  }

  #schedule(): void {
    if (this.#size === 0 || this.#acquiring) return;
    const view = this.#view();
    const full = this.#policy.full(view);
    // While a batch of this queue runs, only a full batch is sent after it (to wait in the worker, where
    // the pool allows it): a partial one waits for the run to end and grows meanwhile.
    if (this.#inFlight > 0 && !full && this.#state.kind !== 'draining') return;
    const waitedUs = (this.#clock.now() - view[0]!.enqueuedAt) * 1000;
    const maxWaitUs = this.#options.maxWaitUs;
    if (full || waitedUs >= maxWaitUs || this.#state.kind === 'draining') {
      this.#cancelTimer?.();
      this.#cancelTimer = undefined;
      this.#dispatch();
    } else if (!this.#cancelTimer) {
      this.#cancelTimer = this.#clock.after(Math.max(0, (maxWaitUs - waitedUs) / 1000), () => {
        this.#cancelTimer = undefined;
        this.#schedule();
      });
    }
  }

  #dispatch(): void {
    this.#acquiring = true;
    this.#pool.acquire().then(
      (lease) => {
        this.#acquiring = false;
        if (this.#size === 0) {
          lease.release();
          this.#notifyIdle();
          return;
        }
        const batch = this.#take();
        this.#inFlight++;
        void this.#run(batch, lease).finally(() => {
          lease.release();
          this.#inFlight--;
          this.#schedule();
          this.#notifyIdle();
        });
        this.#schedule();
      },
      (err: Error) => {
        this.#acquiring = false;
        const batch = [...this.#clients.values()].flatMap((c) => c.items);
        this.#removeAll(batch);
        for (const q of batch) q.reject(err);
        this.#notifyIdle();
      },
    );
  }

  /** Removes the policy's next batch from the queue (chosen from the fair order's window), keeping that order. */
  #take(): Pending<T, R>[] {
    const view = this.#view();
    const picked = new Set(this.#policy.take(view));
    // A policy that picks nothing would leave the queue stuck; the head item always goes.
    if (picked.size === 0) picked.add(0);
    const batch = view.filter((_, i) => picked.has(i));
    this.#virtual = Math.max(this.#virtual, view[0]!.start);
    this.#removeAll(batch);
    return batch;
  }

  /** Runs one batch and settles every item of it; never rejects. */
  async #run(batch: Pending<T, R>[], lease: Lease): Promise<void> {
    const cost = batch.reduce((sum, q) => sum + q.cost, 0);
    const t0 = this.#clock.now();
    const running = { byClass: new Map<number, number>(), at: t0 };
    for (const q of batch) addClass(running.byClass, q.cost, 1);
    this.#running.add(running);
    const observe = this.#observeWait;
    if (observe) for (const q of batch) observe(t0 - q.enqueuedAt);
    // Under a backlog the time from the previous batch's end counts too (forming the batch, the hand-off,
    // a busy event loop): it is what a queued request waits, and run time alone underestimated it ~2x.
    const from = this.#backloggedSince !== undefined && this.#running.size === 1 ? Math.min(t0, this.#backloggedSince) : t0;
    const span = this.#traceBatch(batch, cost);
    try {
      const results = await this.#policy.run(
        batch.map((q) => q.item),
        lease.run.bind(lease),
      );
      // A result per item, or none: resolving some and leaving others pending would hang their callers.
      if (results.length !== batch.length) throw batchFailed('result-count');
      const done = this.#clock.now();
      const sample = (done - from) / cost;
      this.#backloggedSince = this.#size > 0 ? done : undefined;
      this.#msPerCost = towards(this.#msPerCost, sample);
      const cls = sizeClass(Math.max(...batch.map((q) => q.cost)));
      this.#rates.set(cls, towards(this.#rates.get(cls), sample));
      this.#lastClass = cls;
      for (const [i, q] of batch.entries()) q.resolve(results[i]!);
    } catch (e) {
      failed(span, e);
      if (e instanceof PolyrayError && e.extensions['reason'] === 'worker-exit' && batch.every((q) => !q.retried) && this.#state.kind !== 'closed') {
        this.#requeue(batch);
        return;
      }
      this.#failedBatches++;
      // Internal errors (worker messages, tensor shapes) are masked; a PolyrayError is already safe to show.
      const err = e instanceof PolyrayError ? e : batchFailed();
      for (const q of batch) q.reject(err);
    } finally {
      this.#running.delete(running);
      span?.end();
    }
  }

  /** A batch serves many requests: its span is a child of the first traced one and linked to every one. */
  #traceBatch(batch: readonly Pending<T, R>[], cost: number): ReturnType<typeof startSpan> {
    let first: Context | undefined;
    const links = new Map<string, Link>();
    for (const q of batch) {
      if (!q.trace) continue;
      first ??= q.trace;
      const link = linkTo(q.trace);
      if (link) links.set(link.context.spanId, link);
    }
    if (!first) return undefined;
    return startSpan(
      'polyray.inference.batch',
      { 'polyray.model': this.#policy.name, 'polyray.items': batch.length, 'polyray.cost': cost, 'polyray.requests': links.size },
      first,
      [...links.values()],
    );
  }

  #notifyIdle(): void {
    if (this.#size === 0 && this.#inFlight === 0 && !this.#acquiring) {
      const w = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const f of w) f();
    }
  }

  /**
   * Rejects every queued item with `error` (shutdown past its grace period): nothing of it runs, so nothing
   * of it is charged. Batches already running finish. Returns how many items were dropped.
   */
  cancel(error: PolyrayError): number {
    const queued = [...this.#clients.values()].flatMap((c) => c.items);
    this.#removeAll(queued);
    for (const q of queued) q.reject(error);
    this.#notifyIdle();
    return queued.length;
  }

  /** Stops accepting items and resolves once everything queued has run. */
  drain(): Promise<void> {
    if (this.#state.kind === 'draining') return this.#state.done;
    if (this.#state.kind === 'closed') return Promise.resolve();
    const done = new Promise<void>((resolve) => this.#idleWaiters.push(resolve)).then(() => {
      this.#state = { kind: 'closed' };
    });
    this.#state = { kind: 'draining', done };
    this.#schedule();
    this.#notifyIdle();
    return done;
  }
}

function expiredError(options: SubmitOptions): PolyrayError {
  return options.signal?.aborted
    ? new PolyrayError(ErrorCode.DEADLINE_EXCEEDED, 'The request was closed by its caller before its inputs were computed; nothing was run or charged', {
        reason: 'aborted',
      })
    : new PolyrayError(ErrorCode.DEADLINE_EXCEEDED, "The request's deadline passed before its inputs were computed; nothing was run or charged", {
        reason: 'deadline',
      });
}

/** Predictions shorter than this are not learnt from: fixed overheads dominate them. */
const MIN_CALIBRATION_MS = 100;
/** How many recent requests, and how recent, the calibration keeps; fewer than the minimum leave it at 1. */
const CALIBRATION_SAMPLES = 64;
const CALIBRATION_WINDOW_MS = 60_000;
const MIN_CALIBRATION_SAMPLES = 3;

/**
 * A rate's moving average after a new sample: up fast, down slowly. Admission prices queued work with it, and
 * a rate that lags a slowdown admits work it cannot serve in time (a sudden load doubled the synthetic BERT's
 * rate on 2 cores; at 0.2 per batch the estimate took ~8 batches to follow, and the requests admitted
 * meanwhile waited ~2x the bound); a rate that lags a speed-up only refuses a little early.
 */
function towards(prev: number | undefined, sample: number): number {
  if (prev === undefined) return sample;
  return prev + (sample > prev ? RATE_UP : RATE_DOWN) * (sample - prev);
}

const RATE_UP = 0.5;
const RATE_DOWN = 0.2;
/** The least part of a running batch counted as still to run (it may be late). */
const MIN_LEFT = 0.1;

/** Adds `from`'s cost by class to `into`, scaled by `f`. */
function addScaled(into: Map<number, number>, from: ReadonlyMap<number, number>, f: number): void {
  for (const [cls, cost] of from) if (cost > 0) into.set(cls, (into.get(cls) ?? 0) + cost * f);
}

/** Adds `sign` × `cost` to the total of its size class (a class whose total reaches 0 is removed). */
function addClass(byClass: Map<number, number>, cost: number, sign: 1 | -1): void {
  const cls = sizeClass(cost);
  const next = (byClass.get(cls) ?? 0) + sign * cost;
  if (next > 1e-9) byClass.set(cls, next);
  else byClass.delete(cls);
}

/** log2 size class of an item's cost (1, 2–3, 4–7, …). */
function sizeClass(cost: number): number {
  return Math.floor(Math.log2(Math.max(1, cost)));
}
