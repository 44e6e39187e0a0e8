/**
 * Questions about paths that never throw: does it exist, is it a file, is it a folder. Shared by the
 * model-folder readers and the `models add|pull` commands.
 */
import { stat } from 'node:fs/promises';

const kind = (p: string) => stat(p).catch(() => undefined);

export async function pathExists(p: string): Promise<boolean> {
  return (await kind(p)) !== undefined;
}

export async function isFile(p: string): Promise<boolean> {
  return (await kind(p))?.isFile() === true;
}

export async function isDir(p: string): Promise<boolean> {
  return (await kind(p))?.isDirectory() === true;
}
