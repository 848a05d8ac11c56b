import { createSocket, type Socket } from 'node:dgram';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { findWanIpServices, MAX_DESCRIPTION_BYTES, parseSsdpAnswer, releaseUpnpMapping, requestUpnpMapping } from '../../src/paths/upnp.js';
import { releaseUdpMapping } from '../../src/paths/natpmp.js';

const WANIP2 = 'urn:schemas-upnp-org:service:WANIPConnection:2';

function description(controlUrl: string, extra = ''): string {
  return `<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceList><device><serviceList><service><serviceType>${WANIP2}</serviceType><serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>${controlUrl}</controlURL><eventSubURL>/evt/IPConn</eventSubURL></service></serviceList></device></deviceList></device></deviceList></device>${extra}</root>`;
}

interface FakeIgd {
  ssdpPort: number;
  httpPort: number;
  calls: { action: string; body: string }[];
  mappings: Map<number, { client: string; port: number; lease: number }>;
  close(): Promise<void>;
}

/**
 * A fake IGD on loopback: SSDP answers pointing at its HTTP server, a description, and a SOAP
 * control point that keeps mappings. `opts` makes it misbehave the ways the client must survive.
 */
async function fakeIgd(opts: { location?: (httpPort: number) => string; description?: (httpPort: number) => string; taken?: number[]; answerSsdp?: boolean } = {}): Promise<FakeIgd> {
  const calls: FakeIgd['calls'] = [];
  const mappings: FakeIgd['mappings'] = new Map();
  const http: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      if (req.method === 'GET' && req.url === '/rootDesc.xml') {
        res.writeHead(200, { 'Content-Type': 'text/xml' });
        return res.end(opts.description ? opts.description(port()) : description('/ctl/IPConn'));
      }
      if (req.method !== 'POST' || req.url !== '/ctl/IPConn') return res.writeHead(404).end();
      const action = /#(\w+)"/.exec(String(req.headers.soapaction))?.[1] ?? '';
      calls.push({ action, body });
      const arg = (k: string) => new RegExp(`<${k}>([^<]*)</${k}>`).exec(body)?.[1] ?? '';
      const ok = (inner = '') => res.writeHead(200, { 'Content-Type': 'text/xml' }).end(`<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:${action}Response xmlns:u="${WANIP2}">${inner}</u:${action}Response></s:Body></s:Envelope>`);
      const fault = (code: number) => res.writeHead(500, { 'Content-Type': 'text/xml' }).end(`<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>${code}</errorCode><errorDescription>x</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>`);
      if (action === 'GetExternalIPAddress') return ok('<NewExternalIPAddress>203.0.113.77</NewExternalIPAddress>');
      if (action === 'AddPortMapping') {
        const ext = Number(arg('NewExternalPort'));
        if ((opts.taken ?? []).includes(ext)) return fault(718);
        mappings.set(ext, { client: arg('NewInternalClient'), port: Number(arg('NewInternalPort')), lease: Number(arg('NewLeaseDuration')) });
        return ok();
      }
      if (action === 'DeletePortMapping') {
        mappings.delete(Number(arg('NewExternalPort')));
        return ok();
      }
      return fault(401);
    });
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const port = () => (http.address() as AddressInfo).port;
  const ssdp: Socket = createSocket('udp4');
  ssdp.on('message', (msg, rinfo) => {
    if (opts.answerSsdp === false || !msg.toString().startsWith('M-SEARCH')) return;
    const location = opts.location ? opts.location(port()) : `http://127.0.0.1:${port()}/rootDesc.xml`;
    ssdp.send(`HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:x\r\nEXT:\r\nSERVER: fake UPnP/1.1\r\nLOCATION: ${location}\r\n\r\n`, rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => ssdp.bind(0, '127.0.0.1', r));
  return {
    ssdpPort: ssdp.address().port, httpPort: port(), calls, mappings,
    close: async () => {
      ssdp.close();
      await new Promise((r) => http.close(r));
    },
  };
}

let igd: FakeIgd | null = null;
afterEach(async () => {
  await igd?.close();
  igd = null;
});

const ask = (i: FakeIgd, extra: Partial<Parameters<typeof requestUpnpMapping>[0]> = {}) =>
  requestUpnpMapping({ gateway: '127.0.0.1', internalPort: 51820, timeoutMs: 1500, ssdpGroup: null, ssdpPort: i.ssdpPort, ...extra });

describe('UPnP-IGD client against a fake IGD on loopback', () => {
  it('discovers, maps our port to our LAN address with a lease, renews at the same control URL, deletes on release', async () => {
    igd = await fakeIgd();
    const m = await ask(igd);
    console.log(`mapping: ${JSON.stringify({ ...m, externalAddress: m && Array.from(m.externalAddress).join('.') })}; calls ${igd.calls.map((c) => c.action).join(',')}`);
    expect(m).toMatchObject({ protocol: 'upnp', externalPort: 51820, lifetimeSec: 7200, gateway: '127.0.0.1' });
    expect(Array.from(m!.externalAddress).join('.')).toBe('203.0.113.77');
    expect(igd.mappings.get(51820)).toEqual({ client: '127.0.0.1', port: 51820, lease: 7200 });
    // Renewal: no SSDP needed, the same external port.
    const renewed = await requestUpnpMapping({ gateway: '127.0.0.1', internalPort: 51820, timeoutMs: 1500, held: m, ssdpGroup: null, ssdpPort: 1 });
    expect(renewed?.externalPort).toBe(51820);
    await releaseUdpMapping(m!, 51820);
    expect(igd.mappings.size).toBe(0);
    expect(igd.calls.map((c) => c.action)).toEqual(['GetExternalIPAddress', 'AddPortMapping', 'GetExternalIPAddress', 'AddPortMapping', 'DeletePortMapping']);
  });

  it('takes another external port when the one asked for is taken (error 718)', async () => {
    igd = await fakeIgd({ taken: [51820] });
    const m = await ask(igd);
    expect(m?.externalPort).not.toBe(51820);
    expect(igd.mappings.get(m!.externalPort)?.port).toBe(51820);
    await releaseUpnpMapping(m!);
  });

  it('nothing on the SSDP port of the gateway (ICMP port unreachable): gives up at once, not at the end of the budget', async () => {
    const closed = createSocket('udp4');
    await new Promise<void>((r) => closed.bind(0, '127.0.0.1', r));
    const port = closed.address().port;
    closed.close();
    const t = Date.now();
    expect(await requestUpnpMapping({ gateway: '127.0.0.1', internalPort: 51820, timeoutMs: 2000, ssdpGroup: null, ssdpPort: port })).toBeNull();
    console.log(`no SSDP on the gateway: null after ${Date.now() - t} ms (budget 2000)`);
    expect(Date.now() - t).toBeLessThan(1000);
  });

  it('no answer: null within the time budget', async () => {
    igd = await fakeIgd({ answerSsdp: false });
    const t = Date.now();
    expect(await ask(igd, { timeoutMs: 600 })).toBeNull();
    expect(Date.now() - t).toBeLessThan(1500);
  });

  it('refuses a LOCATION on another host, an oversized description and a control URL elsewhere: no request leaves for them', async () => {
    // Another host: the client must not fetch it (it would be an HTTP request the LAN chooses for us).
    igd = await fakeIgd({ location: () => 'http://192.0.2.1:1/rootDesc.xml' });
    expect(await ask(igd, { timeoutMs: 600 })).toBeNull();
    await igd.close();
    igd = await fakeIgd({ description: () => description('/ctl/IPConn', `<pad>${'x'.repeat(MAX_DESCRIPTION_BYTES)}</pad>`) });
    expect(await ask(igd)).toBeNull();
    expect(igd.calls).toHaveLength(0);
    await igd.close();
    igd = await fakeIgd({ description: () => description('http://192.0.2.1:80/ctl/IPConn') });
    expect(await ask(igd)).toBeNull();
    await igd.close();
    igd = await fakeIgd({ description: () => '<root><service><serviceType>' + '<'.repeat(10_000) });
    expect(await ask(igd)).toBeNull();
  });

  it('parses SSDP answers and descriptions defensively', () => {
    expect(parseSsdpAnswer(Buffer.from('HTTP/1.1 200 OK\r\nLocation: http://198.51.100.1:5000/rootDesc.xml\r\n\r\n'))).toBe('http://198.51.100.1:5000/rootDesc.xml');
    expect(parseSsdpAnswer(Buffer.from('NOTIFY * HTTP/1.1\r\nLOCATION: http://x/\r\n\r\n'))).toBeNull();
    expect(parseSsdpAnswer(Buffer.alloc(4096, 0x41))).toBeNull();
    const loc = new URL('http://198.51.100.1:5000/rootDesc.xml');
    expect(findWanIpServices(description('/ctl/IPConn'), loc)).toEqual([{ host: '198.51.100.1', controlUrl: 'http://198.51.100.1:5000/ctl/IPConn', serviceType: WANIP2 }]);
    expect(findWanIpServices(description('https://198.51.100.1/ctl'), loc)).toEqual([]);
    expect(findWanIpServices('<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/a&amp;b</controlURL></service>', loc)[0].controlUrl).toBe('http://198.51.100.1:5000/a&b');
  });
});
