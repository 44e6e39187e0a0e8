/**
 * Fetching images safely: the only code in Polyray that opens outbound connections on a client's behalf.
 *
 * Rules, each a per-image error with a stable code:
 *   - schemes: `http:`, `https:` and `data:` only                         (IMAGE_FETCH_FORBIDDEN)
 *   - the address actually connected to must be public (see address.ts) or allowlisted. It is checked
 *     in the socket's DNS `lookup` (every resolved address must pass, so a DNS answer cannot smuggle a
 *     private address past the check, and a rebinding answer is judged when it is used), for IP-literal
 *     hosts before connecting, and once more on the connected socket's remote address
 *                                                                         (IMAGE_FETCH_FORBIDDEN)
 *   - redirects are followed by hand, at most `maxRedirects`, each hop re-checked; a redirect to
 *     another scheme (data:, file:) is refused                           (IMAGE_FETCH_FAILED / _FORBIDDEN)
 *   - at most `maxBytes`, enforced on Content-Length and again while streaming (IMAGE_TOO_LARGE)
 *   - one deadline for the whole fetch: redirects, headers, body          (IMAGE_FETCH_TIMEOUT)
 *   - non-2xx status, DNS and connection errors                           (IMAGE_FETCH_FAILED)
 *   - https: the certificate must chain to a trusted CA (Node's bundled roots, plus `ca` when given),
 *     be within its validity and name the URL's host; verification cannot be switched off, not even by
 *     NODE_TLS_REJECT_UNAUTHORIZED                                      (IMAGE_FETCH_FAILED, reason `tls`)
 *
 * The response's Content-Type is ignored: the decoder sniffs the bytes (decode.ts). No cookies, no
 * proxy, no compression (so the byte limit counts what the image is). URLs are never logged.
 *
 * Length: every rule of the outbound surface lives in this one file, so a reviewer reads all of it at once.
 */
import { X509Certificate } from 'node:crypto';
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { LookupFunction, Socket } from 'node:net';
import tls, { type SecureContext } from 'node:tls';
import { ErrorCode, PolyrayError } from '../errors.ts';
import { FetchAllowList, parseAddress, type AddressClass } from './address.ts';

export interface ImageFetcherOptions {
  /** Hosts / CIDRs that may be fetched although internal (`POLYRAY_IMAGE_FETCH_ALLOW`). Default none. */
  allow?: readonly string[];
  /** Largest body in bytes. Default 10 MiB. */
  maxBytes?: number;
  /** Deadline of the whole fetch. Default 5000 ms. */
  timeoutMs?: number;
  /** Most redirects followed. Default 3. */
  maxRedirects?: number;
  /** Longest accepted URL, in characters. Default 8192. */
  maxUrlLength?: number;
  /** DNS resolution; tests inject answers. Default `dns.lookup`. */
  resolve?: (host: string) => Promise<LookupAddress[]>;
  /** User-Agent sent with requests. */
  userAgent?: string;
  /**
   * Extra certificate authorities (PEM, one or more certificates) trusted for https image hosts, in
   * addition to Node's bundled Mozilla roots (`POLYRAY_IMAGE_CA_FILE`). Default none: the bundled roots
   * (and NODE_EXTRA_CA_CERTS) only. While set, NODE_EXTRA_CA_CERTS does not apply to image fetches: put
   * those CAs in the bundle too.
   */
  ca?: string;
}

export const DEFAULT_FETCH_OPTIONS = { maxBytes: 10 * 1024 * 1024, timeoutMs: 5000, maxRedirects: 3, maxUrlLength: 8192 } as const;

