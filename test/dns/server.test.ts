import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { createSocket } from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import { connect } from 'node:net';
import { DnsServer, type NameAnswer } from '../../src/dns/server.js';
import { AgentVpnError } from '../../src/errors.js';

const A = 1, SOA = 6, AAAA = 28, OPT = 41, ANY = 255;

const FLEET: Record<string, NameAnswer> = {
  planner: { ipv4: '100.64.0.7', ipv6: 'fd12:3456:789a::7' },
  worker: { ipv4: '100.64.0.8' },
  sixonly: { ipv6: 'fd12:3456:789a::9' },
};

const u16 = (v: number) => [v >> 8, v & 0xff];

function query(name: string, type: number, o: { id?: number; flags?: number; opt?: number[] } = {}): Buffer {
  const labels = name.split('.').filter(Boolean).flatMap((l) => [l.length, ...Buffer.from(l)]);
  const header = [...u16(o.id ?? 0xbeef), ...u16(o.flags ?? 0x0100), 0, 1, 0, 0, 0, 0, ...u16(o.opt ? 1 : 0)];
  return Buffer.from([...header, ...labels, 0, ...u16(type), 0, 1, ...(o.opt ?? [])]);
}

/** A minimal independent decoder for what the server sends back. */
interface Decoded {
  id: number; qr: boolean; aa: boolean; rd: boolean; ra: boolean; rcode: number;
  question: { name: string; type: number } | null;
  answers: { name: string; type: number; ttl: number; data: Buffer }[];
  authority: { name: string; type: number; ttl: number; data: Buffer }[];
  additional: { name: string; type: number; ttl: number; data: Buffer }[];
}

function decode(b: Buffer): Decoded {
  let off = 12;
  const name = (): string => {
    const labels: string[] = [];
    let pos = off, jumped = false;
    for (let hops = 0; hops < 20; hops++) {
      const len = b[pos];
      if (len === 0) { if (!jumped) off = pos + 1; return labels.join('.'); }
      if (len >= 0xc0) { if (!jumped) off = pos + 2; jumped = true; pos = ((len & 0x3f) << 8) | b[pos + 1]; continue; }
      labels.push(b.subarray(pos + 1, pos + 1 + len).toString('latin1'));
      pos += 1 + len;
    }
    throw new Error('loop in response');
  };
  const rr = () => {
    const n = name();
    const type = b.readUInt16BE(off), ttl = b.readUInt32BE(off + 4), len = b.readUInt16BE(off + 8);
    const data = b.subarray(off + 10, off + 10 + len);
    off += 10 + len;
    return { name: n, type, ttl, data };
  };
  const flags = b.readUInt16BE(2);
  const [qd, an, ns, ar] = [4, 6, 8, 10].map((o) => b.readUInt16BE(o));
  let question = null;
  if (qd === 1) { question = { name: name(), type: b.readUInt16BE(off) }; off += 4; }
  const out: Decoded = {
    id: b.readUInt16BE(0), qr: !!(flags & 0x8000), aa: !!(flags & 0x400), rd: !!(flags & 0x100), ra: !!(flags & 0x80),
    rcode: flags & 0xf, question,
    answers: Array.from({ length: an }, rr), authority: Array.from({ length: ns }, rr), additional: Array.from({ length: ar }, rr),
  };
  expect(off).toBe(b.length);
  return out;
}

/** Send one datagram; resolve with the reply, or null if none comes within `ms`. */
function udpAsk(host: string, port: number, packet: Buffer, ms = 1000): Promise<Buffer | null> {
  const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  return new Promise((resolve) => {
    const timer = setTimeout(() => { s.close(); resolve(null); }, ms);
    s.on('message', (m) => { clearTimeout(timer); s.close(); resolve(m); });
    s.send(packet, port, host);
  });
}

async function ask(host: string, port: number, packet: Buffer): Promise<Decoded> {
  const reply = await udpAsk(host, port, packet);
  expect(reply).not.toBeNull();
  expect(reply!.length).toBeLessThan(512);
  return decode(reply!);
}

