/**
 * Sampling a complete trace as the service would have: each record of a rate-1 trace (a synthetic
 * workload, or a trace taken at rate 1) is handed to a real `Tracer` at its own time, and what the tracer
 * keeps is the sampled trace. This is how the accuracy of the sampled simulation is measured
 * (test/policy-simulator.test.ts, bench/sim-bench.ts): the rate-1 simulation of the whole trace is the
 * truth, and a sampled one is compared with it.
 */
import { createLogger } from '../log.ts';
import type { SamplerOptions } from './sampler.ts';
import { Tracer, type TraceRecord } from './trace.ts';

export interface ResampleOptions {
  /** Hash-sample rate. */
  rate: number;
  /** Seed of the key hash: each salt is another sample. */
  salt: number;
  /** Heavy-key tracing; default the service's (`DEFAULT_SAMPLER`). */
  sampler?: Omit<SamplerOptions, 'rate'>;
}

/**
 * The records a `Tracer` keeps of `records`. Each record's key is given to the tracer padded to the record's
 * key length (so entry sizes match the original); fill records are passed over.
 */
export function resample(records: readonly TraceRecord[], options: ResampleOptions): TraceRecord[] {
  let now = 0;
  const tracer = new Tracer({
    sampleRate: options.rate,
    salt: options.salt,
    ...(options.sampler ? { sampler: options.sampler } : {}),
    writers: [],
    windowRecords: Math.max(1, records.length),
    bufferMax: 0,
    flushMs: 3_600_000,
    logger: createLogger('silent'),
    now: () => now,
  });
  const vectors = new Map<number, Float32Array>();
  for (const r of records) {
    if (r.f === 1) continue;
    let vector = vectors.get(r.b);
    if (!vector) {
      vector = new Float32Array(Math.ceil(r.b / 4));
      vectors.set(r.b, vector);
    }
    now = r.t;
    const key = r.k.length >= r.kl ? r.k : r.k.padEnd(r.kl, '.');
    const result = { vector, source: r.src === 'JOINED' ? ('COMPUTED' as const) : r.src, tokens: r.tok, inferenceMs: r.ms, joined: r.src === 'JOINED' };
    const n = r.n ?? 1;
    tracer.observe(r.m, r.c, n === 1 ? [key] : new Array<string>(n).fill(key), n === 1 ? [result] : new Array(n).fill(result));
  }
  return tracer.window!.toArray();
}
