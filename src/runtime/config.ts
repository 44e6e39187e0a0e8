/**
 * Options of the inference runtime (src/runtime): worker threads and their ONNX Runtime sessions,
 * execution providers, and how queued items form batches. Declared with src/config/define.ts;
 * src/config assembles and validates them.
 */
import { z } from 'zod';
import { list, setting } from '../config/define.ts';
import { parseBool } from '../config/describe.ts';
import { maxInputsPerRequest } from '../http/config.ts';

const PROVIDERS = ['cpu', 'cuda', 'webgpu'] as const;
export type ExecutionProviderName = (typeof PROVIDERS)[number];
/** Most items waiting per model; beyond it requests fail with OVERLOADED. `POLYRAY_QUEUE_MAX_ITEMS`; default 8192. */
const queueMaxItems = setting(z.number().int().min(1), {
  env: 'POLYRAY_QUEUE_MAX_ITEMS',
  file: 'queueMaxItems',
  default: 8192,
  doc: 'queued items per model; beyond it `OVERLOADED`',
});

export const EXECUTION_PROVIDERS: readonly ExecutionProviderName[] = PROVIDERS;

/** Worker threads, each holding a session per model. `POLYRAY_WORKERS`; default 1. */
const workers = setting(z.number().int().min(1).max(64), {
  env: 'POLYRAY_WORKERS',
  file: 'workers',
  default: 1,
  doc: 'inference worker threads (each holds a session per model)',
});

/**
 * Nice value of the inference threads (the worker threads and the ONNX Runtime threads they start), 0–19.
 * The main thread keeps its own priority. `POLYRAY_INFERENCE_NICE`; default 10 on Linux, where nice is per
 * thread; 0 elsewhere (there it would lower the whole process).
 */
const niceness = setting(z.number().int().min(0).max(19), {
  env: 'POLYRAY_INFERENCE_NICE',
  file: 'inferenceNice',
  default: (_get, host) => (host.platform === 'linux' ? 10 : 0),
  defaultDoc: '10 on Linux, else 0',
  doc: 'nice value of the inference threads only (worker + ONNX Runtime threads): the event loop preempts them, so cache hits stay fast while inference uses every core',
});

