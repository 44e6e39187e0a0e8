// Worker bootstrap: registers the TypeScript loader inside the worker thread, then runs the worker it
// was started for (`workerData.entry`: "tokenizer" for a tokenizer thread, else an inference worker).
// Loader hooks registered on the main thread do not reach worker threads on every Node version, so
// the worker registers its own.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData?.entry === 'tokenizer' ? './tokenizer-worker.ts' : './worker.ts');
