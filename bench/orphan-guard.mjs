// Preloaded (`node --import`) into the service processes the bench starts, never into the service
// otherwise. The bench holds the write end of this process's stdin; when the bench dies for any
// reason, SIGKILL included, the pipe reaches end-of-file and the service is asked to shut down, so no
// orphan is left running. `--import` also runs in worker threads, whose stdin is not the pipe: only
// the main thread watches.
import { isMainThread } from 'node:worker_threads';

if (isMainThread) {
  const stop = () => process.kill(process.pid, 'SIGTERM');
  process.stdin.on('data', () => {});
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
}
