/**
 * UPnP-IGD port mapping: the third protocol beside PCP and NAT-PMP (natpmp.ts), for gateways
 * that speak only UPnP (many home routers; miniupnpd with NAT-PMP/PCP off). Used when PCP and
 * NAT-PMP get no answer.
 *
 * 1. Discovery (SSDP, UPnP Device Architecture 1.1 §1.3): an HTTP-over-UDP M-SEARCH to
 *    239.255.255.250:1900 and to the gateway's port 1900 (unicast, for networks where multicast
 *    has no route); each answer is an HTTP 200 with a LOCATION header (the device description URL).
 * 2. The description (XML) lists services; we want WANIPConnection (IGD v1 or v2) and its controlURL.
 * 3. Control: SOAP over HTTP POST to the controlURL, actions GetExternalIPAddress, AddPortMapping
 *    (a UDP mapping of an external port to our address and port, with a lease) and DeletePortMapping.
 *
 * An attacker on the LAN can answer SSDP too, so we take only answers from the gateway itself, and
 * fetch only URLs on the host that answered: an answer cannot send our HTTP requests anywhere else.
 * Every read is bounded (datagram, description, SOAP answer) and timed out; the XML is a small,
 * fixed subset read with bounded regular expressions, no general parser.
 */
import { createSocket, type Socket } from 'node:dgram';
import { request } from 'node:http';
import { isIPv4 } from 'node:net';
import type { PortMapping, UpnpService } from './port-mapping.js';

export const SSDP_ADDRESS = '239.255.255.250';
export const SSDP_PORT = 1900;
/** Whole-call budget, like PCP/NAT-PMP's: the gateway is one hop away and answers in milliseconds. */
export const DEFAULT_UPNP_TIMEOUT_MS = 2000;
/** SSDP answers arrive within MX seconds (we ask 1); the M-SEARCH is resent once, UDP may drop it. */
const SSDP_MX_SEC = 1;
const SSDP_RESEND_MS = 250;
/** An SSDP answer is a few hundred bytes; bigger datagrams are not answers. */
const MAX_SSDP_BYTES = 2048;
/** A description is 2-10 KB (miniupnpd's ~4 KB); more is refused unread. */
export const MAX_DESCRIPTION_BYTES = 64 * 1024;
/** A SOAP answer is well under 2 KB. */
export const MAX_SOAP_BYTES = 16 * 1024;
/** Lease asked for: like NAT-PMP's two hours; renewed by every netcheck (each minute). */
export const DEFAULT_UPNP_LEASE_SEC = 7200;
/** Another external port is tried this many times when the one asked for is taken (error 718). */
const MAX_PORT_TRIES = 3;

const SEARCH_TARGETS = [
  'urn:schemas-upnp-org:device:InternetGatewayDevice:1',
  'urn:schemas-upnp-org:service:WANIPConnection:1',
  'urn:schemas-upnp-org:service:WANIPConnection:2',
];
const WANIP = /^urn:schemas-upnp-org:service:WANIPConnection:[12]$/;
const ERROR_CONFLICT = 718;
const ERROR_ONLY_PERMANENT_LEASES = 725;

export interface UpnpOptions {
  /** IPv4 address of the gateway: only its SSDP answers count. */
  gateway: string;
  internalPort: number;
  /** External port to ask for; default the internal port. */
  suggestedExternalPort?: number;
  lifetimeSec?: number;
  timeoutMs?: number;
  /** The mapping held from an earlier call: renewed at its control URL without a new discovery. */
  held?: PortMapping | null;
  /** The SSDP group searched besides the gateway; null: none (tests). Default 239.255.255.250:1900. */
  ssdpGroup?: { address: string; port: number } | null;
  /** The gateway's SSDP port searched by unicast (tests: a fake's). Default 1900. */
  ssdpPort?: number;
}

function closeQuietly(sock: Socket): void {
  try {
    sock.close();
  } catch {
    // already closed
  }
}

function mSearch(target: string, st: string): Buffer {
  return Buffer.from(`M-SEARCH * HTTP/1.1\r\nHOST: ${target}\r\nMAN: "ssdp:discover"\r\nMX: ${SSDP_MX_SEC}\r\nST: ${st}\r\n\r\n`);
}

/** The LOCATION of an SSDP answer, or null when it is not one. */
export function parseSsdpAnswer(msg: Buffer): string | null {
  if (msg.length > MAX_SSDP_BYTES) return null;
  const text = msg.toString('latin1');
  if (!/^HTTP\/1\.[01] 200/.test(text)) return null;
  const m = /^location:[ \t]*(\S+)[ \t]*$/im.exec(text);
  return m ? m[1] : null;
}

/** An http:// URL on `host` (a description or control URL), or null: other schemes and other hosts are refused. */
function urlOnHost(text: string, base: string, host: string): URL | null {
  let url: URL;
  try {
    url = new URL(text, base);
  } catch {
    return null;
  }
  return url.protocol === 'http:' && url.hostname === host ? url : null;
}

