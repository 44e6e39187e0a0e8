/**
 * Fetching images safely (src/images/fetch.ts, address.ts) and decoding them safely (preprocess.ts),
 * against real local HTTP and HTTPS servers that misbehave on purpose (certificates made at test time by
 * helpers/tls.ts). DNS answers for made-up host names are injected (`resolve`), so "a name that resolves
 * to a private address" needs no real DNS.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';

import { loadConfig } from '../src/config/index.ts';

import { ErrorCode, PolyrayError } from '../src/errors.ts';
import { FetchAllowList, classifyAddress, embeddedIPv4, formatAddress, parseAddress } from '../src/images/address.ts';
import { ImageFetcher, decodeDataUrl, readCaFile } from '../src/images/fetch.ts';
import { preprocessImage, sniffImageType } from '../src/images/preprocess.ts';
import type { PreprocessSpec } from '../src/runtime/manifest.ts';
import { patternImage, pngBomb, serve, startImageServer, type ImageServer, type Route } from './helpers/images.ts';
import { createTestCa, selfSignedCert } from './helpers/tls.ts';

const SPEC: PreprocessSpec = { size: 224, resize: 'cover', scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1], layout: 'nchw' };

async function rejectsWith(p: Promise<unknown>, code: string, extra?: (e: PolyrayError) => void): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof PolyrayError, `expected a PolyrayError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    extra?.(e);
    return true;
  });
}

/**
 * Routes that test the fetcher's limits, shared by the http and https suites: a declared body over the
 * byte limit (then a hang), an endless chunked body, and a body that stalls past the timeout.
 */
function limitRoutes(png: Buffer, timers: NodeJS.Timeout[]): Record<string, Route> {
  return {
    '/declared-big': (_q, r) => {
      r.writeHead(200, { 'content-type': 'image/png', 'content-length': String(50 * 1024 * 1024) });
      r.write(png.subarray(0, 16)); // then hang: the client must not wait for the rest
    },
    '/stream-big': (_q, r) => {
      r.writeHead(200, { 'content-type': 'image/png' }); // chunked, no Content-Length
      const block = Buffer.alloc(64 * 1024, 7);
      let sent = 0;
      const push = (): void => {
        if (r.destroyed || sent > 64) return void r.end();
        sent++;
        if (r.write(block)) setImmediate(push);
        else r.once('drain', push);
      };
      push();
    },
    '/slow-body': (_q, r) => {
      r.writeHead(200, { 'content-type': 'image/png' });
      r.write(png.subarray(0, 10));
      timers.push(setTimeout(() => r.end(png.subarray(10)), 3000));
    },
  };
}

