/**
 * An inference worker in a child process, behind the same small interface as a worker thread.
 *
 * Why a process: ONNX Runtime's native code runs inside the worker, and ending a worker *thread* while a
 * run is in progress (terminate(), or a crash in it) aborts the whole Node process — onnxruntime-node
 * throws into the torn-down thread. A child process can die, be killed with SIGKILL or run out of memory
 * without touching the service: the pool sees it exit, fails or requeues its batch, and starts another.
 * Messages use Node's `advanced` IPC serialization (the structured clone algorithm), so typed arrays —
 * BigInt64Array feeds, Float32Array results — cross as they are; they are copied (a few hundred KB per
 * batch at most), not transferred.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import { constants } from 'node:os';

/**
 * A listener of messages whose type the receiver knows (the pool's FromWorker). Method syntax makes the
 * parameter bivariant, as Node's own `(value: any) => void` listeners are, without `any`.
 */
type MessageListener = { listen(message: unknown): void }['listen'];

/** What the pool needs of a worker, thread or process. */
export interface InferenceWorker {
  postMessage(message: unknown, transfer?: readonly ArrayBuffer[]): void;
  on(event: 'message', listener: MessageListener): this;
  on(event: 'error', listener: (error: Error) => void): this;
  on(event: 'exit', listener: (code: number) => void): this;
  once(event: 'error', listener: (error: Error) => void): this;
  once(event: 'exit', listener: (code: number) => void): this;
  off(event: 'message', listener: MessageListener): this;
  off(event: 'error', listener: (error: Error) => void): this;
  off(event: 'exit', listener: (code: number) => void): this;
  /** Ends the worker at once (a crash, as far as its batch is concerned); resolves with its exit code. */
  terminate(): Promise<number>;
}

export class ChildWorker extends EventEmitter implements InferenceWorker {
  readonly #child: ChildProcess;
  #exitCode: number | undefined;

  constructor(entry: URL) {
    super();
    this.#child = fork(fileURLToPath(entry), [], {
      serialization: 'advanced',
      // Not the parent's flags (a test runner's, a profiler's): the entry registers the TypeScript loader itself.
      execArgv: [],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.#child.on('message', (m) => this.emit('message', m));
    this.#child.on('error', (e) => this.emit('error', e));
    this.#child.on('exit', (code, signal) => {
      // A signal death reads as 128 + the signal's number, as a shell reports it.
      this.#exitCode = code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0);
      this.emit('exit', this.#exitCode);
    });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  postMessage(message: unknown): void {
    if (this.#exitCode !== undefined || !this.#child.connected) return; // its exit fails what was pending
    // A send that fails (the child died between the check and the write) is reported by its exit.
    this.#child.send(message as object, (e) => {
      if (e && this.#exitCode === undefined) this.#child.kill('SIGKILL');
    });
  }

  terminate(): Promise<number> {
    if (this.#exitCode !== undefined) return Promise.resolve(this.#exitCode);
    const exited = new Promise<number>((resolve) => this.once('exit', resolve));
    this.#child.kill('SIGKILL');
    return exited;
  }
}