export const inferenceSchema = z
  .object({
    workers,
    /**
     * ONNX Runtime intra-op threads per worker. `POLYRAY_INTRA_OP_THREADS`; default cores / workers when
     * inference runs at a lower priority (`niceness` > 0, Linux), else (cores − 1) / workers — at least 1
     * either way. Inference may then use every core, because the event loop preempts it whenever it has
     * work: cache hits keep answering while inference saturates the machine (bench/RESULTS.md).
     */
    intraOpThreads: setting(z.number().int().min(1).max(256), {
      env: 'POLYRAY_INTRA_OP_THREADS',
      file: 'intraOpThreads',
      default: (get, host) => Math.max(1, Math.floor((get(niceness) > 0 ? host.cores : host.cores - 1) / get(workers))),
      defaultDoc: 'cores / workers, ≥ 1',
      doc: 'ONNX Runtime threads per worker; (cores − 1) / workers when `POLYRAY_INFERENCE_NICE` is 0',
    }),
    niceness,
    /**
     * `process` runs each inference worker in a child process, so a worker that crashes, runs out of memory
     * or is killed mid-run never ends the service (the pool requeues its batch once and starts another);
     * `thread` runs them as worker threads (less memory and start-up time; a worker ended during a run
     * aborts the process). `POLYRAY_INFERENCE_ISOLATION`; default process.
     */
    isolation: setting(z.enum(['process', 'thread']), {
      env: 'POLYRAY_INFERENCE_ISOLATION',
      file: 'inferenceIsolation',
      default: 'process',
      doc: 'inference workers as child processes (`process`: a crashed or killed worker never ends the service) or worker threads (`thread`)',
    }),
    /**
     * Tokenizer threads (src/runtime/tokenizer-pool.ts): cache misses are tokenised there, at the inference
     * threads' nice value, so long texts never stall the event loop. `POLYRAY_TOKENIZER_THREADS`; default 1;
     * 0 tokenises on the event loop (the behaviour before; bench/RESULTS.md compares the two).
     */
    tokenizerThreads: setting(z.number().int().min(0).max(32), {
      env: 'POLYRAY_TOKENIZER_THREADS',
      file: 'tokenizerThreads',
      default: 1,
      doc: 'threads that tokenise cache misses off the event loop; 0 tokenises on the event loop',
    }),
    /**
     * Batches each worker holds at once (running + queued behind it). `POLYRAY_PIPELINE_DEPTH`; default 1: a
     * batch forms when a worker is free, from everything that queued meanwhile. 2 sends a batch that is
     * already full to wait in the worker while the previous one runs, so the worker does not idle while the
     * main thread hands results back (partial batches still wait and grow). On 2 CPU cores it measured within
     * noise of 1 (worker busy 95–98 % either way), so it is left for accelerators, where a run is short next
     * to the hand-off.
     */
    pipelineDepth: setting(z.number().int().min(1).max(8), {
      env: 'POLYRAY_PIPELINE_DEPTH',
      file: 'pipelineDepth',
      default: 1,
      doc: 'batches a worker holds at once (2: the next batch waits inside the worker)',
    }),
    /**
     * Let ONNX Runtime's intra-op threads spin between parallel sections instead of sleeping.
     * `POLYRAY_ORT_SPINNING`; default "auto": as the model's manifest suggests (`runtime.allowSpinning`; our
     * transformer builders set it, since waking threads costs a long run ~20 % on CPU), else off — with many
     * short runs (GloVe) the spinning takes a core the event loop needs (bench/RESULTS.md). true/false force
     * it for every model.
     */
    allowSpinning: setting(z.union([z.boolean(), z.literal('auto')]), {
      env: 'POLYRAY_ORT_SPINNING',
      file: 'ortSpinning',
      read: (raw) => (raw === 'auto' ? raw : parseBool(raw)),
      default: 'auto',
      doc: "let ONNX Runtime threads spin between parallel sections: `auto` follows the model's manifest (`runtime.allowSpinning`, set for the transformer models), else off; `true`/`false` force it",
    }),
    /** Execution providers to try in order; CPU is always the last resort. `POLYRAY_PROVIDERS`; default ["cpu"]. */
    providers: setting(z.array(z.enum(PROVIDERS)), {
      env: 'POLYRAY_PROVIDERS',
      file: 'providers',
      read: (raw) => list(raw.toLowerCase()),
      default: ['cpu'],
      doc: 'ordered execution providers (`cuda`, `webgpu`, `cpu`); falls back to CPU, logs and reports the one that runs',
    }),
    /**
     * Which graph of a Hugging Face folder runs when the first provider is the CPU: `fp32` (`onnx/model.onnx`)
     * or `int8` (`onnx/model_quantized.onnx` / `model_int8.onnx` when the folder has one; about ×2 faster,
     * cosine ≥ 0.99 in bench/RESULTS.md). GPU providers take `model_fp16.onnx` when present. `POLYRAY_CPU_VARIANT`;
     * default fp32.
     */
    cpuVariant: setting(z.enum(['fp32', 'int8']), {
      env: 'POLYRAY_CPU_VARIANT',
      file: 'cpuVariant',
      default: 'fp32',
      doc: 'graph of a Hugging Face folder on CPU: `fp32` or `int8` (its quantized export, when present); GPU providers take `model_fp16.onnx` when present',
    }),
  })
  .strict();

