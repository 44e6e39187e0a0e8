// Worker bootstrap, for a worker thread or a worker process: runs the worker it was started for
// (`workerData.entry`: "tokenizer" for a tokenizer thread, else an inference worker). In the compiled build
// (dist/, `npm run build`) the worker's JavaScript sits beside this file; from source, the TypeScript loader
// is registered first — loader hooks registered on the main thread do not reach worker threads on every
// Node version, so the worker registers its own. tsx is only needed from source (a dev dependency).
import { existsSync } from 'node:fs';
import { workerData } from 'node:worker_threads';

const name = workerData?.entry === 'tokenizer' ? 'tokenizer-worker' : 'worker';
if (existsSync(new URL(`./${name}.js`, import.meta.url))) {
  await import(`./${name}.js`);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(`./${name}.ts`);
}