/** Send `chunks` over one TCP connection; collect length-prefixed replies until `count` or close. */
function tcpAsk(host: string, port: number, chunks: Buffer[], count: number): Promise<{ replies: Buffer[]; closed: boolean }> {
  return new Promise((resolve, reject) => {
    const c = connect({ host, port });
    let buf = Buffer.alloc(0);
    const replies: Buffer[] = [];
    const timer = setTimeout(() => { c.destroy(); reject(new Error('tcp timeout')); }, 3000);
    c.on('connect', async () => {
      for (const chunk of chunks) {
        c.write(chunk);
        await new Promise((r) => setTimeout(r, 20));
      }
    });
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        replies.push(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        buf = buf.subarray(2 + buf.readUInt16BE(0));
      }
      if (replies.length === count) { clearTimeout(timer); c.end(); resolve({ replies, closed: false }); }
    });
    c.on('close', () => { clearTimeout(timer); resolve({ replies, closed: true }); });
    c.on('error', () => {});
  });
}

const framed = (m: Buffer) => Buffer.concat([Buffer.from(u16(m.length)), m]);

function hasDig(): boolean {
  try { execFileSync('dig', ['-v'], { stdio: 'ignore' }); return true; } catch { return false; }
}

describe('DnsServer', () => {
  let server: DnsServer;
  let port: number;
  let throwOn: string | null = null;
  const resolver = (host = '127.0.0.1') => {
    const r = new Resolver({ timeout: 2000, tries: 1 });
    r.setServers([host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`]);
    return r;
  };

  beforeAll(async () => {
    server = new DnsServer({
      bind: ['127.0.0.1', '::1'],
      port: 0,
      zone: 'prod',
      lookup: (name) => {
        if (name === throwOn) throw new Error('fleet view broken');
        return FLEET[name] ?? null;
      },
    });
    await server.start();
    port = server.port;
    expect(port).toBeGreaterThan(1023);
  });
  afterAll(() => server.stop());

  it('answers A and AAAA through node\'s resolver, on IPv4 and IPv6 loopback', async () => {
    for (const host of ['127.0.0.1', '::1']) {
      const r = resolver(host);
      expect(await r.resolve4('planner.prod')).toEqual(['100.64.0.7']);
      expect(await r.resolve6('planner.prod')).toEqual(['fd12:3456:789a::7']);
      expect(await r.resolve4('worker.prod', { ttl: true })).toEqual([{ address: '100.64.0.8', ttl: 5 }]);
    }
  });

  it('is case-insensitive and accepts a trailing dot', async () => {
    const r = resolver();
    expect(await r.resolve4('PLANNER.Prod')).toEqual(['100.64.0.7']);
    expect(await r.resolve6('planner.prod.')).toEqual(['fd12:3456:789a::7']);
  });

  it('says NXDOMAIN for unknown names, NODATA for a missing family, REFUSED outside the zone', async () => {
    const r = resolver();
    await expect(r.resolve4('ghost.prod.')).rejects.toMatchObject({ code: 'ENOTFOUND' });
    await expect(r.resolve6('worker.prod.')).rejects.toMatchObject({ code: 'ENODATA' });
    await expect(r.resolve4('sixonly.prod.')).rejects.toMatchObject({ code: 'ENODATA' });
    await expect(r.resolve4('example.com.')).rejects.toMatchObject({ code: 'EREFUSED' });
    await expect(r.resolve4('planner.staging.')).rejects.toMatchObject({ code: 'EREFUSED' });
  });

  it('sets QR and AA, echoes ID, RD and the question as asked', async () => {
    const m = await ask('127.0.0.1', port, query('PlAnNeR.pRoD', A, { id: 0x4242, flags: 0x0100 }));
    expect(m).toMatchObject({ id: 0x4242, qr: true, aa: true, rd: true, ra: false, rcode: 0 });
    expect(m.question).toEqual({ name: 'PlAnNeR.pRoD', type: A });
    expect(m.answers).toHaveLength(1);
    expect(m.answers[0]).toMatchObject({ name: 'PlAnNeR.pRoD', type: A, ttl: 5 });
    expect([...m.answers[0].data]).toEqual([100, 64, 0, 7]);
    const noRd = await ask('::1', port, query('planner.prod', AAAA, { id: 7, flags: 0 }));
    expect(noRd).toMatchObject({ id: 7, rd: false, aa: true });
    expect(noRd.answers[0].data.toString('hex')).toBe('fd123456789a00000000000000000007');
  });

  it('puts the zone SOA in authority for NXDOMAIN and NODATA', async () => {
    const nx = await ask('127.0.0.1', port, query('ghost.prod', A));
    expect(nx).toMatchObject({ rcode: 3, aa: true, answers: [] });
    expect(nx.authority).toHaveLength(1);
    expect(nx.authority[0]).toMatchObject({ name: 'prod', type: SOA, ttl: 5 });
    expect(nx.authority[0].data.readUInt32BE(nx.authority[0].data.length - 4)).toBe(5); // minimum = ttl
    for (const [name, type] of [['worker.prod', AAAA], ['planner.prod', ANY], ['planner.prod', SOA], ['prod', A]] as const) {
      const m = await ask('127.0.0.1', port, query(name, type));
      expect(m, `${name} ${type}`).toMatchObject({ rcode: 0, aa: true, answers: [] });
      expect(m.authority.map((r) => r.type), `${name} ${type}`).toEqual([SOA]);
    }
    // Below an agent's name, and odd labels, nothing exists.
    expect((await ask('127.0.0.1', port, query('x.planner.prod', A))).rcode).toBe(3);
    expect((await ask('127.0.0.1', port, query('plan_ner.prod', A))).rcode).toBe(3);
  });

  it('answers the SOA at the zone apex', async () => {
    const m = await ask('127.0.0.1', port, query('PROD', SOA));
    expect(m).toMatchObject({ rcode: 0, aa: true });
    expect(m.answers.map((r) => [r.name, r.type])).toEqual([['PROD', SOA]]);
  });

  it('refuses without authority outside the zone, for other classes and opcodes', async () => {
    const out = await ask('127.0.0.1', port, query('google.com', A));
    expect(out).toMatchObject({ rcode: 5, aa: false, answers: [], authority: [] });
    const chaos = query('planner.prod', A);
    chaos[chaos.length - 1] = 3; // class CH
    expect((await ask('127.0.0.1', port, chaos)).rcode).toBe(5);
    const status = await ask('127.0.0.1', port, query('planner.prod', A, { flags: 2 << 11 }));
    expect(status.rcode).toBe(4); // NOTIMP
  });

  it('answers EDNS0 queries with a minimal OPT, and BADVERS for an unknown EDNS version', async () => {
    const opt = (version: number) => [0, ...u16(OPT), ...u16(4096), 0, version, 0x80, 0, 0, 0];
    const m = await ask('127.0.0.1', port, query('planner.prod', A, { opt: opt(0) }));
    expect(m.rcode).toBe(0);
    expect(m.answers).toHaveLength(1);
    expect(m.additional.map((r) => [r.name, r.type])).toEqual([['', OPT]]);
    const bad = await ask('127.0.0.1', port, query('planner.prod', A, { opt: opt(1) }));
    expect(bad.rcode).toBe(0);
    expect(bad.additional[0].ttl >>> 24).toBe(1); // extended rcode 16 = BADVERS
  });

  it('counts malformed packets, answers FORMERR when it can, and keeps answering', async () => {
    const before = { ...server.stats };
    expect(await udpAsk('127.0.0.1', port, Buffer.from('hello'), 300)).toBeNull(); // short: dropped
    expect(await udpAsk('127.0.0.1', port, Buffer.alloc(0), 300)).toBeNull();
    const asResponse = query('planner.prod', A, { flags: 0x8000 });
    expect(await udpAsk('127.0.0.1', port, asResponse, 300)).toBeNull(); // a response: dropped
    const garbage = [
      query('planner.prod', A, { id: 0x1234 }).subarray(0, 17), // truncated
      Buffer.from([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]), // compression loop
      Buffer.from([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f, 0x61]), // label past the end
      Buffer.from([0x12, 0x34, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0]), // qdcount 2, nothing else
    ];
    for (const g of garbage) {
      const m = await ask('127.0.0.1', port, g);
      expect(m).toMatchObject({ id: 0x1234, qr: true, rcode: 1, answers: [] });
    }
    let seed = 99;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) & 0xff;
    const client = createSocket('udp4');
    for (let i = 0; i < 300; i++) {
      client.send(Buffer.from(Array.from({ length: 1 + (rand() % 64) }, rand)), port, '127.0.0.1');
      // Let the server read: a burst larger than the socket's receive buffer would be dropped by the kernel.
      if (i % 50 === 49) await new Promise((r) => setTimeout(r, 10));
    }
    // Wait for them all (loopback UDP does not lose 300 small datagrams, but give it time).
    for (let i = 0; i < 40 && server.stats.queries - before.queries < 7 + 300; i++) await new Promise((r) => setTimeout(r, 50));
    client.close();
    expect(server.stats.queries - before.queries).toBe(7 + 300);
    expect(server.stats.malformed - before.malformed).toBeGreaterThanOrEqual(7);
    // Every message ends in exactly one outcome.
    const { queries, ...outcomes } = server.stats;
    expect(Object.values(outcomes).reduce((a, b) => a + b, 0)).toBe(queries);
    expect(await resolver().resolve4('planner.prod')).toEqual(['100.64.0.7']);
  });

  it('answers SERVFAIL when the lookup throws, and recovers', async () => {
    throwOn = 'planner';
    try {
      expect((await ask('127.0.0.1', port, query('planner.prod', A))).rcode).toBe(2);
    } finally {
      throwOn = null;
    }
    expect(server.stats.servfail).toBeGreaterThanOrEqual(1);
    expect((await ask('127.0.0.1', port, query('planner.prod', A))).rcode).toBe(0);
  });

  it('answers over TCP, pipelined and split across segments, on both families', async () => {
    for (const host of ['127.0.0.1', '::1']) {
      const both = Buffer.concat([framed(query('planner.prod', A, { id: 1 })), framed(query('worker.prod', A, { id: 2 }))]);
      const { replies } = await tcpAsk(host, port, [both.subarray(0, 1), both.subarray(1, 30), both.subarray(30)], 2);
      const [a, b] = replies.map(decode);
      expect(a).toMatchObject({ id: 1, rcode: 0 });
      expect([...a.answers[0].data]).toEqual([100, 64, 0, 7]);
      expect(b).toMatchObject({ id: 2, rcode: 0 });
      expect([...b.answers[0].data]).toEqual([100, 64, 0, 8]);
    }
  });

  it('closes a TCP connection that sends an unreadable message', async () => {
    const { replies, closed } = await tcpAsk('127.0.0.1', port, [framed(Buffer.from('junk'))], 1);
    expect(replies).toHaveLength(0);
    expect(closed).toBe(true);
    expect(await resolver().resolve4('planner.prod')).toEqual(['100.64.0.7']);
  });

  it.skipIf(!hasDig())('answers dig', async () => {
    // Asynchronously: the server runs on this test's event loop, which execFileSync would block.
    const { stdout } = await promisify(execFile)('dig', ['@127.0.0.1', '-p', String(port), '+short', 'planner.prod', 'A'], { encoding: 'utf8' });
    expect(stdout.trim()).toBe('100.64.0.7');
  });

  it('reports a port already in use as DNS_BIND, leaving nothing bound', async () => {
    const other = new DnsServer({ bind: ['127.0.0.1'], port, zone: 'prod', lookup: () => null });
    const err = await other.start().then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(AgentVpnError);
    expect(err).toMatchObject({ code: 'DNS_BIND' });
    await other.stop();
  });

  it('rejects bad options with DNS_CONFIG', () => {
    const lookup = () => null;
    for (const opts of [
      { bind: ['127.0.0.1'], zone: '', lookup },
      { bind: ['127.0.0.1'], zone: 'a..b', lookup },
      { bind: ['localhost'], zone: 'prod', lookup },
      { bind: [], zone: 'prod', lookup },
      { bind: ['127.0.0.1'], zone: 'prod', port: 70000, lookup },
    ]) {
      expect(() => new DnsServer(opts)).toThrow(expect.objectContaining({ code: 'DNS_CONFIG' }));
    }
  });

  it('stops cleanly and can start again', async () => {
    const s = new DnsServer({ bind: ['127.0.0.1'], port: 0, zone: 'Prod.', lookup: (n) => FLEET[n] ?? null });
    await s.start();
    const p = s.port;
    expect(decode((await udpAsk('127.0.0.1', p, query('planner.prod', A)))!).rcode).toBe(0);
    await s.stop();
    await s.stop();
    expect(await udpAsk('127.0.0.1', p, query('planner.prod', A), 300)).toBeNull();
    await s.start();
    expect(decode((await udpAsk('127.0.0.1', s.port, query('planner.prod', A)))!).rcode).toBe(0);
    await s.stop();
  });
});
