/**
 * IP address classification for outbound image fetches (SSRF defence), and the operator's allowlist.
 *
 * Owns: which addresses an image URL may connect to. Only global unicast addresses are `public`;
 * everything else — loopback, RFC 1918 private, link-local, CGNAT, multicast, documentation,
 * benchmarking, reserved ranges and the cloud metadata endpoints — is refused unless the allowlist
 * (`POLYRAY_IMAGE_FETCH_ALLOW`) names the host or a CIDR range containing the address.
 *
 * IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
 * NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are classified by the IPv4 address inside, so `::ffff:127.0.0.1`
 * is loopback. Any IPv6 address outside global unicast `2000::/3` is refused.
 *
 * Addresses are parsed here, not by string prefix: `0177.0.0.1`, `2130706433` and `[::ffff:7f00:1]` are
 * normalised by the WHATWG URL parser or by this parser before they are judged.
 */
import { isIP } from 'node:net';

export type AddressClass = 'public' | 'unspecified' | 'loopback' | 'private' | 'link-local' | 'cgnat' | 'multicast' | 'metadata' | 'documentation' | 'reserved';

/** An address as bytes: 4 for IPv4, 16 for IPv6. */
export type AddressBytes = Uint8Array;

/** Parses a dotted-quad IPv4 address (strict: four decimal parts 0–255). */
function parseIPv4(s: string): AddressBytes | undefined {
  const parts = s.split('.');
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!;
    if (!/^\d{1,3}$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

/** Parses an IPv6 address, with `::` compression, an embedded IPv4 tail and an optional `%zone`. */
function parseIPv6(input: string): AddressBytes | undefined {
  let s = input;
  const zone = s.indexOf('%');
  if (zone >= 0) s = s.slice(0, zone);
  let tail: AddressBytes | undefined;
  const lastColon = s.lastIndexOf(':');
  if (s.includes('.', lastColon)) {
    tail = parseIPv4(s.slice(lastColon + 1));
    if (!tail) return undefined;
    s = `${s.slice(0, lastColon + 1)}0:0`;
  }
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const groups = (h: string): number[] | undefined => {
    if (h === '') return [];
    const out: number[] = [];
    for (const g of h.split(':')) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = groups(halves[0]!);
  const rest = halves.length === 2 ? groups(halves[1]!) : [];
  if (!head || !rest) return undefined;
  const missing = 8 - head.length - rest.length;
  if ((halves.length === 2 && missing < 1) || (halves.length === 1 && missing !== 0)) return undefined;
  const all = [...head, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...rest];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  if (tail) out.set(tail, 12);
  return out;
}

/** Parses an IP literal (IPv4, or IPv6 with or without brackets); undefined for anything else. */
export function parseAddress(s: string): AddressBytes | undefined {
  const t = s.startsWith('[') && s.endsWith(']') ? s.slice(1, -1) : s;
  const kind = isIP(t.split('%')[0]!);
  if (kind === 4) return parseIPv4(t);
  if (kind === 6) return parseIPv6(t);
  return undefined;
}

function inRange(a: AddressBytes, base: AddressBytes, prefix: number): boolean {
  if (a.length !== base.length) return false;
  let bits = prefix;
  for (let i = 0; i < a.length && bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((a[i]! & mask) !== (base[i]! & mask)) return false;
  }
  return true;
}

const v4 = (s: string): AddressBytes => parseIPv4(s)!;
const v6 = (s: string): AddressBytes => parseIPv6(s)!;

/** IPv4 ranges that are not public, most specific first (metadata before link-local). */
const IPV4_RANGES: readonly [AddressBytes, number, AddressClass][] = [
  [v4('169.254.169.254'), 32, 'metadata'], // AWS, GCP, Azure, Oracle, OpenStack instance metadata
  [v4('169.254.170.2'), 32, 'metadata'], // AWS ECS task metadata
  [v4('100.100.100.200'), 32, 'metadata'], // Alibaba Cloud metadata
  [v4('0.0.0.0'), 8, 'unspecified'], // "this network"
  [v4('10.0.0.0'), 8, 'private'],
  [v4('100.64.0.0'), 10, 'cgnat'], // RFC 6598 shared address space
  [v4('127.0.0.0'), 8, 'loopback'],
  [v4('169.254.0.0'), 16, 'link-local'],
  [v4('172.16.0.0'), 12, 'private'],
  [v4('192.0.0.0'), 24, 'reserved'], // IETF protocol assignments
  [v4('192.0.2.0'), 24, 'documentation'],
  [v4('192.88.99.0'), 24, 'reserved'], // 6to4 relay anycast (deprecated)
  [v4('192.168.0.0'), 16, 'private'],
  [v4('198.18.0.0'), 15, 'reserved'], // benchmarking
  [v4('198.51.100.0'), 24, 'documentation'],
  [v4('203.0.113.0'), 24, 'documentation'],
  [v4('224.0.0.0'), 4, 'multicast'],
  [v4('240.0.0.0'), 4, 'reserved'], // includes 255.255.255.255 broadcast
];

const IPV6_RANGES: readonly [AddressBytes, number, AddressClass][] = [
  [v6('fd00:ec2::254'), 128, 'metadata'], // AWS instance metadata over IPv6
  [v6('::'), 128, 'unspecified'],
  [v6('::1'), 128, 'loopback'],
  [v6('64:ff9b:1::'), 48, 'private'], // local-use NAT64
  [v6('100::'), 64, 'reserved'], // discard-only
  [v6('2001:db8::'), 32, 'documentation'],
  [v6('2001::'), 23, 'reserved'], // IETF protocol assignments, incl. Teredo
  [v6('fc00::'), 7, 'private'], // unique local
  [v6('fe80::'), 10, 'link-local'],
  [v6('fec0::'), 10, 'private'], // deprecated site-local
  [v6('ff00::'), 8, 'multicast'],
];

/**
 * The IPv4 address an IPv6 address carries, for the forms that route to it: IPv4-mapped, IPv4-compatible,
 * NAT64 well-known prefix, and 6to4.
 */
export function embeddedIPv4(a: AddressBytes): AddressBytes | undefined {
  if (a.length !== 16) return undefined;
  const zeros = (from: number, to: number): boolean => a.subarray(from, to).every((b) => b === 0);
  if (zeros(0, 10) && a[10] === 0xff && a[11] === 0xff) return a.slice(12, 16); // ::ffff:a.b.c.d
  if (zeros(0, 12) && !zeros(12, 16) && !(zeros(12, 15) && a[15]! <= 1)) return a.slice(12, 16); // ::a.b.c.d (not :: or ::1)
  if (inRange(a, v6('64:ff9b::'), 96)) return a.slice(12, 16); // NAT64
  if (a[0] === 0x20 && a[1] === 0x02) return a.slice(2, 6); // 6to4: 2002:AABB:CCDD::
  return undefined;
}

/** What kind of address this is; only `public` may be fetched without an allowlist entry. */
export function classifyAddress(a: AddressBytes): AddressClass {
  if (a.length === 4) {
    for (const [base, prefix, cls] of IPV4_RANGES) if (inRange(a, base, prefix)) return cls;
    return 'public';
  }
  const inner = embeddedIPv4(a);
  if (inner) return classifyAddress(inner);
  for (const [base, prefix, cls] of IPV6_RANGES) if (inRange(a, base, prefix)) return cls;
  // Global unicast is 2000::/3; everything else is unassigned or special.
  return (a[0]! & 0xe0) === 0x20 ? 'public' : 'reserved';
}

/** Formats address bytes (IPv4 dotted quad, IPv6 full lower-case groups) for messages and tests. */
export function formatAddress(a: AddressBytes): string {
  if (a.length === 4) return [...a].join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((a[i]! << 8) | a[i + 1]!).toString(16));
  return groups.join(':');
}

/**
 * The operator's allowlist: CIDR ranges (`10.0.0.0/8`, `fd00::/8`), single addresses (`127.0.0.1`,
 * `::1`) and host names (`images.internal`, matched exactly, case-insensitively, against the URL's host).
 */
export class FetchAllowList {
  readonly #ranges: { base: AddressBytes; prefix: number }[] = [];
  readonly #hosts = new Set<string>();

  /** Throws a TypeError naming POLYRAY_IMAGE_FETCH_ALLOW and the entry when one cannot be read. */
  constructor(entries: readonly string[]) {
    for (const raw of entries) {
      const entry = raw.trim();
      if (entry === '') continue;
      const slash = entry.indexOf('/');
      const addrPart = slash >= 0 ? entry.slice(0, slash) : entry;
      const addr = parseAddress(addrPart);
      if (addr) {
        const max = addr.length * 8;
        const prefix = slash >= 0 ? Number(entry.slice(slash + 1)) : max;
        if (!Number.isInteger(prefix) || prefix < 0 || prefix > max || (slash >= 0 && !/^\d+$/.test(entry.slice(slash + 1)))) {
          throw new TypeError(`Configuration POLYRAY_IMAGE_FETCH_ALLOW entry "${entry}" has an invalid prefix length (0–${max})`);
        }
        this.#ranges.push({ base: addr, prefix });
      } else if (slash < 0 && /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$/i.test(entry)) {
        this.#hosts.add(entry.toLowerCase().replace(/\.$/, ''));
      } else {
        throw new TypeError(`Configuration POLYRAY_IMAGE_FETCH_ALLOW entry "${entry}" is neither a host name, an IP address nor a CIDR range`);
      }
    }
  }

  allowsHost(host: string): boolean {
    return this.#hosts.has(host.toLowerCase().replace(/\.$/, ''));
  }

  allowsAddress(a: AddressBytes): boolean {
    const inner = embeddedIPv4(a);
    return this.#ranges.some((r) => inRange(a, r.base, r.prefix) || (inner !== undefined && inRange(inner, r.base, r.prefix)));
  }

  /** Why an address may not be fetched from `host`, or undefined when it may. */
  refusal(host: string, a: AddressBytes): AddressClass | undefined {
    const cls = classifyAddress(a);
    if (cls === 'public' || this.allowsHost(host) || this.allowsAddress(a)) return undefined;
    return cls;
  }
}