/**
 * Sends M-SEARCH and returns the description URLs the gateway gave, within the deadline. The
 * unicast search goes from a socket connected to the gateway: when nothing listens there (ICMP
 * port unreachable) the gateway runs no SSDP, and since only its answers count we stop at once
 * (most gateways: a netcheck must not wait the whole budget for nothing).
 */
function discover(opts: UpnpOptions, deadline: number): Promise<URL[]> {
  const group = opts.ssdpGroup === undefined ? { address: SSDP_ADDRESS, port: SSDP_PORT } : opts.ssdpGroup;
  const port = opts.ssdpPort ?? SSDP_PORT;
  return new Promise((resolve) => {
    const found = new Map<string, URL>();
    const multi = createSocket('udp4');
    const uni = createSocket('udp4');
    let timer: NodeJS.Timeout | undefined;
    let resend: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearTimeout(resend);
      closeQuietly(multi);
      closeQuietly(uni);
      resolve([...found.values()]);
    };
    const onMessage = (msg: Buffer, rinfo: { address: string }): void => {
      if (rinfo.address !== opts.gateway) return; // only the gateway maps ports for us
      const location = parseSsdpAnswer(msg);
      const url = location ? urlOnHost(location, location, rinfo.address) : null;
      if (url && found.size < 4) found.set(url.href, url);
      // One description is enough once the search has had a moment to collect the others.
      if (found.size > 0) {
        clearTimeout(timer);
        timer = setTimeout(finish, 50);
      }
    };
    multi.on('message', onMessage);
    uni.on('message', onMessage);
    multi.on('error', () => {}); // an unroutable group is one that does not answer
    uni.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ECONNREFUSED' && found.size === 0) finish();
    });
    const send = (): void => {
      for (const st of SEARCH_TARGETS) {
        try {
          uni.send(mSearch(`${opts.gateway}:${port}`, st), (err) => {
            if ((err as NodeJS.ErrnoException | null)?.code === 'ECONNREFUSED' && found.size === 0) finish();
          });
          if (group) multi.send(mSearch(`${group.address}:${group.port}`, st), group.port, group.address);
        } catch {
          // closed by finish()
        }
      }
    };
    timer = setTimeout(finish, Math.max(0, deadline - Date.now()));
    uni.connect(port, opts.gateway, () => {
      multi.bind(0, () => {
        try {
          multi.setMulticastTTL(2); // the gateway is on our link (UDA 1.1: TTL default 2)
        } catch {
          // not fatal: the unicast search still goes
        }
        if (done) return;
        send();
        resend = setTimeout(send, SSDP_RESEND_MS);
      });
    });
  });
}

interface HttpAnswer {
  status: number;
  body: string;
  /** Our address on the connection: the internal client of the mapping. */
  localAddress: string;
}

/** One HTTP exchange with a bounded answer; null on any failure (refused, timed out, too big). */
function httpExchange(url: URL, deadline: number, maxBytes: number, post?: { action: string; body: string }): Promise<HttpAnswer | null> {
  return new Promise((resolve) => {
    const left = deadline - Date.now();
    if (left <= 0) return resolve(null);
    let done = false;
    const finish = (v: HttpAnswer | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req.destroy();
      resolve(v);
    };
    const headers: Record<string, string> = { Connection: 'close' };
    if (post) {
      headers['Content-Type'] = 'text/xml; charset="utf-8"';
      headers.SOAPAction = `"${post.action}"`;
      headers['Content-Length'] = String(Buffer.byteLength(post.body));
    }
    const req = request(url, { method: post ? 'POST' : 'GET', headers }, (res) => {
      const declared = Number(res.headers['content-length'] ?? 0);
      if (declared > maxBytes) return finish(null);
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > maxBytes) return finish(null);
        chunks.push(c);
      });
      res.on('end', () => finish({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), localAddress: res.socket?.localAddress ?? req.socket?.localAddress ?? '' }));
      res.on('error', () => finish(null));
    });
    const timer = setTimeout(() => finish(null), left);
    req.on('error', () => finish(null));
    req.end(post?.body);
  });
}

function unescapeXml(s: string): string {
  return s.replace(/&(lt|gt|quot|apos|amp);/g, (_, e: string) => ({ lt: '<', gt: '>', quot: '"', apos: "'", amp: '&' })[e]!);
}

function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** The text of the first <tag> element (namespace prefixes allowed), unescaped; null when absent. */
function elementText(xml: string, tag: string): string | null {
  const m = new RegExp(`<(?:[A-Za-z0-9_]+:)?${tag}(?:\\s[^>]{0,200})?>([^<]{0,2048})</(?:[A-Za-z0-9_]+:)?${tag}>`).exec(xml);
  return m ? unescapeXml(m[1].trim()) : null;
}

/** The WANIPConnection services of a device description (v2 first), with their control URLs resolved. */
export function findWanIpServices(xml: string, location: URL): UpnpService[] {
  const base = elementText(xml, 'URLBase') ?? location.href;
  const out: UpnpService[] = [];
  for (const m of xml.matchAll(/<service>([\s\S]{0,4096}?)<\/service>/g)) {
    const serviceType = elementText(m[1], 'serviceType');
    const control = elementText(m[1], 'controlURL');
    if (!serviceType || !control || !WANIP.test(serviceType)) continue;
    const url = urlOnHost(control, base, location.hostname);
    if (url) out.push({ host: location.hostname, controlUrl: url.href, serviceType });
  }
  return out.sort((a, b) => b.serviceType.localeCompare(a.serviceType));
}

