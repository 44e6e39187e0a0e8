// Worker bootstrap: registers the TypeScript loader inside the worker thread, then runs the worker.
// Loader hooks registered on the main thread do not reach worker threads on every Node version, so
// the worker registers its own.
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');
