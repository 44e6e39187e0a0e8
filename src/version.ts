/**
 * The package's version (package.json beside src/ or dist/), read once: the CLI's --version, the tracer's
 * service.version, the OpenAPI document and `polyray_build_info` all report this one value.
 */
import { readFileSync } from 'node:fs';

let cached: string | undefined;

export function packageVersion(): string {
  cached ??= (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  return cached;
}
