/**
 * The inference pool: a fixed set of worker threads, each holding a session per model.
 *
 * Batchers `acquire()` a worker lease, run one batch on it and release it. A worker takes up to
 * `pipelineDepth` leases at once and runs their batches one after the other, so its next batch is already
 * there when a run ends. Leases are granted in FIFO order, so batchers of different models share the workers fairly, and a batcher waiting for a lease
 * keeps collecting items — that wait is what makes batches grow under load. A worker that dies fails
 * its in-flight batch (the batcher rejects every waiter of it) and is replaced.
 */
import { Worker } from 'node:worker_threads';
import { ChildWorker, type InferenceWorker } from './child-worker.ts';
import { PolyrayError, ErrorCode } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { ExecutionProviderName } from '../config/index.ts';
import type { ExtraOutput, FeedSpec, FromWorker, LoadResult, ModelLoadSpec, RunOptions, ToWorker } from './worker-protocol.ts';

export interface InferencePoolOptions {
  /** Number of worker threads. Default 1. */
  workers: number;
  /** ONNX Runtime intra-op threads per worker. Default 1. */
  intraOpThreads: number;
  /**
   * Nice value for the inference threads, 0–19 (0: unchanged). Only meaningful where nice is per
   * thread (Linux); callers pass 0 elsewhere. Default 0.
   */
  niceness?: number;
  /**
   * Batches a worker holds at once: the one running and the ones queued behind it. 1 (default) leases
   * each worker to one batch at a time; 2 lets the next batch wait in the worker while the current one
   * runs, so the worker never idles while the main thread hands results back (the dispatch queue sends
   * only full batches ahead, see dispatch-queue.ts).
   */
  pipelineDepth?: number;
  logger: Logger;
  /** Worker entry; default `./worker-entry.mjs` beside this file (registers tsx, then runs worker.ts). */
  workerUrl?: URL;
  /**
   * `process` (default): each worker is a child process, so a worker that crashes or is killed mid-run
   * never takes the service down (child-worker.ts). `thread`: worker threads, as before — a little less
   * memory and start-up time, but a worker ended during a run aborts the whole process.
   */
  isolation?: 'process' | 'thread';
}

export interface RunResult {
  /** The first (or only) requested output. */
  data: Float32Array;
  dims: number[];
  /** The other outputs of a multi-output run, in request order. */
  extra?: ExtraOutput[];
  /** Time ONNX Runtime spent in `run()`, measured in the worker. */
  runMs: number;
}

export interface Lease {
  /** Runs one batch; `output` names one output, or several (the first is `data`, the rest `extra`). */
  run(model: string, feeds: FeedSpec[], output: string | readonly string[], options?: RunOptions): Promise<RunResult>;
  release(): void;
}

export interface PoolStats {
  workers: number;
  /** Nice value of the inference threads, as the last started worker read it back. */
  niceness: number;
  busy: number;
  waiting: number;
  runs: number;
  runsByModel: Record<string, number>;
  runMsTotal: number;
  failures: number;
}

interface Slot {
  worker: InferenceWorker;
  /** Leases granted on this worker and not yet released (at most pipelineDepth). */
  leased: number;
  pending: Map<number, { resolve: (r: RunResult) => void; reject: (e: Error) => void }>;
  closing: boolean;
  /** A load sent after start (a reload) waiting for the worker's answer. */
  loading?: ((results: LoadResult[]) => void) | undefined;
}

type PoolState = { kind: 'idle' } | { kind: 'ready'; loaded: LoadResult[] } | { kind: 'closed' };

export class InferencePool {
  readonly #o: Required<InferencePoolOptions>;
  readonly #slots: Slot[] = [];
  readonly #waiters: ((slot: Slot) => void)[] = [];
  #models: ModelLoadSpec[] = [];
  #nextId = 1;
  #niceness = 0;
  #state: PoolState = { kind: 'idle' };
  readonly #stats = { runs: 0, runsByModel: {} as Record<string, number>, runMsTotal: 0, failures: 0 };
  readonly #replacedListeners: ((results: LoadResult[]) => void)[] = [];
  /** Consecutive failed starts of a replacement worker (backoff). */
  #respawnFailures = 0;

  constructor(options: InferencePoolOptions) {
    if (!Number.isSafeInteger(options.workers) || options.workers < 1) {
      throw new TypeError(`InferencePool option workers must be an integer >= 1, received ${String(options.workers)}`);
    }
    if (!Number.isSafeInteger(options.intraOpThreads) || options.intraOpThreads < 1) {
      throw new TypeError(`InferencePool option intraOpThreads must be an integer >= 1, received ${String(options.intraOpThreads)}`);
    }
    if (options.pipelineDepth !== undefined && (!Number.isSafeInteger(options.pipelineDepth) || options.pipelineDepth < 1)) {
      throw new TypeError(`InferencePool option pipelineDepth must be an integer >= 1, received ${String(options.pipelineDepth)}`);
    }
    this.#o = { workerUrl: new URL('./worker-entry.mjs', import.meta.url), niceness: 0, pipelineDepth: 1, isolation: 'process', ...options };
  }

