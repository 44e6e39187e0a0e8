/**
 * Cache keys: `model@version:sha256(normalised input)`.
 *
 * The version is part of every key, so an upgraded model never serves vectors of the old one. Inputs
 * are normalised (Unicode NFC, whitespace runs collapsed, trimmed) before hashing, so the same text in
 * two posts shares one entry. The key never contains the input in clear.
 */
import { createHash } from 'node:crypto';

export function normaliseText(text: string): string {
  return text.normalize('NFC').replace(/\s+/gu, ' ').trim();
}

export function contentHash(normalised: string | Uint8Array): string {
  return createHash('sha256').update(normalised).digest('base64url');
}

export function cacheKey(model: string, version: string, hash: string): string {
  return `${model}@${version}:${hash}`;
}
