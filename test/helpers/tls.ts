/**
 * Test certificates, made at test time in memory: a private CA, leaf certificates it signs (for chosen DNS
 * names and IP addresses, valid or expired), and self-signed leaves. No binary fixtures, no private key in
 * the repository, and no `openssl` CLI (Debian ships it at priority optional, so a bare CI image may lack it):
 * the X.509 DER is assembled here and signed with node:crypto (ECDSA P-256, SHA-256), and every certificate
 * is read back with `X509Certificate` before it is handed out.
 */
import { X509Certificate, createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';

// ---- DER, the few types a certificate needs -------------------------------------------------------------

function tlv(tag: number, body: Buffer): Buffer {
  const n = body.length;
  const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  if (n > 0xffff) throw new RangeError('DER value too long for this helper');
  return Buffer.concat([Buffer.from([tag]), len, body]);
}
const seq = (...items: Buffer[]): Buffer => tlv(0x30, Buffer.concat(items));
const set = (...items: Buffer[]): Buffer => tlv(0x31, Buffer.concat(items));
const explicit = (n: number, inner: Buffer): Buffer => tlv(0xa0 + n, inner);
const octets = (b: Buffer): Buffer => tlv(0x04, b);
const bits = (b: Buffer, unused = 0): Buffer => tlv(0x03, Buffer.concat([Buffer.from([unused]), b]));
const bool = (v: boolean): Buffer => tlv(0x01, Buffer.from([v ? 0xff : 0]));
const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, 'utf8'));

function integer(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0 && b[i + 1]! < 0x80) i++;
  const v = b.subarray(i);
  return tlv(0x02, v[0]! >= 0x80 ? Buffer.concat([Buffer.from([0]), v]) : v);
}

function oid(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split('.').map(Number) as [number, number, ...number[]];
  const out = [40 * a + b];
  for (const n of rest) {
    const groups = [n & 0x7f];
    for (let v = n >>> 7; v > 0; v >>>= 7) groups.unshift((v & 0x7f) | 0x80);
    out.push(...groups);
  }
  return tlv(0x06, Buffer.from(out));
}

/** UTCTime (years 1950–2049), YYMMDDHHMMSSZ. */
function utcTime(d: Date): Buffer {
  const p = (n: number): string => String(n).padStart(2, '0');
  const s = `${p(d.getUTCFullYear() % 100)}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  return tlv(0x17, Buffer.from(s, 'ascii'));
}

const name = (cn: string): Buffer => seq(set(seq(oid('2.5.4.3'), utf8(cn))));
const extension = (id: string, critical: boolean, value: Buffer): Buffer => seq(oid(id), ...(critical ? [bool(true)] : []), octets(value));
const ECDSA_SHA256 = seq(oid('1.2.840.10045.4.3.2'));

function ipBytes(ip: string): Buffer {
  if (isIP(ip) === 4) return Buffer.from(ip.split('.').map(Number));
  throw new TypeError(`test certificates take IPv4 SANs only, received ${ip}`);
}

// ---- Certificates ---------------------------------------------------------------------------------------

export interface TestCert {
  /** PEM certificate. */
  cert: string;
  /** PEM private key (PKCS#8), in memory only. */
  key: string;
  /** The certificate as Node reads it. */
  x509: X509Certificate;
}

interface Signer {
  name: Buffer;
  key: KeyObject;
  /** subjectKeyIdentifier of the signer (for the authorityKeyIdentifier of what it signs). */
  keyId: Buffer;
}

export interface LeafOptions {
  /** DNS names in subjectAltName. */
  dns?: string[];
  /** IPv4 addresses in subjectAltName. */
  ips?: string[];
  /** Validity; default one hour ago to one day ahead. */
  notBefore?: Date;
  notAfter?: Date;
}

function makeCert(subject: string, issuer: Signer | 'self', isCa: boolean, o: LeafOptions): TestCert & { signer: Signer } {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const keyId = createHash('sha1').update(spki).digest();
  const self: Signer = { name: name(subject), key: privateKey, keyId };
  const by = issuer === 'self' ? self : issuer;
  const now = Date.now();
  const notBefore = o.notBefore ?? new Date(now - 3600_000);
  const notAfter = o.notAfter ?? new Date(now + 24 * 3600_000);
  const serial = randomBytes(16);
  serial[0]! &= 0x7f;
  const sans = [...(o.dns ?? []).map((d) => tlv(0x82, Buffer.from(d, 'ascii'))), ...(o.ips ?? []).map((ip) => tlv(0x87, ipBytes(ip)))];
  const exts = [
    extension('2.5.29.19', true, isCa ? seq(bool(true)) : seq()), // basicConstraints
    // keyUsage: CA = digitalSignature | keyCertSign | cRLSign; leaf = digitalSignature
    extension('2.5.29.15', true, isCa ? bits(Buffer.from([0x86]), 1) : bits(Buffer.from([0x80]), 7)),
    extension('2.5.29.14', false, octets(keyId)), // subjectKeyIdentifier
    extension('2.5.29.35', false, seq(tlv(0x80, by.keyId))), // authorityKeyIdentifier [0] keyIdentifier
    ...(isCa ? [] : [extension('2.5.29.37', false, seq(oid('1.3.6.1.5.5.7.3.1')))]), // extKeyUsage serverAuth
    ...(sans.length ? [extension('2.5.29.17', false, seq(...sans))] : []),
  ];
  const tbs = seq(
    explicit(0, integer(Buffer.from([2]))),
    integer(serial),
    ECDSA_SHA256,
    by.name,
    seq(utcTime(notBefore), utcTime(notAfter)),
    self.name,
    spki,
    explicit(3, seq(...exts)),
  );
  const der = seq(tbs, ECDSA_SHA256, bits(sign('sha256', tbs, by.key)));
  const cert = `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE-----\n`;
  const x509 = new X509Certificate(cert); // throws if the DER above is malformed
  return { cert, key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, x509, signer: self };
}

export interface TestCa extends TestCert {
  /** A server certificate signed by this CA. */
  issue(o: LeafOptions): TestCert;
}

/** A private root CA (self-signed, CA:TRUE) that can issue server certificates. */
export function createTestCa(commonName = 'Polyray Test CA'): TestCa {
  const ca = makeCert(commonName, 'self', true, {});
  return {
    cert: ca.cert,
    key: ca.key,
    x509: ca.x509,
    issue: (o) => {
      const leaf = makeCert((o.dns ?? o.ips ?? ['leaf'])[0]!, ca.signer, false, o);
      return { cert: leaf.cert, key: leaf.key, x509: leaf.x509 };
    },
  };
}

/** A self-signed server certificate (no CA vouches for it). */
export function selfSignedCert(o: LeafOptions): TestCert {
  const c = makeCert((o.dns ?? o.ips ?? ['self-signed'])[0]!, 'self', false, o);
  return { cert: c.cert, key: c.key, x509: c.x509 };
}
