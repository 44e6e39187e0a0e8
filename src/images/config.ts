/**
 * Options of image inputs (src/images): which internal hosts a fetch may reach, extra trusted CAs, and the
 * limits of fetching and decoding. Declared with src/config/define.ts; src/config assembles and validates them.
 */
import path from 'node:path';
import { z } from 'zod';
import { list, maybe, SECONDS, setting } from '../config/define.ts';

export const imagesSchema = z
  .object({
    /**
     * Hosts and CIDR ranges image URLs may reach although they are loopback, private, link-local or otherwise
     * internal (e.g. `127.0.0.1`, `10.0.0.0/8`, `images.internal`). `POLYRAY_IMAGE_FETCH_ALLOW`
     * (comma-separated); default none.
     */
    fetchAllow: setting(z.array(z.string()), {
      env: 'POLYRAY_IMAGE_FETCH_ALLOW',
      file: 'imageFetchAllow',
      read: list,
      default: [],
      defaultDoc: '(none)',
      doc: 'hosts, IPs or CIDRs image URLs may reach although internal, e.g. `10.20.0.0/16,images.internal`',
    }),
    /**
     * PEM bundle of extra certificate authorities trusted for https image hosts (a private CA), added to
     * Node's bundled roots for image fetches only; resolved against the working directory.
     * `POLYRAY_IMAGE_CA_FILE`; default unset (the bundled roots only).
     */
    caFile: setting(maybe(z.string()), {
      env: 'POLYRAY_IMAGE_CA_FILE',
      file: 'imageCaFile',
      read: (raw) => (raw ? path.resolve(raw) : undefined),
      default: undefined,
      defaultDoc: '(none)',
      doc: "PEM bundle of extra CAs trusted for https image hosts (a private CA), added to Node's bundled roots for image fetches only",
    }),
    /** Largest image in bytes, enforced while streaming. `POLYRAY_IMAGE_MAX_BYTES`; default 10 MiB. */
    maxBytes: setting(z.number().int().min(1), {
      env: 'POLYRAY_IMAGE_MAX_BYTES',
      file: 'imageMaxBytes',
      default: 10 * 1024 * 1024,
      defaultDoc: '10 MiB',
      doc: 'largest image, fetched or inline',
    }),
    /** Whole fetch (all redirects, headers and body) time limit. `POLYRAY_IMAGE_FETCH_TIMEOUT_MS`; default 5000 ms. */
    fetchTimeoutMs: setting(z.number().int().min(1).max(600_000), {
      env: 'POLYRAY_IMAGE_FETCH_TIMEOUT_MS',
      file: 'imageFetchTimeoutMs',
      default: 5000,
      doc: 'deadline of one fetch, redirects included',
    }),
    /** Most redirects followed. `POLYRAY_IMAGE_MAX_REDIRECTS`; default 3. */
    maxRedirects: setting(z.number().int().min(0).max(20), {
      env: 'POLYRAY_IMAGE_MAX_REDIRECTS',
      file: 'imageMaxRedirects',
      default: 3,
      doc: 'redirects followed',
    }),
    /** Largest image in pixels (width × height, read from the header before decoding). `POLYRAY_IMAGE_MAX_PIXELS`; default 40 MP. */
    maxPixels: setting(z.number().int().min(1), {
      env: 'POLYRAY_IMAGE_MAX_PIXELS',
      file: 'imageMaxPixels',
      default: 40_000_000,
      doc: 'largest width × height decoded',
    }),
    /** How long a URL's content hash is remembered, so a repeated URL skips the fetch. `POLYRAY_IMAGE_URL_CACHE_TTL_S` (seconds); default 300 s. */
    urlCacheTtlMs: setting(z.number().int().min(0), {
      env: 'POLYRAY_IMAGE_URL_CACHE_TTL_S',
      file: 'imageUrlCacheTtlSeconds',
      unit: SECONDS,
      default: 300_000,
      doc: 'how long a URL → content-hash entry is remembered (a repeated URL skips the fetch)',
    }),
    /** Most URLs remembered. `POLYRAY_IMAGE_URL_CACHE_MAX`; default 100000. */
    urlCacheMaxEntries: setting(z.number().int().min(1), {
      env: 'POLYRAY_IMAGE_URL_CACHE_MAX',
      file: 'imageUrlCacheMax',
      default: 100_000,
      doc: 'most URLs remembered that way',
    }),
    /** Bytes the URL → hash memory may hold, keys included. `POLYRAY_IMAGE_URL_CACHE_MB`; default 16 MiB. */
    urlCacheMaxBytes: setting(
      z
        .number()
        .int()
        .min(1024 * 1024),
      {
        env: 'POLYRAY_IMAGE_URL_CACHE_MB',
        file: 'imageUrlCacheMb',
        unit: 1024 * 1024,
        default: 16 * 1024 * 1024,
        defaultDoc: '16 MiB',
        doc: 'bytes the URL → content-hash memory may hold (data: URLs are never remembered)',
      },
    ),
    /** Most images read per post. `POLYRAY_MAX_IMAGES_PER_POST`; default 16. */
    maxImagesPerPost: setting(z.number().int().min(1).max(1024), {
      env: 'POLYRAY_MAX_IMAGES_PER_POST',
      file: 'maxImagesPerPost',
      default: 16,
      doc: 'images read per post',
    }),
  })
  .strict();