  /** Starts the workers and loads every model in each. Resolves with the per-model outcome of worker 0. */
  async start(models: ModelLoadSpec[]): Promise<LoadResult[]> {
    if (this.#state.kind !== 'idle') throw new Error(`InferencePool.start called in state ${this.#state.kind}`);
    this.#models = models;
    const results = await Promise.all(Array.from({ length: this.#o.workers }, () => this.#spawn()));
    const loaded = results[0] ?? [];
    this.#state = { kind: 'ready', loaded };
    return loaded;
  }

  async #spawn(): Promise<LoadResult[]> {
    const worker: InferenceWorker = this.#o.isolation === 'process' ? new ChildWorker(this.#o.workerUrl) : new Worker(this.#o.workerUrl);
    const slot: Slot = { worker, leased: 0, pending: new Map(), closing: false };
    const loaded = await new Promise<LoadResult[]>((resolve, reject) => {
      // A worker that exits before it has loaded (a crash at start) fails the start, like an error.
      const onExit = (code: number): void => reject(new Error(`inference worker exited with code ${code} before loading its models`));
      const onMsg = (m: FromWorker): void => {
        if (m.type === 'loaded') {
          worker.off('message', onMsg);
          worker.off('error', reject);
          worker.off('exit', onExit);
          this.#niceness = m.niceness;
          resolve(m.results);
        }
      };
      worker.on('message', onMsg);
      worker.once('error', reject);
      worker.once('exit', onExit);
      worker.postMessage({
        type: 'load',
        models: this.#models,
        intraOpThreads: this.#o.intraOpThreads,
        niceness: this.#o.niceness,
      } satisfies ToWorker);
    });
    worker.on('message', (m: FromWorker) => {
      if (m.type === 'loaded') {
        const done = slot.loading;
        slot.loading = undefined;
        done?.(m.results);
        return;
      }
      if (m.type === 'result' || m.type === 'error') {
        const p = slot.pending.get(m.id);
        if (!p) return;
        slot.pending.delete(m.id);
        if (m.type === 'result') p.resolve({ data: m.data, dims: m.dims, runMs: m.runMs, ...(m.extra ? { extra: m.extra } : {}) });
        else p.reject(new PolyrayError(ErrorCode.INFERENCE_FAILED, 'Inference failed for this batch; the request can be retried', { reason: 'runtime' }));
        if (m.type === 'error') this.#o.logger.error({ err: m.message }, 'inference run failed');
      }
    });
    worker.on('error', (err) => this.#o.logger.error({ err: err.message }, 'inference worker error'));
    worker.on('exit', (code) => this.#onExit(slot, code));
    this.#slots.push(slot);
    this.#grant();
    return loaded;
  }

  #onExit(slot: Slot, code: number): void {
    const i = this.#slots.indexOf(slot);
    if (i >= 0) this.#slots.splice(i, 1);
    for (const p of slot.pending.values()) {
      p.reject(
        new PolyrayError(ErrorCode.INFERENCE_FAILED, 'The inference worker stopped during this batch; the request can be retried', { reason: 'worker-exit' }),
      );
    }
    slot.pending.clear();
    if (!slot.closing && this.#state.kind === 'ready') {
      this.#stats.failures++;
      this.#o.logger.error({ code }, 'inference worker exited; starting a replacement');
      this.#replace();
    }
  }

  /**
   * Starts a replacement worker and tells the listeners what it loaded (a model it could not load must stop
   * taking requests); a worker that cannot start at all is retried with backoff (0.5 s doubling, at most 10 s),
   * so the pool never stays without workers.
   */
  #replace(): void {
    this.#spawn().then(
      (results) => {
        this.#respawnFailures = 0;
        for (const l of this.#replacedListeners) l(results);
      },
      (e: unknown) => {
        const delay = Math.min(10_000, 500 * 2 ** this.#respawnFailures++);
        this.#o.logger.error({ err: (e as Error).message, retryInMs: delay }, 'replacement worker failed to start');
        setTimeout(() => {
          if (this.#state.kind === 'ready') this.#replace();
        }, delay).unref();
      },
    );
  }

  /** Calls `listener` with the load results of every replacement worker. */
  onReplaced(listener: (results: LoadResult[]) => void): void {
    this.#replacedListeners.push(listener);
  }

  /**
   * Ends worker `index` as a crash would (fault tests): a replacement starts. With `isolation: 'process'`
   * at any time, mid-run included (SIGKILL); with threads only between runs — terminating a worker thread
   * inside an ONNX Runtime run aborts the whole process.
   */
  async kill(index = 0): Promise<void> {
    const slot = this.#slots[index];
    if (!slot) throw new RangeError(`no worker ${index}`);
    await slot.worker.terminate();
  }

  /** Process ids of the workers (isolation `process`; empty for threads). */
  workerPids(): number[] {
    return this.#slots.flatMap((s) => (s.worker instanceof ChildWorker && s.worker.pid !== undefined ? [s.worker.pid] : []));
  }

  /** Resolves with a lease on a free worker; leases are granted first come, first served. */
  acquire(): Promise<Lease> {
    if (this.#state.kind === 'closed') return Promise.reject(new PolyrayError(ErrorCode.SHUTTING_DOWN, 'The service is shutting down'));
    return new Promise<Lease>((resolve) => {
      this.#waiters.push((slot) => resolve(this.#lease(slot)));
      this.#grant();
    });
  }

  #grant(): void {
    while (this.#waiters.length > 0) {
      // The least loaded worker first: an idle one before one that is running a batch.
      let best: Slot | undefined;
      for (const slot of this.#slots) {
        if (slot.closing || slot.leased >= this.#o.pipelineDepth) continue;
        if (!best || slot.leased < best.leased) best = slot;
      }
      if (!best) return;
      best.leased++;
      this.#waiters.shift()!(best);
    }
  }

  #lease(slot: Slot): Lease {
    let released = false;
    return {
      run: (model, feeds, output, options) => {
        if (released) return Promise.reject(new Error('lease already released'));
        const id = this.#nextId++;
        return new Promise<RunResult>((resolve, reject) => {
          slot.pending.set(id, {
            resolve: (r) => {
              this.#stats.runs++;
              this.#stats.runsByModel[model] = (this.#stats.runsByModel[model] ?? 0) + 1;
              this.#stats.runMsTotal += r.runMs;
              resolve(r);
            },
            reject,
          });
          const transfer = feeds.map((f) => f.data.buffer as ArrayBuffer);
          const poolSkip = options?.poolSkip;
          slot.worker.postMessage({ type: 'run', id, model, feeds, output, ...(poolSkip ? { poolSkip } : {}) } satisfies ToWorker, transfer);
        });
      },
      release: () => {
        if (released) return;
        released = true;
        slot.leased--;
        this.#grant();
      },
    };
  }

  /**
   * Loads more models into every worker (a reload); replacement workers load them too. Resolves with the
   * outcome in the first worker. One load at a time.
   */
  async load(models: ModelLoadSpec[]): Promise<LoadResult[]> {
    if (this.#state.kind !== 'ready') throw new Error(`InferencePool.load called in state ${this.#state.kind}`);
    const names = new Set(models.map((m) => m.name));
    this.#models = [...this.#models.filter((m) => !names.has(m.name)), ...models];
    const results = await Promise.all(
      this.#slots.map(
        (slot) =>
          new Promise<LoadResult[]>((resolve) => {
            slot.loading = resolve;
            slot.worker.postMessage({ type: 'load', models, intraOpThreads: this.#o.intraOpThreads, niceness: this.#o.niceness } satisfies ToWorker);
          }),
      ),
    );
    const loaded = results[0] ?? [];
    this.#state = { kind: 'ready', loaded: [...this.#state.loaded.filter((l) => !names.has(l.name)), ...loaded] };
    return loaded;
  }

  /** Releases models' sessions in every worker. Callers drain the models' queues first. */
  unload(names: readonly string[]): void {
    this.#models = this.#models.filter((m) => !names.includes(m.name));
    if (this.#state.kind === 'ready') this.#state = { kind: 'ready', loaded: this.#state.loaded.filter((l) => !names.includes(l.name)) };
    for (const slot of this.#slots) slot.worker.postMessage({ type: 'unload', names: [...names] } satisfies ToWorker);
  }

  /** Provider each model runs on (from the first worker), or undefined when it failed to load. */
  providerOf(model: string): ExecutionProviderName | undefined {
    return this.#state.kind === 'ready' ? this.#state.loaded.find((l) => l.name === model)?.provider : undefined;
  }

  stats(): PoolStats {
    return {
      workers: this.#slots.length,
      niceness: this.#niceness,
      busy: this.#slots.filter((s) => s.leased > 0).length,
      waiting: this.#waiters.length,
      runs: this.#stats.runs,
      runsByModel: { ...this.#stats.runsByModel },
      runMsTotal: this.#stats.runMsTotal,
      failures: this.#stats.failures,
    };
  }

  /** Stops every worker. Callers drain their batchers first; runs still pending are failed. */
  async close(): Promise<void> {
    if (this.#state.kind === 'closed') return;
    this.#state = { kind: 'closed' };
    await Promise.all(
      this.#slots.map(async (slot) => {
        slot.closing = true;
        const exited = new Promise<void>((r) => slot.worker.once('exit', () => r()));
        slot.worker.postMessage({ type: 'close' } satisfies ToWorker);
        const timer = setTimeout(() => void slot.worker.terminate(), 2000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}
