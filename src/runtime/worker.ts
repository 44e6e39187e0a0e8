/**
 * Inference worker: owns one ONNX Runtime session per model and runs batches on request.
 *
 * `InferenceSession.run` blocks the thread that calls it, which is why it lives here and not on the
 * main thread: cache hits and GraphQL parsing never wait behind a batch.
 */
import { getPriority, setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { ExecutionProviderName } from '../config/index.ts';
import { pool } from './pooling.ts';
import type { FromWorker, LoadResult, ModelLoadSpec, ToWorker } from './worker-protocol.ts';

/** The way to the pool: the thread's parent port, or the IPC channel of a child process (child-worker.ts). */
interface Port {
  postMessage(message: FromWorker, transfer: ArrayBuffer[]): void;
  on(event: 'message', listener: (message: ToWorker) => void): void;
  close(): void;
}

function processPort(): Port {
  if (!process.send) throw new Error('worker.ts must run in a worker thread or a child process with an IPC channel');
  // The service went away (it exited, or was killed): nothing will ask for work again.
  process.on('disconnect', () => process.exit(0));
  return {
    postMessage: (message) => void process.send!(message),
    on: (_event, listener) => void process.on('message', listener as (m: unknown) => void),
    close: () => {
      process.disconnect();
      process.exit(0);
    },
  };
}

const port: Port = parentPort ?? processPort();

const sessions = new Map<string, ort.InferenceSession>();
const pooling = new Map<string, NonNullable<ModelLoadSpec['pool']>>();
let runChain: Promise<void> = Promise.resolve();

async function createSession(spec: ModelLoadSpec, intraOpThreads: number): Promise<LoadResult> {
  const fallbacks: LoadResult['fallbacks'] = [];
  // CPU is the last resort even when the configured list leaves it out: a service that cannot start is
  // worse than a slow one, and the chosen provider is reported so the operator sees it.
  const order: ExecutionProviderName[] = [...spec.providers.filter((p) => p !== 'cpu'), 'cpu'];
  for (const provider of order) {
    try {
      const session = await ort.InferenceSession.create(spec.path, {
        executionProviders: [provider],
        intraOpNumThreads: intraOpThreads,
        extra: { session: { intra_op: { allow_spinning: spec.allowSpinning ? '1' : '0' } } },
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
        executionMode: 'sequential',
      });
      sessions.set(spec.name, session);
      if (spec.pool) pooling.set(spec.name, spec.pool);
      return { name: spec.name, ok: true, provider, fallbacks };
    } catch (e) {
      // ORT's messages put the useful part last (after a source path and an assertion): keep the tail.
      const message = (e as Error).message.trim();
      fallbacks.push({ provider, reason: message.length > 300 ? `…${message.slice(-299)}` : message });
    }
  }
  return { name: spec.name, ok: false, fallbacks, error: fallbacks.map((f) => `${f.provider}: ${f.reason}`).join('; ') };
}

function post(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer);
}

port.on('message', (msg: ToWorker) => {
  switch (msg.type) {
    case 'load': {
      void (async () => {
        // On Linux the nice value belongs to the thread (setpriority on "0" changes the calling thread
        // only), and threads inherit it from the thread that starts them: ONNX Runtime's intra-op threads,
        // created by the session below, run at this priority too, and the event loop preempts all of them.
        // Best effort: a sandbox may refuse setpriority; the pool sees the value read back and warns.
        if (msg.niceness > 0) {
          try {
            setPriority(0, msg.niceness);
          } catch {
            // reported through `niceness` in the 'loaded' message
          }
        }
        const results: LoadResult[] = [];
        for (const spec of msg.models) results.push(await createSession(spec, msg.intraOpThreads));
        post({ type: 'loaded', results, niceness: getPriority(0) });
      })();
      return;
    }
    case 'run': {
      // Runs execute one at a time, in arrival order: the pool may send the next batch while one runs.
      runChain = runChain.then(async () => {
        const session = sessions.get(msg.model);
        if (!session) {
          post({ type: 'error', id: msg.id, message: `no session for model ${msg.model}` });
          return;
        }
        try {
          const feeds: Record<string, ort.Tensor> = {};
          for (const f of msg.feeds) feeds[f.name] = new ort.Tensor(f.type, f.data, f.dims);
          const t0 = performance.now();
          const names = typeof msg.output === 'string' ? [msg.output] : [...msg.output];
          const out = await session.run(feeds, names);
          const runMs = performance.now() - t0;
          // Copy into buffers we own so they can be transferred; ORT may hand out views of its own memory.
          const outputs = names.map((name) => {
            const tensor = out[name];
            if (!tensor || !(tensor.data instanceof Float32Array)) throw new Error(`output ${name} is missing or not float32`);
            return { name, data: new Float32Array(tensor.data), dims: [...tensor.dims] };
          });
          const spec = pooling.get(msg.model);
          if (spec) {
            // Pooling (and normalisation) here, off the event loop: the main thread gets [batch, hidden].
            const mask = msg.feeds.find((f) => f.name === spec.mask);
            if (!mask) throw new Error(`pooling needs the feed ${spec.mask}`);
            const o = outputs[0]!;
            o.data = pool(o.data, o.dims, mask.data, spec, msg.poolSkip);
            o.dims = [o.dims[0]!, o.dims[o.dims.length - 1]!];
          }
          const [first, ...extra] = outputs;
          post(
            { type: 'result', id: msg.id, data: first!.data, dims: first!.dims, runMs, ...(extra.length > 0 ? { extra } : {}) },
            outputs.map((o) => o.data.buffer as ArrayBuffer),
          );
        } catch (e) {
          post({ type: 'error', id: msg.id, message: (e as Error).message.slice(0, 500) });
        }
      });
      return;
    }
    case 'unload': {
      runChain = runChain.then(async () => {
        for (const name of msg.names) {
          await sessions.get(name)?.release();
          sessions.delete(name);
          pooling.delete(name);
        }
      });
      return;
    }
    case 'close': {
      void (async () => {
        await runChain;
        for (const s of sessions.values()) await s.release();
        sessions.clear();
        port.close();
      })();
      return;
    }
    default: {
      const never: never = msg;
      throw new Error(`unknown message ${JSON.stringify(never)}`);
    }
  }
});
