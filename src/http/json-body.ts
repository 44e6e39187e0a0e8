/**
 * JSON request bodies. Small ones are parsed on the event loop, as Fastify does; a large one (over
 * `threshold` bytes: a multi-megabyte text or inline image) is decoded and parsed in a parser thread, so
 * that no single request holds the event loop for the tens of milliseconds JSON.parse takes on megabytes,
 * while other clients' cache hits wait. The buffer is transferred, not copied; the parsed value comes back
 * by structured clone.
 *
 * Both paths use secure-json-parse (the parser Fastify itself uses, from the Fastify organisation) and
 * refuse `__proto__` and `constructor.prototype` keys with 400, like Fastify's default parser; an empty
 * or malformed body is a 400 as well, with Fastify's own error codes.
 */
import type { IncomingMessage } from 'node:http';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { FastifyInstance } from 'fastify';
import sjson from 'secure-json-parse';
import type { Logger } from '../log.ts';

/** Bodies from this size are parsed in the parser thread (JSON.parse takes ~1 ms per 100 KB here). */
export const LARGE_BODY_BYTES = 256 * 1024;

const PARSE_OPTIONS = { protoAction: 'error', constructorAction: 'error' } as const;

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const sjson = require(workerData.parser);
// Below the event loop's priority (per thread on Linux), as the inference and tokenizer threads are.
try { if (workerData.niceness > 0) require('node:os').setPriority(0, workerData.niceness); } catch {}
const bodies = new Map();
parentPort.on('message', ({ id, chunk, end, abort }) => {
  if (abort) { bodies.delete(id); return; }
  if (chunk) { const parts = bodies.get(id) || []; parts.push(Buffer.from(chunk)); bodies.set(id, parts); }
  if (!end) return;
  const parts = bodies.get(id) || [];
  bodies.delete(id);
  try {
    const value = sjson.parse(Buffer.concat(parts).toString('utf8'), null, { protoAction: 'error', constructorAction: 'error' });
    parentPort.postMessage({ id, value });
  } catch (e) {
    parentPort.postMessage({ id, error: String(e && e.message || e) });
  }
});
`;

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** Most bytes of a refused body read (and dropped) before its connection is closed. */
const DRAIN_MAX_BYTES = 64 * 1024 * 1024;
/** Pause after each chunk of a refused body: ~64 KB per 4 ms, a few per cent of the event loop. */
const DRAIN_PAUSE_MS = 4;

/** Reads and drops a refused request body a chunk at a time; past DRAIN_MAX_BYTES, closes the connection. */
function drainSlowly(raw: IncomingMessage): void {
  let read = 0;
  raw.on('error', () => undefined);
  raw.on('data', (chunk: Buffer) => {
    read += chunk.length;
    if (read > DRAIN_MAX_BYTES) {
      raw.socket.destroy();
      return;
    }
    raw.pause();
    setTimeout(() => raw.resume(), DRAIN_PAUSE_MS).unref();
  });
}

function badBody(message: string, code: string): Error {
  return Object.assign(new Error(message), { statusCode: 400, code });
}

export class JsonBodyParser {
  readonly #threshold: number;
  readonly #logger: Logger;
  #worker: Worker | undefined;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;

  readonly #niceness: number;

  /** `threshold`: bodies of at least this many bytes are parsed in the parser thread, at nice value `niceness`. */
  constructor(threshold: number, logger: Logger, niceness = 0) {
    this.#threshold = threshold;
    this.#logger = logger;
    this.#niceness = niceness;
  }

  /**
   * Replaces Fastify's JSON parser on `app`. The body is read here, chunk by chunk: kept on the event loop
   * while it is small, and once it reaches the threshold every chunk goes straight to the parser thread (no
   * concatenation of megabytes here). Over `bodyLimit`: 413, as Fastify answers.
   */
  register(app: FastifyInstance, bodyLimit: number): void {
    // A body declared (Content-Length) over the limit is refused before a byte of it is read: reading
    // megabytes only to refuse them took the event loop ~5 ms per megabyte here, in slices that other
    // clients' requests queued behind. The connection stays open and the body is drained slowly in the
    // background (at most DRAIN_MAX_BYTES), so that a client still sending reads its 413 rather than a
    // reset connection (undici's fetch reports a broken pipe as a failure, whatever was answered).
    app.addHook('onRequest', (req, reply, done) => {
      if (!(Number(req.headers['content-length']) > bodyLimit)) {
        done();
        return;
      }
      drainSlowly(req.raw);
      reply.code(413).send(Object.assign(new Error('Request body is too large'), { statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' }));
    });
    app.removeContentTypeParser('application/json');
    app.addContentTypeParser('application/json', (_req, payload, done) => {
      const invalid = (): void =>
        done(badBody("Body is not valid JSON but content-type is set to 'application/json'", 'FST_ERR_CTP_INVALID_JSON_BODY'), undefined);
      let size = 0;
      let small: Buffer[] | undefined = [];
      let id = 0;
      let settled = false;
      const finish = (err: Error | null, value?: unknown): void => {
        if (settled) return;
        settled = true;
        done(err, value);
      };
      payload.on('data', (chunk: Buffer) => {
        if (settled) return;
        size += chunk.length;
        if (size > bodyLimit) {
          if (id) this.#worker?.postMessage({ id, abort: true });
          finish(Object.assign(new Error('Request body is too large'), { statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' }));
          payload.resume();
          return;
        }
        if (small) {
          small.push(chunk);
          if (size < this.#threshold) return;
          // Large: hand what arrived so far, and everything after it, to the parser thread.
          id = this.#open((e, v) => (e ? invalid() : finish(null, v)));
          for (const c of small) this.#send(id, c);
          small = undefined;
        } else {
          this.#send(id, chunk);
        }
        // A large body yields after each chunk: the socket is read again on the next turn of the loop, so
        // other clients' requests and replies are handled between its chunks. Unpaced, one turn read up to
        // 32 chunks (2 MB) of it in a row, ~10 ms here, and every other request's turn waited behind them.
        payload.pause();
        setImmediate(() => payload.resume());
      });
      payload.on('end', () => {
        if (settled) return;
        if (small) {
          if (size === 0) {
            finish(badBody("Body cannot be empty when content-type is set to 'application/json'", 'FST_ERR_CTP_EMPTY_JSON_BODY'));
            return;
          }
          try {
            finish(null, sjson.parse(Buffer.concat(small, size).toString('utf8'), null, PARSE_OPTIONS));
          } catch {
            invalid();
          }
          return;
        }
        this.#worker?.postMessage({ id, end: true });
      });
      payload.on('error', (e) => {
        if (id) this.#worker?.postMessage({ id, abort: true });
        finish(e);
      });
    });
  }

  /** A body being streamed to the parser thread; `cb` gets its value or an error. */
  #open(cb: (e: Error | null, v?: unknown) => void): number {
    this.#start();
    const id = this.#nextId++;
    this.#pending.set(id, { resolve: (v) => cb(null, v), reject: (e) => cb(e) });
    return id;
  }

  #send(id: number, chunk: Buffer): void {
    // A socket chunk usually owns its memory: transfer it; a slice of a shared pool is copied.
    const own = chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength;
    const ab = own ? (chunk.buffer as ArrayBuffer) : chunk.buffer.slice(chunk.byteOffset, chunk.byteOffset + chunk.byteLength);
    this.#worker?.postMessage({ id, chunk: ab }, [ab as ArrayBuffer]);
  }

  #start(): Worker {
    if (this.#worker) return this.#worker;
    const parser = createRequire(import.meta.url).resolve('secure-json-parse');
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { parser, niceness: this.#niceness } });
    w.on('message', (m: { id: number; value?: unknown; error?: string }) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (m.error !== undefined) p.reject(new Error(m.error));
      else p.resolve(m.value);
    });
    w.on('error', (e) => this.#logger.error({ err: e.message }, 'JSON body parser thread error'));
    w.on('exit', () => {
      if (this.#worker === w) this.#worker = undefined;
      for (const p of this.#pending.values()) p.reject(new Error('parser thread stopped'));
      this.#pending.clear();
    });
    // Idle between large bodies; it must not keep a stopping process alive.
    w.unref();
    this.#worker = w;
    return w;
  }

  /**
   * Starts the parser thread now, at the server's start, and resolves once it runs: a thread started by the
   * first large body would boot (tens of milliseconds of CPU, before it lowers its priority) while that
   * request and every other client's wait.
   */
  async start(): Promise<void> {
    const w = this.#start();
    // Held while it boots (nothing else may keep the process alive yet); idle afterwards, as ever.
    w.ref();
    await new Promise<void>((resolve) => {
      w.once('online', () => resolve());
      w.once('exit', () => resolve());
    });
    w.unref();
  }

  async close(): Promise<void> {
    const w = this.#worker;
    this.#worker = undefined;
    if (w) await w.terminate();
  }
}