export interface FetchedImage {
  bytes: Uint8Array;
  /** Redirects followed. */
  redirects: number;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

const defaultResolve = (host: string): Promise<LookupAddress[]> =>
  new Promise((resolve, reject) => dnsLookup(host, { all: true, verbatim: true }, (err, addrs) => (err ? reject(err) : resolve(addrs))));

function forbidden(message: string, extensions: Record<string, unknown> = {}): PolyrayError {
  return new PolyrayError(ErrorCode.IMAGE_FETCH_FORBIDDEN, message, extensions);
}

function refusalMessage(cls: AddressClass): string {
  return `Image URL resolves to a ${cls} address, which Polyray does not fetch from; an operator can allow it with POLYRAY_IMAGE_FETCH_ALLOW`;
}

/** Raised inside the socket machinery; mapped to a PolyrayError by `fetch`. */
class AddressRefused extends Error {
  constructor(readonly cls: AddressClass) {
    super(`address refused: ${cls}`);
  }
}

/** How a certificate was not accepted, by the verification code Node reports (OpenSSL's X509_V_ERR names). */
type TlsProblem = 'untrusted' | 'expired' | 'hostname' | 'certificate' | 'handshake';

const TLS_CODES: Readonly<Record<string, TlsProblem>> = {
  DEPTH_ZERO_SELF_SIGNED_CERT: 'untrusted',
  SELF_SIGNED_CERT_IN_CHAIN: 'untrusted',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'untrusted',
  UNABLE_TO_GET_ISSUER_CERT: 'untrusted',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'untrusted',
  CERT_UNTRUSTED: 'untrusted',
  CERT_HAS_EXPIRED: 'expired',
  CERT_NOT_YET_VALID: 'expired',
  ERR_TLS_CERT_ALTNAME_INVALID: 'hostname',
  HOSTNAME_MISMATCH: 'hostname',
  IP_ADDRESS_MISMATCH: 'hostname',
};

/** The TLS problem an error reports, or undefined when it is not a TLS error. */
function tlsProblem(e: unknown): { problem: TlsProblem; code: string } | undefined {
  const code = (e as NodeJS.ErrnoException).code;
  if (typeof code !== 'string') return undefined;
  const known = TLS_CODES[code];
  if (known) return { problem: known, code };
  if (code === 'EPROTO' || /^ERR_(SSL|TLS)_/.test(code)) return { problem: 'handshake', code };
  // The other X509_V_ERR names (INVALID_CA, CERT_REVOKED, CERT_SIGNATURE_FAILURE, …): no errno starts with these.
  if (/^(CERT|INVALID|UNABLE_TO|ERROR_IN|PATH_|KEYUSAGE|SUBJECT_|AKID_|SKID_|DEPTH_|SELF_SIGNED)/.test(code)) return { problem: 'certificate', code };
  return undefined;
}

const TLS_MESSAGES: Readonly<Record<TlsProblem, (code: string) => string>> = {
  untrusted: (c) =>
    `Image server's TLS certificate is not signed by a trusted certificate authority (${c}); an operator can trust a private CA with POLYRAY_IMAGE_CA_FILE`,
  expired: (c) => `Image server's TLS certificate is expired or not yet valid (${c})`,
  hostname: (c) => `Image server's TLS certificate is not valid for the URL's host (${c})`,
  certificate: (c) => `Image server's TLS certificate was not accepted (${c})`,
  handshake: (c) => `TLS handshake with the image server failed (${c}); is it serving https on that port?`,
};

/** Node's bundled roots plus `ca`, as one context built once (a context per fetch would re-parse ~140 roots). */
function secureContextWith(ca: string): SecureContext {
  const blocks = ca.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) {
    throw new TypeError('ImageFetcher option ca (POLYRAY_IMAGE_CA_FILE) must hold PEM certificates (-----BEGIN CERTIFICATE-----), received none');
  }
  // Read each one here, so a broken bundle fails at start-up naming the setting, not at the first fetch.
  // A self-signed server certificate (not CA:TRUE) is accepted too: trusting it pins that one host.
  blocks.forEach((pem, i) => {
    try {
      new X509Certificate(pem);
    } catch (e) {
      throw new TypeError(
        `ImageFetcher option ca (POLYRAY_IMAGE_CA_FILE): certificate ${i + 1} of ${blocks.length} could not be read: ${(e as Error).message}`,
      );
    }
  });
  return tls.createSecureContext({ ca: [...tls.rootCertificates, ...blocks] });
}

/** Reads the PEM bundle POLYRAY_IMAGE_CA_FILE names; a TypeError naming the setting when it cannot. */
export function readCaFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new TypeError(`Configuration POLYRAY_IMAGE_CA_FILE="${file}" could not be read: ${(e as Error).message}`);
  }
}

