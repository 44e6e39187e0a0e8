/**
 * Cache keys: `model@version:sha256(normalised input)`.
 *
 * The version is part of every key, so an upgraded model never serves vectors of the old one. Inputs
 * are normalised (Unicode NFC, whitespace runs collapsed, trimmed) before hashing, so the same text in
 * two posts shares one entry. The key never contains the input in clear.
 */
import { hash } from 'node:crypto';

/** Printable ASCII words separated by single spaces: already NFC, collapsed and trimmed. */
const NORMAL_ASCII = /^(?:[!-~]+ )*[!-~]*$/;

export function normaliseText(text: string): string {
  if (NORMAL_ASCII.test(text) && !text.endsWith(' ')) return text;
  return text.normalize('NFC').replace(/\s+/gu, ' ').trim();
}

/** SHA-256, base64url; one-shot (`crypto.hash`): no Hash object per input on the hit path. */
export function contentHash(normalised: string | Uint8Array): string {
  return hash('sha256', normalised, 'base64url');
}

export function cacheKey(model: string, version: string, hash: string): string {
  return `${model}@${version}:${hash}`;
}