type SoapResult = { ok: true; body: string; localAddress: string } | { ok: false; errorCode: number };

/** Calls one action; a SOAP fault gives its UPnP errorCode (-1 when the exchange itself failed). */
async function soap(service: UpnpService, action: string, args: [string, string | number][], deadline: number): Promise<SoapResult> {
  const inner = args.map(([k, v]) => `<${k}>${escapeXml(String(v))}</${k}>`).join('');
  const body = '<?xml version="1.0"?>\r\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
    + `<s:Body><u:${action} xmlns:u="${service.serviceType}">${inner}</u:${action}></s:Body></s:Envelope>\r\n`;
  const r = await httpExchange(new URL(service.controlUrl), deadline, MAX_SOAP_BYTES, { action: `${service.serviceType}#${action}`, body });
  if (!r) return { ok: false, errorCode: -1 };
  if (r.status === 200 && new RegExp(`<(?:[A-Za-z0-9_]+:)?${action}Response[\\s>]`).test(r.body)) return { ok: true, body: r.body, localAddress: r.localAddress };
  const code = Number(elementText(r.body, 'errorCode') ?? -1);
  return { ok: false, errorCode: Number.isInteger(code) ? code : -1 };
}

/** Finds the gateway's WANIPConnection service: SSDP, then its description. Null when none answers in time. */
export async function discoverUpnpService(opts: UpnpOptions, deadline: number): Promise<UpnpService | null> {
  for (const location of await discover(opts, deadline)) {
    const r = await httpExchange(location, deadline, MAX_DESCRIPTION_BYTES);
    if (!r || r.status !== 200) continue;
    const service = findWanIpServices(r.body, location)[0];
    if (service) return service;
  }
  return null;
}

async function addMapping(service: UpnpService, internalClient: string, internalPort: number, externalPort: number, lease: number, deadline: number): Promise<SoapResult> {
  return soap(service, 'AddPortMapping', [
    ['NewRemoteHost', ''], ['NewExternalPort', externalPort], ['NewProtocol', 'UDP'], ['NewInternalPort', internalPort],
    ['NewInternalClient', internalClient], ['NewEnabled', 1], ['NewPortMappingDescription', `agentvpn ${internalPort}`], ['NewLeaseDuration', lease],
  ], deadline);
}

/**
 * Asks the gateway for a UDP mapping to `internalPort` over UPnP-IGD. Null when no IGD answers,
 * it refuses, or its external address is not IPv4. Never throws for network conditions.
 */
export async function requestUpnpMapping(opts: UpnpOptions): Promise<PortMapping | null> {
  if (!isIPv4(opts.gateway)) return null;
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_UPNP_TIMEOUT_MS);
  const held = opts.held?.protocol === 'upnp' && opts.held.gateway === opts.gateway ? opts.held.upnp ?? null : null;
  const service = held ?? await discoverUpnpService(opts, deadline);
  if (!service) return null;
  // Our address on the LAN, as the gateway sees it: the local end of an HTTP connection to it.
  const ip = await soap(service, 'GetExternalIPAddress', [], deadline);
  if (!ip.ok) return held ? requestUpnpMapping({ ...opts, held: null }) : null; // a stale control URL: discover again
  const external = elementText(ip.body, 'NewExternalIPAddress');
  if (!external || !isIPv4(external) || !isIPv4(ip.localAddress)) return null;
  let lease = opts.lifetimeSec ?? DEFAULT_UPNP_LEASE_SEC;
  let port = opts.held?.externalPort ?? opts.suggestedExternalPort ?? opts.internalPort;
  for (let tries = 0; tries < MAX_PORT_TRIES; ) {
    const r = await addMapping(service, ip.localAddress, opts.internalPort, port, lease, deadline);
    if (r.ok) {
      return {
        protocol: 'upnp', externalAddress: Uint8Array.from(external.split('.').map(Number)), externalPort: port,
        lifetimeSec: lease, gateway: opts.gateway, upnp: { ...service, internalClient: ip.localAddress },
      };
    }
    if (r.errorCode === ERROR_ONLY_PERMANENT_LEASES && lease !== 0) {
      lease = 0; // deleted on stop instead of expiring
      continue;
    }
    if (r.errorCode !== ERROR_CONFLICT) return null;
    port = 1024 + Math.floor(Math.random() * (65536 - 1024));
    tries++;
  }
  return null;
}

/** Deletes a mapping made by requestUpnpMapping; resolves when done or timed out, never throws. */
export async function releaseUpnpMapping(m: PortMapping, timeoutMs = DEFAULT_UPNP_TIMEOUT_MS): Promise<void> {
  if (m.protocol !== 'upnp' || !m.upnp) return;
  await soap(m.upnp, 'DeletePortMapping', [['NewRemoteHost', ''], ['NewExternalPort', m.externalPort], ['NewProtocol', 'UDP']], Date.now() + timeoutMs);
}