export class ImageFetcher {
  readonly #allow: FetchAllowList;
  readonly #o: Required<Omit<ImageFetcherOptions, 'allow' | 'ca'>>;
  /** TLS options of every https request: verification always on, the extra CAs when configured. */
  readonly #tls: https.RequestOptions;

  constructor(options: ImageFetcherOptions = {}) {
    this.#allow = new FetchAllowList(options.allow ?? []);
    this.#tls = { rejectUnauthorized: true, ...(options.ca !== undefined ? { secureContext: secureContextWith(options.ca) } : {}) };
    this.#o = {
      maxBytes: options.maxBytes ?? DEFAULT_FETCH_OPTIONS.maxBytes,
      timeoutMs: options.timeoutMs ?? DEFAULT_FETCH_OPTIONS.timeoutMs,
      maxRedirects: options.maxRedirects ?? DEFAULT_FETCH_OPTIONS.maxRedirects,
      maxUrlLength: options.maxUrlLength ?? DEFAULT_FETCH_OPTIONS.maxUrlLength,
      resolve: options.resolve ?? defaultResolve,
      userAgent: options.userAgent ?? 'Polyray-ImageFetcher/1',
    };
    for (const k of ['maxBytes', 'timeoutMs', 'maxUrlLength'] as const) {
      if (!Number.isSafeInteger(this.#o[k]) || this.#o[k] < 1)
        throw new TypeError(`ImageFetcher option ${k} must be an integer >= 1, received ${String(this.#o[k])}`);
    }
    if (!Number.isSafeInteger(this.#o.maxRedirects) || this.#o.maxRedirects < 0) {
      throw new TypeError(`ImageFetcher option maxRedirects must be an integer >= 0, received ${String(this.#o.maxRedirects)}`);
    }
  }

  get maxBytes(): number {
    return this.#o.maxBytes;
  }

  /** Fetches one image URL (http, https or data). Rejects with a PolyrayError carrying an IMAGE_* code. */
  async fetch(rawUrl: string): Promise<FetchedImage> {
    // data: URLs carry the image itself, so only the byte limit applies to them.
    if (typeof rawUrl === 'string' && /^data:/i.test(rawUrl)) return { bytes: decodeDataUrl(rawUrl, this.#o.maxBytes), redirects: 0 };
    if (typeof rawUrl !== 'string' || rawUrl.length === 0 || rawUrl.length > this.#o.maxUrlLength) {
      throw new PolyrayError(ErrorCode.BAD_USER_INPUT, `An image URL must be 1 to ${this.#o.maxUrlLength} characters`);
    }
    let url: URL;
    try {
      url = new URL(rawUrl);
    } catch {
      throw new PolyrayError(ErrorCode.BAD_USER_INPUT, 'An image URL could not be parsed as an absolute URL');
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw forbidden(`Image URL scheme "${url.protocol.slice(0, 16)}" is not fetched; use http, https or data`, { scheme: url.protocol.slice(0, 16) });
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.#o.timeoutMs);
    try {
      for (let redirects = 0; ; redirects++) {
        const res = await this.#request(url, controller.signal);
        if (res.kind === 'body') return { bytes: res.bytes, redirects };
        if (redirects >= this.#o.maxRedirects) {
          throw new PolyrayError(ErrorCode.IMAGE_FETCH_FAILED, `Image URL redirected more than ${this.#o.maxRedirects} times`, {
            reason: 'too-many-redirects',
            limit: this.#o.maxRedirects,
          });
        }
        let next: URL;
        try {
          next = new URL(res.location, url);
        } catch {
          throw new PolyrayError(ErrorCode.IMAGE_FETCH_FAILED, 'Image URL redirected to an invalid location', { reason: 'bad-redirect' });
        }
        if (next.protocol !== 'http:' && next.protocol !== 'https:') {
          throw forbidden(`Image URL redirected to scheme "${next.protocol.slice(0, 16)}", which is not followed`, { reason: 'redirect-scheme' });
        }
        url = next;
      }
    } catch (e) {
      if (controller.signal.aborted && !(e instanceof PolyrayError && e.code !== ErrorCode.IMAGE_FETCH_FAILED)) {
        throw new PolyrayError(ErrorCode.IMAGE_FETCH_TIMEOUT, `Image was not fetched within ${this.#o.timeoutMs} ms`, { timeoutMs: this.#o.timeoutMs });
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The lookup the socket uses: every address of the answer must pass, else the connection fails. */
  #lookup(host: string): LookupFunction {
    return (hostname, options, callback) => {
      this.#o.resolve(hostname).then(
        (addrs) => {
          if (addrs.length === 0) return callback(Object.assign(new Error('no addresses'), { code: 'ENOTFOUND' }), '', 0);
          for (const a of addrs) {
            const bytes = parseAddress(a.address);
            const cls = bytes ? this.#allow.refusal(host, bytes) : 'reserved';
            if (cls) return callback(new AddressRefused(cls), '', 0);
          }
          const family = typeof options === 'object' && options?.family ? options.family : 0;
          const usable = family ? addrs.filter((a) => a.family === family) : addrs;
          if (typeof options === 'object' && options?.all) return (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, usable);
          const first = usable[0] ?? addrs[0]!;
          callback(null, first.address, first.family);
        },
        (err: NodeJS.ErrnoException) => callback(err, '', 0),
      );
    };
  }

  #request(url: URL, signal: AbortSignal): Promise<{ kind: 'body'; bytes: Uint8Array } | { kind: 'redirect'; location: string }> {
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const literal = parseAddress(host);
    if (literal) {
      const cls = this.#allow.refusal(host, literal);
      if (cls) return Promise.reject(forbidden(refusalMessage(cls), { addressClass: cls }));
    }
    const secure = url.protocol === 'https:';
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (e: unknown): void => {
        if (settled) return;
        settled = true;
        req.destroy();
        reject(this.#mapError(e));
      };
      const req = (secure ? https : http).request(
        url,
        {
          ...(secure ? this.#tls : {}),
          method: 'GET',
          signal,
          agent: false, // a fresh connection per fetch: a pooled socket was checked for another host
          lookup: this.#lookup(host),
          headers: { 'user-agent': this.#o.userAgent, accept: 'image/*', 'accept-encoding': 'identity' },
        },
        (res) => {
          const status = res.statusCode ?? 0;
          if (REDIRECTS.has(status) && typeof res.headers.location === 'string') {
            res.resume();
            settled = true;
            resolve({ kind: 'redirect', location: res.headers.location });
            req.destroy();
            return;
          }
          if (status < 200 || status > 299) {
            res.resume();
            return fail(new PolyrayError(ErrorCode.IMAGE_FETCH_FAILED, `Image server answered HTTP ${status}`, { reason: 'http-status', status }));
          }
          const declared = Number(res.headers['content-length']);
          if (Number.isFinite(declared) && declared > this.#o.maxBytes) {
            return fail(tooLarge(this.#o.maxBytes, declared));
          }
          const chunks: Buffer[] = [];
          let total = 0;
          res.on('data', (chunk: Buffer) => {
            total += chunk.length;
            if (total > this.#o.maxBytes) return fail(tooLarge(this.#o.maxBytes));
            chunks.push(chunk);
          });
          res.on('end', () => {
            if (settled) return;
            settled = true;
            resolve({ kind: 'body', bytes: new Uint8Array(Buffer.concat(chunks, total)) });
          });
          res.on('error', fail);
          res.on('aborted', () => fail(new Error('response aborted')));
        },
      );
      req.on('socket', (socket: Socket) => {
        // Belt and braces: judge the address the socket actually connected to.
        socket.once('connect', () => {
          const remote = socket.remoteAddress ? parseAddress(socket.remoteAddress) : undefined;
          const cls = remote ? this.#allow.refusal(host, remote) : 'reserved';
          if (cls) fail(new AddressRefused(cls));
        });
      });
      req.on('error', fail);
      req.end();
    });
  }

  #mapError(e: unknown): PolyrayError {
    if (e instanceof PolyrayError) return e;
    if (e instanceof AddressRefused) return forbidden(refusalMessage(e.cls), { addressClass: e.cls });
    const cause = (e as { cause?: unknown }).cause;
    if (cause instanceof AddressRefused) return forbidden(refusalMessage(cause.cls), { addressClass: cause.cls });
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ABORT_ERR' || (e as Error).name === 'AbortError') {
      return new PolyrayError(ErrorCode.IMAGE_FETCH_TIMEOUT, `Image was not fetched within ${this.#o.timeoutMs} ms`, { timeoutMs: this.#o.timeoutMs });
    }
    // Node's own messages name the host and the certificate's names: the fixed message does not.
    const tlsErr = tlsProblem(e);
    if (tlsErr) {
      return new PolyrayError(ErrorCode.IMAGE_FETCH_FAILED, TLS_MESSAGES[tlsErr.problem](tlsErr.code), {
        reason: 'tls',
        tls: tlsErr.problem,
        tlsCode: tlsErr.code,
      });
    }
    const reason =
      code === 'ENOTFOUND' || code === 'EAI_AGAIN'
        ? 'dns'
        : code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EHOSTUNREACH'
          ? 'connection'
          : 'network';
    return new PolyrayError(ErrorCode.IMAGE_FETCH_FAILED, `Image could not be fetched (${reason})`, { reason });
  }
}

function tooLarge(limit: number, declared?: number): PolyrayError {
  return new PolyrayError(ErrorCode.IMAGE_TOO_LARGE, `Image is larger than ${limit} bytes (POLYRAY_IMAGE_MAX_BYTES)`, {
    limit,
    ...(declared !== undefined ? { bytes: declared } : {}),
  });
}

/**
 * Decodes a `data:` URL (RFC 2397): `data:[<media type>][;base64],<data>`. The media type is ignored
 * (the decoder sniffs); the decoded size is checked before decoding from the encoded length.
 */
export function decodeDataUrl(url: string, maxBytes: number): Uint8Array {
  const comma = url.indexOf(',');
  if (!/^data:/i.test(url) || comma < 0) throw new PolyrayError(ErrorCode.BAD_USER_INPUT, 'A data: URL must look like data:[type][;base64],<data>');
  const meta = url.slice(5, comma);
  const payload = url.slice(comma + 1);
  const base64 = /;base64$/i.test(meta);
  // Upper bounds of the decoded size, so an oversized payload is refused before it is decoded.
  const bound = base64 ? Math.floor((payload.length * 3) / 4) : payload.length;
  if (bound > maxBytes + 3) throw tooLarge(maxBytes);
  let bytes: Uint8Array;
  if (base64) {
    const clean = payload.replace(/%([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16))).replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(clean)) throw new PolyrayError(ErrorCode.IMAGE_UNREADABLE, 'A data: URL holds invalid base64');
    bytes = new Uint8Array(Buffer.from(clean, 'base64'));
  } else {
    // Percent-decoding to bytes (not to UTF-8 text: image bytes are arbitrary octets).
    if (/[^\p{ASCII}]/u.test(payload)) throw new PolyrayError(ErrorCode.IMAGE_UNREADABLE, 'A data: URL must be ASCII');
    bytes = new Uint8Array(
      Buffer.from(
        payload.replace(/%([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16))),
        'latin1',
      ),
    );
  }
  if (bytes.byteLength > maxBytes) throw tooLarge(maxBytes);
  return bytes;
}

/** Decodes `imageBase64` input (standard or URL-safe alphabet, padding optional). */
export function decodeBase64Image(b64: string, maxBytes: number): Uint8Array {
  if (Math.floor((b64.length * 3) / 4) > maxBytes + 3) throw tooLarge(maxBytes);
  const clean = b64.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(clean))
    throw new PolyrayError(ErrorCode.BAD_USER_INPUT, 'imageBase64 must be base64 (RFC 4648, standard or URL-safe alphabet)');
  const bytes = new Uint8Array(Buffer.from(clean, 'base64'));
  if (bytes.byteLength > maxBytes) throw tooLarge(maxBytes);
  return bytes;
}