export const batchingSchema = z
  .object({
    /** Most items in one inference run. `POLYRAY_BATCH_MAX_ITEMS`; default 64. */
    maxItems: setting(z.number().int().min(1).max(4096), {
      env: 'POLYRAY_BATCH_MAX_ITEMS',
      file: 'batchMaxItems',
      default: 64,
      doc: 'most items per inference run',
    }),
    /**
     * Most padded tokens (items × longest sequence) in one run. `POLYRAY_BATCH_MAX_TOKENS`; default 1024: on
     * CPU a transformer's throughput peaks at about 768–1024 padded tokens per run and falls beyond
     * (bench/RESULTS.md).
     */
    maxTokens: setting(z.number().int().min(1), {
      env: 'POLYRAY_BATCH_MAX_TOKENS',
      file: 'batchMaxTokens',
      default: 1024,
      doc: 'most padded tokens (items × longest) per run',
    }),
    /**
     * `maxTokens` for models that run on an accelerator provider (cuda, webgpu).
     * `POLYRAY_BATCH_MAX_TOKENS_ACCELERATOR`; default 16384 (64 items of 256 tokens): a GPU wants large
     * batches, and the CPU bound above would cap it at a few items.
     */
    acceleratorMaxTokens: setting(z.number().int().min(1), {
      env: 'POLYRAY_BATCH_MAX_TOKENS_ACCELERATOR',
      file: 'batchMaxTokensAccelerator',
      default: 16384,
      doc: 'the same bound for models running on `cuda` or `webgpu` (a GPU wants large batches)',
    }),
    /**
     * Longest time the first queued item waits for company, in microseconds. `POLYRAY_BATCH_MAX_WAIT_US`;
     * default 0: dispatch as soon as a worker is free — items that arrive while every worker is busy still
     * form batches, and a lone request pays no timer (measured in bench/RESULTS.md). Raise it for
     * accelerators whose runs are cheap relative to their fixed cost.
     */
    maxWaitUs: setting(z.number().int().min(0).max(10_000_000), {
      env: 'POLYRAY_BATCH_MAX_WAIT_US',
      file: 'batchMaxWaitUs',
      default: 0,
      doc: 'longest wait of the oldest queued item for company (0: dispatch when a worker is free; batches form from what queues meanwhile)',
    }),
    maxQueueItems: queueMaxItems,
    /**
     * Longest expected wait a request may face in a model's queue, in ms, estimated from the measured cost of
     * a token (or pixel) and what is queued ahead of it in fair order: beyond it `OVERLOADED` with
     * `retryAfterMs` = the estimate, so overload is bounded by time, not by item count.
     * `POLYRAY_QUEUE_MAX_WAIT_MS`; default 2000; 0 turns the bound off.
     */
    maxQueueWaitMs: setting(z.number().int().min(0).max(600_000), {
      env: 'POLYRAY_QUEUE_MAX_WAIT_MS',
      file: 'queueMaxWaitMs',
      default: 2000,
      doc: 'longest expected queue wait of a request, from measured cost (`OVERLOADED` with `retryAfterMs` beyond; 0: off)',
    }),
    /**
     * How long after the request an `OVERLOADED` refusal of a model's queue is answered, in ms: a connection
     * that retries soon after a refusal is held to one refusal per pace instead of hundreds a second, which
     * took the inference worker's CPU and halved throughput on 2 cores (docs/OPERATIONS.md, bench/RESULTS.md).
     * `POLYRAY_QUEUE_REFUSAL_PACE_MS`; default 250; 0 answers at once.
     */
    refusalPaceMs: setting(z.number().int().min(0).max(10_000), {
      env: 'POLYRAY_QUEUE_REFUSAL_PACE_MS',
      file: 'queueRefusalPaceMs',
      default: 250,
      doc: 'delay before an `OVERLOADED` refusal of a busy queue is answered (holds clients that retry at once to one refusal per pace; 0: at once)',
    }),
    /**
     * Most items one client may have queued per model; beyond it that client gets OVERLOADED while others keep
     * their place (fair queuing serves clients by weight). `POLYRAY_QUEUE_MAX_ITEMS_PER_CLIENT`; default half
     * of `POLYRAY_QUEUE_MAX_ITEMS`, at least `POLYRAY_MAX_INPUTS`.
     */
    maxQueueItemsPerClient: setting(z.number().int().min(1), {
      env: 'POLYRAY_QUEUE_MAX_ITEMS_PER_CLIENT',
      file: 'queueMaxItemsPerClient',
      default: (get) => Math.min(get(queueMaxItems), Math.max(get(maxInputsPerRequest), Math.ceil(get(queueMaxItems) / 2))),
      defaultDoc: 'half of `POLYRAY_QUEUE_MAX_ITEMS`, at least `POLYRAY_MAX_INPUTS`',
      doc: "queued items per client per model; beyond it that client's `OVERLOADED`",
    }),
    /** Image models: most input pixels (items × height × width) in one run. `POLYRAY_BATCH_MAX_PIXELS`; default 16 images of 224×224. */
    maxPixels: setting(z.number().int().min(1), {
      env: 'POLYRAY_BATCH_MAX_PIXELS',
      file: 'batchMaxPixels',
      default: 16 * 224 * 224,
      doc: 'most input pixels per image batch (16 × 224²)',
      table: 'images',
    }),
  })
  .strict();