describe('image fetching', () => {
  let srv: ImageServer;
  let png: Buffer;
  const resolveMap: Record<string, string[]> = {};
  const resolve = async (host: string) => {
    const a = resolveMap[host];
    if (!a) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return a.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  /** Allows the test server (127.0.0.1) only, as the service tests configure it. */
  let fetcher: ImageFetcher;
  const timers: NodeJS.Timeout[] = [];

  before(async () => {
    png = await patternImage(64, 48, 1);
    srv = await startImageServer({
      '/img.png': serve(png, 'text/html'), // valid bytes, lying content type
      '/garbage': serve(Buffer.from('this is not an image at all, just text'), 'image/png'),
      '/to-metadata': (_q, r) => r.writeHead(302, { location: 'http://169.254.169.254/latest/meta-data/' }).end(),
      '/to-private-name': (_q, r) => r.writeHead(301, { location: `http://internal.test:${srv.port}/img.png` }).end(),
      '/to-mapped': (_q, r) => r.writeHead(307, { location: `http://[::ffff:10.0.0.7]:${srv.port}/img.png` }).end(),
      '/to-file': (_q, r) => r.writeHead(302, { location: 'file:///etc/passwd' }).end(),
      '/hop1': (_q, r) => r.writeHead(302, { location: '/hop2' }).end(),
      '/hop2': (_q, r) => r.writeHead(302, { location: '/hop3' }).end(),
      '/hop3': (_q, r) => r.writeHead(302, { location: '/img.png' }).end(),
      '/loop': (_q, r) => r.writeHead(302, { location: '/loop' }).end(),
      ...limitRoutes(png, timers),
      '/no-answer': () => undefined,
      '/missing': (_q, r) => r.writeHead(404).end(),
    });
    fetcher = new ImageFetcher({ allow: ['127.0.0.1'], maxBytes: 1024 * 1024, timeoutMs: 400, maxRedirects: 3, resolve });
    resolveMap['internal.test'] = ['10.1.2.3'];
    resolveMap['mixed.test'] = ['93.184.216.34', '192.168.1.1'];
    resolveMap['images.internal'] = ['127.0.0.1'];
  });
  after(async () => {
    for (const t of timers) clearTimeout(t);
    await srv?.stop();
  });

  test('fetches an allowlisted image; the content type is ignored and the bytes are sniffed', async () => {
    const r = await fetcher.fetch(`${srv.url}/img.png`);
    assert.deepEqual(Buffer.from(r.bytes), png);
    assert.equal(sniffImageType(r.bytes), 'png');
  });

  test('loopback, private, link-local and metadata addresses are refused without an allowlist entry', async () => {
    const strict = new ImageFetcher({ resolve });
    for (const u of [
      `${srv.url}/img.png`,
      `http://[::1]:${srv.port}/`,
      `http://0x7f.1:${srv.port}/`,
      `http://2130706433:${srv.port}/`,
      `http://[::ffff:127.0.0.1]:${srv.port}/`,
      'http://169.254.169.254/',
      'http://10.0.0.1/',
      'http://[fd00:ec2::254]/',
    ]) {
      await rejectsWith(strict.fetch(u), ErrorCode.IMAGE_FETCH_FORBIDDEN);
    }
    await rejectsWith(strict.fetch(`http://internal.test:${srv.port}/img.png`), ErrorCode.IMAGE_FETCH_FORBIDDEN, (e) =>
      assert.equal(e.extensions['addressClass'], 'private'),
    );
    // One private address in the answer is enough to refuse (it could be the one the socket picks).
    await rejectsWith(strict.fetch('http://mixed.test/'), ErrorCode.IMAGE_FETCH_FORBIDDEN);
    assert.equal(srv.hits.get('/img.png') ?? 0, 1, 'no refused fetch reached the server');
  });

  test('a host name on the allowlist may resolve to an internal address', async () => {
    const byName = new ImageFetcher({ allow: ['images.internal'], resolve });
    const r = await byName.fetch(`http://images.internal:${srv.port}/img.png`);
    assert.equal(r.bytes.length, png.length);
    await rejectsWith(byName.fetch(`${srv.url}/img.png`), ErrorCode.IMAGE_FETCH_FORBIDDEN); // the IP itself is not allowed
  });

  test('redirects are re-checked: to metadata, to a private name, to IPv4-mapped IPv6, to file:', async () => {
    await rejectsWith(fetcher.fetch(`${srv.url}/to-metadata`), ErrorCode.IMAGE_FETCH_FORBIDDEN, (e) => assert.equal(e.extensions['addressClass'], 'metadata'));
    await rejectsWith(fetcher.fetch(`${srv.url}/to-private-name`), ErrorCode.IMAGE_FETCH_FORBIDDEN);
    await rejectsWith(fetcher.fetch(`${srv.url}/to-mapped`), ErrorCode.IMAGE_FETCH_FORBIDDEN, (e) => assert.equal(e.extensions['addressClass'], 'private'));
    await rejectsWith(fetcher.fetch(`${srv.url}/to-file`), ErrorCode.IMAGE_FETCH_FORBIDDEN);
  });

  test('at most three redirects', async () => {
    const r = await fetcher.fetch(`${srv.url}/hop1`);
    assert.equal(r.redirects, 3);
    await rejectsWith(fetcher.fetch(`${srv.url}/loop`), ErrorCode.IMAGE_FETCH_FAILED, (e) => assert.equal(e.extensions['reason'], 'too-many-redirects'));
    assert.equal(srv.hits.get('/loop'), 4);
  });

  test('the byte limit holds for a declared length and for a streamed body without one', async () => {
    await rejectsWith(fetcher.fetch(`${srv.url}/declared-big`), ErrorCode.IMAGE_TOO_LARGE);
    const t0 = performance.now();
    await rejectsWith(fetcher.fetch(`${srv.url}/stream-big`), ErrorCode.IMAGE_TOO_LARGE, (e) => assert.equal(e.extensions['limit'], 1024 * 1024));
    assert.ok(performance.now() - t0 < 400, 'stopped while streaming, not at the end');
  });

  test('a slow server times out', async () => {
    const t0 = performance.now();
    await rejectsWith(fetcher.fetch(`${srv.url}/slow-body`), ErrorCode.IMAGE_FETCH_TIMEOUT);
    await rejectsWith(fetcher.fetch(`${srv.url}/no-answer`), ErrorCode.IMAGE_FETCH_TIMEOUT);
    assert.ok(performance.now() - t0 < 2000);
  });

  test('HTTP errors, unknown hosts and refused connections are IMAGE_FETCH_FAILED', async () => {
    await rejectsWith(fetcher.fetch(`${srv.url}/missing`), ErrorCode.IMAGE_FETCH_FAILED, (e) => assert.equal(e.extensions['status'], 404));
    await rejectsWith(fetcher.fetch('http://nowhere.test/x.png'), ErrorCode.IMAGE_FETCH_FAILED, (e) => assert.equal(e.extensions['reason'], 'dns'));
    const closed = await startImageServer({});
    const port = closed.port;
    await closed.stop();
    await rejectsWith(fetcher.fetch(`http://127.0.0.1:${port}/`), ErrorCode.IMAGE_FETCH_FAILED);
  });

  test('schemes other than http, https and data are refused', async () => {
    for (const u of ['file:///etc/passwd', 'ftp://example.com/a.png', 'gopher://x/', 'javascript:alert(1)']) {
      await rejectsWith(fetcher.fetch(u), ErrorCode.IMAGE_FETCH_FORBIDDEN);
    }
    await rejectsWith(fetcher.fetch('not a url'), ErrorCode.BAD_USER_INPUT);
  });

  test('data: URLs decode (base64 and percent-encoded) and obey the byte limit', async () => {
    const r = await fetcher.fetch(`data:image/png;base64,${png.toString('base64')}`);
    assert.deepEqual(Buffer.from(r.bytes), png);
    assert.deepEqual(Buffer.from(decodeDataUrl('data:,%89PNG', 100)), Buffer.from([0x89, 0x50, 0x4e, 0x47]));
    await rejectsWith(
      Promise.resolve().then(() => fetcher.fetch(`data:;base64,${Buffer.alloc(2 * 1024 * 1024).toString('base64')}`)),
      ErrorCode.IMAGE_TOO_LARGE,
    );
    await rejectsWith(
      Promise.resolve().then(() => fetcher.fetch('data:image/png;base64,@@@@')),
      ErrorCode.IMAGE_UNREADABLE,
    );
  });

  test('the allowlist refuses entries it cannot read', () => {
    assert.throws(() => new FetchAllowList(['10.0.0.0/33']), /POLYRAY_IMAGE_FETCH_ALLOW/);
    assert.throws(() => new FetchAllowList(['not a host!']), /POLYRAY_IMAGE_FETCH_ALLOW/);
    const a = new FetchAllowList(['10.0.0.0/8', 'fd00::/8', 'Images.Internal.']);
    assert.ok(a.allowsAddress(parseAddress('10.9.8.7')!));
    assert.ok(a.allowsAddress(parseAddress('::ffff:10.9.8.7')!));
    assert.ok(a.allowsAddress(parseAddress('fd12::1')!));
    assert.ok(!a.allowsAddress(parseAddress('11.0.0.1')!));
    assert.ok(a.allowsHost('images.internal'));
  });
});

// ---------------------------------------------------------------------------------------------
// The same fetcher over https: a real local TLS server with certificates made at test time.
// ---------------------------------------------------------------------------------------------

describe('image fetching over https', () => {
  const ca = createTestCa();
  const timers: NodeJS.Timeout[] = [];
  const servers: ImageServer[] = [];
  let png: Buffer;
  /** https, certificate for images.test and 127.0.0.1 from `ca`. */
  let tlsSrv: ImageServer;
  /** http, the same routes. */
  let httpSrv: ImageServer;
  /** A TCP server that accepts and never answers: a TLS handshake that never ends. */
  let silent: Server;
  const silentSockets = new Set<Socket>();
  const resolveMap: Record<string, string[]> = { 'images.test': ['127.0.0.1'], 'elsewhere.test': ['127.0.0.1'], 'internal.test': ['10.1.2.3'] };
  const resolve = async (host: string) => {
    const a = resolveMap[host];
    if (!a) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return a.map((address) => ({ address, family: 4 }));
  };
  const opts = { allow: ['127.0.0.1'], maxBytes: 1024 * 1024, timeoutMs: 400, maxRedirects: 3, resolve };
  /** Trusts the test CA, as POLYRAY_IMAGE_CA_FILE would. */
  let fetcher: ImageFetcher;
  /** Node's bundled roots only: the default. */
  let defaultTrust: ImageFetcher;
  const urlOf = (scheme: 'http' | 'https'): string => (scheme === 'https' ? tlsSrv : httpSrv).url;

  /** The hostile routes of the http tests, plus redirect chains that switch scheme on every hop. */
  const routes = (): Record<string, Route> => ({
    '/img.png': serve(png, 'text/html'),
    '/to-http': (_q, r) => r.writeHead(302, { location: `${httpSrv.url}/img.png` }).end(),
    '/to-https': (_q, r) => r.writeHead(302, { location: `${tlsSrv.url}/img.png` }).end(),
    '/to-metadata': (_q, r) => r.writeHead(302, { location: 'https://169.254.169.254/latest/meta-data/' }).end(),
    '/to-private-name': (_q, r) => r.writeHead(301, { location: `https://internal.test:${tlsSrv.port}/img.png` }).end(),
    '/to-private-http': (_q, r) => r.writeHead(307, { location: `http://10.0.0.7:${httpSrv.port}/img.png` }).end(),
    '/to-file': (_q, r) => r.writeHead(302, { location: 'file:///etc/passwd' }).end(),
    ...limitRoutes(png, timers),
    '/no-answer': () => undefined,
  });

  /** `/chain/<hops>`: each letter is one redirect, to the http (h) or https (s) server; then the image. */
  const chainRoute: Route = (q, r) => {
    const rest = (q.url ?? '').slice('/chain/'.length);
    if (rest === '') return serve(png)(q, r);
    r.writeHead(302, { location: `${urlOf(rest[0] === 's' ? 'https' : 'http')}/chain/${rest.slice(1)}` }).end();
  };
  const withChain = (rs: Record<string, Route>): Record<string, Route> =>
    new Proxy(rs, { get: (t, p: string) => (p.startsWith('/chain/') ? chainRoute : t[p]) });

  /** An https server for one test case, stopped in `after`. */
  const tlsServer = async (cert: { cert: string; key: string }): Promise<ImageServer> => {
    const s = await startImageServer({ '/img.png': serve(png) }, { tls: cert });
    servers.push(s);
    return s;
  };

  before(async () => {
    png = await patternImage(64, 48, 4);
    tlsSrv = await startImageServer(withChain(routes()), { tls: ca.issue({ dns: ['images.test'], ips: ['127.0.0.1'] }) });
    httpSrv = await startImageServer(withChain(routes()));
    silent = createServer((s) => {
      silentSockets.add(s);
      s.on('close', () => silentSockets.delete(s));
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    fetcher = new ImageFetcher({ ...opts, ca: ca.cert });
    defaultTrust = new ImageFetcher(opts);
  });
  after(async () => {
    for (const t of timers) clearTimeout(t);
    for (const s of silentSockets) s.destroy();
    await new Promise<void>((r) => silent?.close(() => r()));
    await Promise.all([tlsSrv?.stop(), httpSrv?.stop(), ...servers.map((s) => s.stop())]);
  });

  test('a good image over https: the same bytes as over http, decoded to the same tensor', async () => {
    const [viaTls, viaName, viaHttp] = await Promise.all([
      fetcher.fetch(`${tlsSrv.url}/img.png`),
      fetcher.fetch(`https://images.test:${tlsSrv.port}/img.png`),
      fetcher.fetch(`${httpSrv.url}/img.png`),
    ]);
    assert.deepEqual(Buffer.from(viaTls.bytes), png);
    assert.deepEqual(Buffer.from(viaName.bytes), png, 'certificate checked against the DNS name');
    assert.deepEqual(Buffer.from(viaHttp.bytes), png);
    const [a, b] = await Promise.all([preprocessImage(viaTls.bytes, SPEC, { maxPixels: 1e7 }), preprocessImage(viaHttp.bytes, SPEC, { maxPixels: 1e7 })]);
    assert.equal(a.format, 'png');
    assert.deepEqual(a.tensor, b.tensor);
  });

  test('certificates that are not accepted fail with IMAGE_FETCH_FAILED, reason tls, and a message that names no host', async () => {
    const other = createTestCa('Another CA');
    const now = Date.now();
    const cases: { what: string; cert?: { cert: string; key: string }; host?: string; via?: ImageFetcher; tls: string; tlsCode: string; hint?: RegExp }[] = [
      {
        what: 'self-signed',
        cert: selfSignedCert({ dns: ['images.test'], ips: ['127.0.0.1'] }),
        tls: 'untrusted',
        tlsCode: 'DEPTH_ZERO_SELF_SIGNED_CERT',
        hint: /POLYRAY_IMAGE_CA_FILE/,
      },
      {
        what: 'signed by a CA nobody trusts',
        cert: other.issue({ ips: ['127.0.0.1'] }),
        tls: 'untrusted',
        tlsCode: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
        hint: /POLYRAY_IMAGE_CA_FILE/,
      },
      { what: 'private CA, default trust', via: defaultTrust, tls: 'untrusted', tlsCode: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' },
      { what: 'another DNS name', cert: ca.issue({ dns: ['elsewhere.test'] }), host: 'images.test', tls: 'hostname', tlsCode: 'ERR_TLS_CERT_ALTNAME_INVALID' },
      { what: 'a DNS name, fetched by IP', cert: ca.issue({ dns: ['images.test'] }), tls: 'hostname', tlsCode: 'ERR_TLS_CERT_ALTNAME_INVALID' },
      { what: 'another IP', cert: ca.issue({ ips: ['127.0.0.2'] }), tls: 'hostname', tlsCode: 'ERR_TLS_CERT_ALTNAME_INVALID' },
      {
        what: 'expired',
        cert: ca.issue({ ips: ['127.0.0.1'], notBefore: new Date(now - 10 * 86_400_000), notAfter: new Date(now - 86_400_000) }),
        tls: 'expired',
        tlsCode: 'CERT_HAS_EXPIRED',
      },
      {
        what: 'not yet valid',
        cert: ca.issue({ ips: ['127.0.0.1'], notBefore: new Date(now + 86_400_000), notAfter: new Date(now + 10 * 86_400_000) }),
        tls: 'expired',
        tlsCode: 'CERT_NOT_YET_VALID',
      },
    ];
    for (const c of cases) {
      const srv = c.cert ? await tlsServer(c.cert) : tlsSrv;
      const hits = srv.hits.get('/img.png') ?? 0;
      await rejectsWith((c.via ?? fetcher).fetch(`https://${c.host ?? '127.0.0.1'}:${srv.port}/img.png`), ErrorCode.IMAGE_FETCH_FAILED, (e) => {
        assert.deepEqual(e.extensions, { reason: 'tls', tls: c.tls, tlsCode: c.tlsCode }, c.what);
        assert.match(e.message, /TLS certificate/, c.what);
        if (c.hint) assert.match(e.message, c.hint, c.what);
        assert.doesNotMatch(
          e.message,
          /127\.0\.0\.|images\.test|elsewhere\.test|DNS:|IP Address/,
          `${c.what}: the message names no host and no certificate name`,
        );
      });
      assert.equal(srv.hits.get('/img.png') ?? 0, hits, `${c.what}: no request was sent`);
    }
    // https to a port that speaks plain http: the handshake fails.
    await rejectsWith(fetcher.fetch(`https://127.0.0.1:${httpSrv.port}/img.png`), ErrorCode.IMAGE_FETCH_FAILED, (e) => {
      assert.equal(e.extensions['reason'], 'tls');
      assert.equal(e.extensions['tls'], 'handshake');
    });
  });

  test('NODE_TLS_REJECT_UNAUTHORIZED=0 does not switch verification off for image fetches', async () => {
    const self = await tlsServer(selfSignedCert({ ips: ['127.0.0.1'] }));
    const saved = process.env['NODE_TLS_REJECT_UNAUTHORIZED'];
    const warn = process.emitWarning;
    process.emitWarning = () => undefined; // Node warns once about the variable; not this test's concern
    process.env['NODE_TLS_REJECT_UNAUTHORIZED'] = '0';
    try {
      await rejectsWith(fetcher.fetch(`${self.url}/img.png`), ErrorCode.IMAGE_FETCH_FAILED, (e) => assert.equal(e.extensions['tls'], 'untrusted'));
    } finally {
      if (saved === undefined) delete process.env['NODE_TLS_REJECT_UNAUTHORIZED'];
      else process.env['NODE_TLS_REJECT_UNAUTHORIZED'] = saved;
      process.emitWarning = warn;
    }
  });

  test('redirects between http and https: each hop passes the address checks', async () => {
    assert.equal((await fetcher.fetch(`${httpSrv.url}/to-https`)).redirects, 1);
    assert.equal((await fetcher.fetch(`${tlsSrv.url}/to-http`)).redirects, 1);
    for (const scheme of ['http', 'https'] as const) {
      await rejectsWith(fetcher.fetch(`${urlOf(scheme)}/to-metadata`), ErrorCode.IMAGE_FETCH_FORBIDDEN, (e) =>
        assert.equal(e.extensions['addressClass'], 'metadata'),
      );
      await rejectsWith(fetcher.fetch(`${urlOf(scheme)}/to-private-name`), ErrorCode.IMAGE_FETCH_FORBIDDEN, (e) =>
        assert.equal(e.extensions['addressClass'], 'private'),
      );
      await rejectsWith(fetcher.fetch(`${urlOf(scheme)}/to-private-http`), ErrorCode.IMAGE_FETCH_FORBIDDEN, (e) =>
        assert.equal(e.extensions['addressClass'], 'private'),
      );
      await rejectsWith(fetcher.fetch(`${urlOf(scheme)}/to-file`), ErrorCode.IMAGE_FETCH_FORBIDDEN);
    }
    // Without the allowlist entry the https server is loopback like any other: refused before connecting.
    const strict = new ImageFetcher({ ca: ca.cert, resolve });
    const hits = tlsSrv.hits.get('/img.png') ?? 0;
    for (const u of [`${tlsSrv.url}/img.png`, `https://images.test:${tlsSrv.port}/img.png`, `https://[::ffff:127.0.0.1]:${tlsSrv.port}/img.png`]) {
      await rejectsWith(strict.fetch(u), ErrorCode.IMAGE_FETCH_FORBIDDEN, (e) => assert.equal(e.extensions['addressClass'], 'loopback'));
    }
    await rejectsWith(strict.fetch(`${httpSrv.url}/to-https`), ErrorCode.IMAGE_FETCH_FORBIDDEN);
    assert.equal(tlsSrv.hits.get('/img.png') ?? 0, hits);
  });

  test('redirect chains that switch scheme count every hop against the one limit (property)', async () => {
    const hop = fc.constantFrom('h', 's');
    await fc.assert(
      fc.asyncProperty(hop, fc.array(hop, { maxLength: 5 }), async (start, hops) => {
        const url = `${urlOf(start === 's' ? 'https' : 'http')}/chain/${hops.join('')}`;
        if (hops.length <= 3) {
          const r = await fetcher.fetch(url);
          assert.equal(r.redirects, hops.length);
          assert.deepEqual(Buffer.from(r.bytes), png);
        } else {
          await rejectsWith(fetcher.fetch(url), ErrorCode.IMAGE_FETCH_FAILED, (e) => assert.equal(e.extensions['reason'], 'too-many-redirects'));
        }
      }),
      { numRuns: 40 },
    );
  });

  test('the byte limit and the deadline hold over TLS as over plain http', async () => {
    for (const scheme of ['http', 'https'] as const) {
      const base = urlOf(scheme);
      await rejectsWith(fetcher.fetch(`${base}/declared-big`), ErrorCode.IMAGE_TOO_LARGE, (e) => assert.equal(e.extensions['bytes'], 50 * 1024 * 1024));
      const t0 = performance.now();
      await rejectsWith(fetcher.fetch(`${base}/stream-big`), ErrorCode.IMAGE_TOO_LARGE, (e) => assert.equal(e.extensions['limit'], 1024 * 1024));
      assert.ok(performance.now() - t0 < 400, `${scheme}: cut while streaming`);
    }
    // Stalls, run side by side (each fetch has its own deadline): a body that stops, headers that never
    // come, and — https only — a TLS handshake that never completes.
    const stalls = [
      `${httpSrv.url}/slow-body`,
      `${httpSrv.url}/no-answer`,
      `${tlsSrv.url}/slow-body`,
      `${tlsSrv.url}/no-answer`,
      `https://127.0.0.1:${(silent.address() as AddressInfo).port}/img.png`,
    ];
    await Promise.all(
      stalls.map(async (u, i) => {
        const t0 = performance.now();
        await rejectsWith(fetcher.fetch(u), ErrorCode.IMAGE_FETCH_TIMEOUT, (e) => assert.equal(e.extensions['timeoutMs'], 400));
        const took = performance.now() - t0;
        assert.ok(took >= 390 && took < 1500, `stall ${i}: cut at the deadline, took ${took.toFixed(0)} ms`);
      }),
    );
  });

  test('the CA bundle: several certificates, read once, and refused when unreadable', async () => {
    const other = createTestCa('Second CA');
    const both = new ImageFetcher({ ...opts, ca: `${other.cert}\n${ca.cert}` });
    const second = await tlsServer(other.issue({ ips: ['127.0.0.1'] }));
    assert.equal((await both.fetch(`${second.url}/img.png`)).bytes.length, png.length);
    assert.equal((await both.fetch(`${tlsSrv.url}/img.png`)).bytes.length, png.length);
    // A pinned self-signed server certificate works as its own trust anchor.
    const self = selfSignedCert({ ips: ['127.0.0.1'] });
    const pinnedSrv = await tlsServer(self);
    assert.equal((await new ImageFetcher({ ...opts, ca: self.cert }).fetch(`${pinnedSrv.url}/img.png`)).bytes.length, png.length);

    assert.throws(
      () => new ImageFetcher({ ca: 'not a certificate' }),
      (e: unknown) => e instanceof TypeError && /POLYRAY_IMAGE_CA_FILE/.test(e.message) && /received none/.test(e.message),
    );
    const broken = ca.cert.replace(/\n[A-Za-z0-9+/]{64}\n/, '\nAAAA\n');
    assert.throws(() => new ImageFetcher({ ca: `${other.cert}${broken}` }), /POLYRAY_IMAGE_CA_FILE\): certificate 2 of 2 could not be read/);
    assert.throws(() => readCaFile('/nonexistent/ca.pem'), /POLYRAY_IMAGE_CA_FILE="\/nonexistent\/ca.pem" could not be read/);

    const dir = mkdtempSync(path.join(tmpdir(), 'polyray-ca-'));
    try {
      writeFileSync(path.join(dir, 'ca.pem'), ca.cert);
      const config = loadConfig({ POLYRAY_IMAGE_CA_FILE: path.join(dir, 'ca.pem') });
      assert.equal(config.images.caFile, path.join(dir, 'ca.pem'));
      assert.equal(readCaFile(config.images.caFile!), ca.cert);
      assert.equal(loadConfig({}).images.caFile, undefined, 'default: no extra CA');
      assert.equal(loadConfig({ POLYRAY_IMAGE_CA_FILE: 'rel/ca.pem' }).images.caFile, path.resolve('rel/ca.pem'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('image decoding safety', () => {
  test('a PNG bomb is refused from its header, before decoding', async () => {
    const bomb = pngBomb(50_000, 50_000); // 2.5 gigapixels in a few kB
    assert.ok(bomb.length < 200_000);
    const t0 = performance.now();
    await rejectsWith(preprocessImage(bomb, SPEC, { maxPixels: 40_000_000 }), ErrorCode.IMAGE_TOO_LARGE, (e) => {
      assert.equal(e.extensions['width'], 50_000);
      assert.equal(e.extensions['limit'], 40_000_000);
    });
    assert.ok(performance.now() - t0 < 1000);
  });

  test('garbage bytes, truncated images and non-image formats are IMAGE_UNREADABLE', async () => {
    const png = await patternImage(64, 64, 2);
    await rejectsWith(preprocessImage(Buffer.from('GIF89a but not really'), SPEC, { maxPixels: 1e7 }), ErrorCode.IMAGE_UNREADABLE);
    await rejectsWith(preprocessImage(Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"/>'), SPEC, { maxPixels: 1e7 }), ErrorCode.IMAGE_UNREADABLE);
    await rejectsWith(preprocessImage(png.subarray(0, 60), SPEC, { maxPixels: 1e7 }), ErrorCode.IMAGE_UNREADABLE);
    await rejectsWith(preprocessImage(new Uint8Array(0), SPEC, { maxPixels: 1e7 }), ErrorCode.IMAGE_UNREADABLE);
  });

  test('JPEG, PNG, WebP and GIF are sniffed from their bytes', async () => {
    for (const f of ['png', 'jpeg', 'webp', 'gif'] as const) {
      const img = await patternImage(32, 32, 3, f);
      assert.equal(sniffImageType(img), f);
      const out = await preprocessImage(img, SPEC, { maxPixels: 1e7 });
      assert.equal(out.format, f);
      assert.equal(out.tensor.length, 3 * 224 * 224);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The address classifier, by property.
// ---------------------------------------------------------------------------------------------

const byte = fc.integer({ min: 0, max: 255 });
/** Random IPv4 addresses whose first `bitsFixed` bits are those of `first`. */
const v4In = (bitsFixed: number, first: number[]): fc.Arbitrary<string> =>
  fc.tuple(byte, byte, byte, byte).map(([w, x, y, z]) => {
    const raw = [w, x, y, z];
    const base = [...first, 0, 0, 0, 0].slice(0, 4);
    const out = raw.map((v, i) => {
      const fixed = Math.max(0, Math.min(8, bitsFixed - 8 * i));
      const mask = fixed === 0 ? 0 : (0xff << (8 - fixed)) & 0xff;
      return (base[i]! & mask) | (v & ~mask & 0xff);
    });
    return out.join('.');
  });

describe('address classifier (property tests)', () => {
  const cls = (s: string) => classifyAddress(parseAddress(s)!);

  test('every address in a special IPv4 range gets its class', () => {
    const cases: [fc.Arbitrary<string>, string[]][] = [
      [v4In(8, [10]), ['private']],
      [v4In(12, [172, 16]), ['private']],
      [v4In(16, [192, 168]), ['private']],
      [v4In(8, [127]), ['loopback']],
      [v4In(10, [100, 64]), ['cgnat', 'metadata']],
      [v4In(16, [169, 254]), ['link-local', 'metadata']],
      [v4In(4, [224]), ['multicast']],
      [v4In(4, [240]), ['reserved']],
      [v4In(8, [0]), ['unspecified']],
    ];
    for (const [arb, classes] of cases)
      fc.assert(
        fc.property(arb, (ip) => classes.includes(cls(ip))),
        { numRuns: 200 },
      );
  });

  test('IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms classify as the IPv4 address they carry', () => {
    fc.assert(
      fc.property(fc.ipV4(), (ip) => {
        const [a, b, c, d] = ip.split('.').map(Number) as [number, number, number, number];
        const hex = `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
        const expected = cls(ip);
        assert.equal(cls(`::ffff:${ip}`), expected);
        assert.equal(cls(`::ffff:${hex}`), expected);
        assert.equal(cls(`64:ff9b::${ip}`), expected);
        assert.equal(cls(`2002:${hex}::1`), expected);
        if (a !== 0) assert.equal(cls(`::${ip}`), expected);
      }),
      { numRuns: 500 },
    );
  });

  test('only global unicast IPv6 can be public; ULA, link-local and multicast never are', () => {
    fc.assert(
      fc.property(fc.ipV6(), (ip) => {
        const a = parseAddress(ip);
        assert.ok(a, `parses ${ip}`);
        const c = classifyAddress(a);
        if (c === 'public') assert.ok((a[0]! & 0xe0) === 0x20 || embeddedIPv4(a) !== undefined, ip);
        if (a[0] === 0xfc || a[0] === 0xfd) assert.equal(c, a[0] === 0xfd && formatAddress(a) === 'fd00:ec2:0:0:0:0:0:254' ? 'metadata' : 'private');
        if (a[0] === 0xfe && (a[1]! & 0xc0) === 0x80) assert.equal(c, 'link-local');
        if (a[0] === 0xff) assert.equal(c, 'multicast');
      }),
      { numRuns: 1000 },
    );
  });

  test('IPv4 literals round-trip and public ranges stay public', () => {
    fc.assert(
      fc.property(fc.ipV4(), (ip) => {
        assert.equal(formatAddress(parseAddress(ip)!), ip);
      }),
    );
    for (const ip of ['8.8.8.8', '1.1.1.1', '93.184.216.34', '2606:4700:4700::1111', '2a00:1450:4001::1']) assert.equal(cls(ip), 'public', ip);
    for (const ip of ['::', '::1', '0.0.0.0', '255.255.255.255', '192.0.2.1', '2001:db8::1', '100::1', 'fe80::1%eth0']) assert.notEqual(cls(ip), 'public', ip);
    // The WHATWG URL parser normalises the odd IPv4 spellings before they reach us.
    for (const h of ['0177.0.0.1', '0x7f000001', '2130706433', '127.1']) assert.equal(new URL(`http://${h}/`).hostname, '127.0.0.1');
  });
});
