import dgram from 'node:dgram';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentVpnError } from '../src/errors.js';
import { parseAddress } from '../src/ip/prefix.js';
import { ADDR_SIZE, native, type ReaderHandle } from '../src/tun/native.js';
import { createNetns, deleteNetns, labGate, runInNetns } from './fixtures/netns.js';

/** The addon's endpoint encoding; IPv4 becomes ::ffff:a.b.c.d. */
function endpoint(ip: string, port: number): Buffer {
  const a = parseAddress(ip)!;
  const out = Buffer.alloc(ADDR_SIZE);
  if (a.length === 4) {
    out[10] = out[11] = 0xff;
    out.set(a, 12);
  } else out.set(a);
  out.writeUInt16BE(port, 16);
  return out;
}

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  for (const end = Date.now() + ms; !cond(); ) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A batch of `count` payloads laid out in one slab, all to `to`. */
function batch(payloads: string[], to: Buffer) {
  const slab = Buffer.alloc(payloads.length * 64);
  const offsets = new Int32Array(payloads.length);
  const lens = new Int32Array(payloads.length);
  const addrs = Buffer.alloc(payloads.length * ADDR_SIZE);
  payloads.forEach((p, i) => {
    offsets[i] = i * 64;
    lens[i] = slab.write(p, i * 64);
    to.copy(addrs, i * ADDR_SIZE);
  });
  return { slab, offsets, lens, addrs, count: payloads.length };
}

interface Received {
  data: string;
  from: string;
  port: number;
}

/** A UDP socket from udpOpen with a reader that copies every datagram out. */
function receiver(maxPackets = 16, opts: { throwFirst?: boolean } = {}) {
  const SLOT = 2048;
  const sock = native.udpOpen(0, 1 << 20);
  const slab = Buffer.alloc(SLOT * maxPackets);
  const lens = new Int32Array(maxPackets);
  const addrs = Buffer.alloc(ADDR_SIZE * maxPackets);
  const got: Received[] = [];
  const batches: number[] = [];
  const errors: Error[] = [];
  let throwNext = opts.throwFirst ?? false;
  const handle = native.startReader(sock.fd, 'udp', slab, SLOT, maxPackets, lens, addrs, (n) => {
    batches.push(n);
    for (let i = 0; i < n; i++) {
      const a = addrs.subarray(i * ADDR_SIZE, (i + 1) * ADDR_SIZE);
      got.push({ data: slab.toString('utf8', i * SLOT, i * SLOT + lens[i]), from: a.subarray(0, 16).toString('hex'), port: a.readUInt16BE(16) });
      if (a.readUInt16BE(18) !== 0) errors.push(new Error('address padding is not zero'));
    }
    if (throwNext) {
      throwNext = false;
      throw new Error('boom from onBatch');
    }
  }, (e) => errors.push(e));
  return { ...sock, handle, got, batches, errors };
}

const MAPPED_LOOPBACK = '00000000000000000000ffff7f000001';
const V6_LOOPBACK = '00000000000000000000000000000001';

describe('UDP sockets on loopback', () => {
  const fds: number[] = [];
  const handles: ReaderHandle[] = [];
  const track = <T extends { fd: number; handle?: ReaderHandle }>(s: T): T => {
    fds.push(s.fd);
    if (s.handle) handles.push(s.handle);
    return s;
  };
  afterEach(() => {
    handles.splice(0).forEach((h) => native.stopReader(h));
    fds.splice(0).forEach((fd) => native.closeFd(fd));
  });

  it('udpOpen binds a port; a taken port is UDP_PORT_IN_USE naming the port', () => {
    const a = track(native.udpOpen(0, 4 << 20));
    expect(a.port).toBeGreaterThan(0);
    expect(a.fd).toBeGreaterThan(2);
    let err: unknown;
    try {
      native.udpOpen(a.port, 0);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentVpnError);
    expect(err).toMatchObject({ code: 'UDP_PORT_IN_USE' });
    expect((err as AgentVpnError).message).toContain(String(a.port));
    expect((err as AgentVpnError).hint).toMatch(/ListenPort/);
    expect((err as AgentVpnError).hint).toMatch(/--listen-port/);
  });

  it('64 datagrams to ::ffff:127.0.0.1 arrive in full batches, in order, with the sender address', async () => {
    const a = track(native.udpOpen(0, 1 << 20));
    const b = track(receiver(16));
    const payloads = Array.from({ length: 64 }, (_, i) => `datagram-${i}`);
    const out = batch(payloads, endpoint('127.0.0.1', b.port));
    expect(native.udpSend(a.fd, out.slab, out.offsets, out.lens, out.addrs, out.count)).toBe(64);
    await until(() => b.got.length >= 64);
    expect(b.got.map((g) => g.data)).toEqual(payloads);
    expect(b.got.every((g) => g.from === MAPPED_LOOPBACK && g.port === a.port)).toBe(true);
    // All 64 were queued before the reader woke: recvmmsg must have returned full rounds.
    expect(b.batches.every((n) => n <= 16)).toBe(true);
    expect(Math.max(...b.batches)).toBe(16);
    expect(b.errors).toEqual([]);
  });

  it('round trip over IPv6 ::1', async () => {
    const a = track(receiver(8));
    const b = track(receiver(8));
    const out = batch(['ping'], endpoint('::1', b.port));
    expect(native.udpSend(a.fd, out.slab, out.offsets, out.lens, out.addrs, 1)).toBe(1);
    await until(() => b.got.length === 1);
    expect(b.got[0]).toEqual({ data: 'ping', from: V6_LOOPBACK, port: a.port });
    // Answer to the address the reader reported.
    const reply = batch(['pong'], Buffer.concat([Buffer.from(b.got[0].from, 'hex'), Buffer.from([a.port >> 8, a.port & 0xff, 0, 0])]));
    expect(native.udpSend(b.fd, reply.slab, reply.offsets, reply.lens, reply.addrs, 1)).toBe(1);
    await until(() => a.got.length === 1);
    expect(a.got[0]).toEqual({ data: 'pong', from: V6_LOOPBACK, port: b.port });
  });

  it('interoperates with plain IPv4 sockets (v4-mapped on our side)', async () => {
    const ours = track(receiver(8));
    const theirs = dgram.createSocket('udp4');
    const seen: { data: string; address: string; port: number }[] = [];
    theirs.on('message', (m, r) => seen.push({ data: m.toString(), address: r.address, port: r.port }));
    await new Promise<void>((r) => theirs.bind(0, '127.0.0.1', r));
    try {
      const theirPort = theirs.address().port;
      const out = batch(['to-v4-socket'], endpoint('127.0.0.1', theirPort));
      expect(native.udpSend(ours.fd, out.slab, out.offsets, out.lens, out.addrs, 1)).toBe(1);
      await until(() => seen.length === 1);
      expect(seen[0]).toEqual({ data: 'to-v4-socket', address: '127.0.0.1', port: ours.port });
      theirs.send('from-v4-socket', ours.port, '127.0.0.1');
      await until(() => ours.got.length === 1);
      expect(ours.got[0]).toEqual({ data: 'from-v4-socket', from: MAPPED_LOOPBACK, port: theirPort });
    } finally {
      theirs.close();
    }
  });

  it('udpSend skips a datagram the kernel refuses (port 0) and sends the rest', async () => {
    const a = track(native.udpOpen(0, 0));
    const b = track(receiver(8));
    const out = batch(['one', 'refused', 'three'], endpoint('::1', b.port));
    out.addrs.writeUInt16BE(0, ADDR_SIZE + 16); // datagram 1 to port 0: EINVAL
    expect(native.udpSend(a.fd, out.slab, out.offsets, out.lens, out.addrs, 3)).toBe(2);
    await until(() => b.got.length === 2);
    expect(b.got.map((g) => g.data)).toEqual(['one', 'three']);
  });

  it('an exception thrown by onBatch goes to onError and reading goes on', async () => {
    const a = track(native.udpOpen(0, 0));
    const b = track(receiver(4, { throwFirst: true }));
    const send = (p: string) => {
      const out = batch([p], endpoint('::1', b.port));
      native.udpSend(a.fd, out.slab, out.offsets, out.lens, out.addrs, 1);
    };
    send('first');
    await until(() => b.errors.length === 1);
    expect(b.errors[0].message).toBe('boom from onBatch');
    send('second');
    await until(() => b.got.length === 2);
    expect(b.got.map((g) => g.data)).toEqual(['first', 'second']);
  });

  it('without onError, an exception becomes a process warning, not a crash', async () => {
    const a = track(native.udpOpen(0, 0));
    const b = track(native.udpOpen(0, 0));
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    try {
      const h = native.startReader(b.fd, 'udp', Buffer.alloc(256), 256, 1, new Int32Array(1), Buffer.alloc(ADDR_SIZE), () => {
        throw new Error('unhandled in onBatch');
      });
      handles.push(h);
      const out = batch(['x'], endpoint('::1', b.port));
      native.udpSend(a.fd, out.slab, out.offsets, out.lens, out.addrs, 1);
      await until(() => warnings.length > 0);
      expect(warnings[0].message).toBe('unhandled in onBatch');
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('stopReader works from inside onBatch and twice; closeFd stops readers on that fd', async () => {
    const a = track(native.udpOpen(0, 0));
    const b = native.udpOpen(0, 0);
    let calls = 0;
    const h: ReaderHandle = native.startReader(b.fd, 'udp', Buffer.alloc(256 * 4), 256, 4, new Int32Array(4), Buffer.alloc(ADDR_SIZE * 4), () => {
      calls++;
      native.stopReader(h);
      native.stopReader(h);
    });
    const out = batch(Array.from({ length: 40 }, (_, i) => `p${i}`), endpoint('::1', b.port));
    native.udpSend(a.fd, out.slab, out.offsets, out.lens, out.addrs, 40);
    await until(() => calls > 0);
    await new Promise((r) => setTimeout(r, 50));
    expect(calls).toBe(1); // no further rounds after the stop
    native.stopReader(h);

    // closeFd with a reader still running stops it first, so the fd number can be reused and polled.
    const c = native.udpOpen(0, 0);
    native.startReader(c.fd, 'udp', Buffer.alloc(256), 256, 1, new Int32Array(1), Buffer.alloc(ADDR_SIZE), () => {});
    native.closeFd(c.fd);
    native.closeFd(b.fd);
    const d = track(receiver(4));
    const again = batch(['after reuse'], endpoint('::1', d.port));
    native.udpSend(a.fd, again.slab, again.offsets, again.lens, again.addrs, 1);
    await until(() => d.got.length === 1);
  });

  it('rejects bad arguments with TypeError/RangeError, not system errors', () => {
    const s = track(native.udpOpen(0, 0));
    const lens = new Int32Array(4);
    expect(() => native.startReader(s.fd, 'udp', Buffer.alloc(100), 64, 4, lens, Buffer.alloc(80), () => {})).toThrow(RangeError);
    expect(() => native.startReader(s.fd, 'udp', Buffer.alloc(256), 64, 4, lens, null, () => {})).toThrow(TypeError);
    expect(() => native.startReader(s.fd, 'udp', Buffer.alloc(4096), 1, 2000, new Int32Array(2000), Buffer.alloc(40000), () => {})).toThrow(RangeError);
    expect(() => native.startReader(s.fd, 'nope' as 'udp', Buffer.alloc(256), 64, 4, lens, null, () => {})).toThrow(TypeError);
    const slab = Buffer.alloc(16);
    expect(() => native.udpSend(s.fd, slab, new Int32Array([10]), new Int32Array([10]), Buffer.alloc(ADDR_SIZE), 1)).toThrow(RangeError);
    expect(() => native.udpSend(s.fd, slab, new Int32Array([0]), new Int32Array([1]), Buffer.alloc(ADDR_SIZE), 2)).toThrow(RangeError);
    expect(() => native.tunWrite(s.fd, slab, new Int32Array([-1]), new Int32Array([1]), 1)).toThrow(RangeError);
    expect(() => native.tunWrite(s.fd, slab, [0] as unknown as Int32Array, new Int32Array([1]), 1)).toThrow(TypeError);
  });

  it('a name longer than 15 bytes is TUN_BAD_NAME before any device is made', () => {
    expect(() => native.tunOpen('x'.repeat(16))).toThrow(expect.objectContaining({ code: 'TUN_BAD_NAME' }));
  });
});

const lab = labGate();

describe.skipIf(lab.skip)('TUN device in a network namespace', () => {
  let ns = '';
  beforeAll(() => {
    lab.check();
    ns = createNetns('native');
  });
  afterAll(() => {
    if (ns) deleteNetns(ns);
  });

  it('opens by name; a second open of the name is TUN_NAME_TAKEN; a non-TUN name is TUN_BAD_NAME', async () => {
    const r = await runInNetns<Record<string, any>>(ns, 'open');
    expect(r.name).toBe('avn0');
    expect(r.fdIsNumber).toBe(true);
    expect(r.auto).toMatch(/^tun\d+$/);
    expect(r.taken.code).toBe('TUN_NAME_TAKEN');
    expect(r.taken.hint).toBe('another process owns avn0; pick --interface NAME or stop it');
    expect(r.tooLong.code).toBe('TUN_BAD_NAME');
    expect(r.notTun.code).toBe('TUN_BAD_NAME');
    expect(r.links).toEqual(expect.arrayContaining(['avn0', r.auto]));
    expect(r.linksAfterClose).toEqual(['lo']); // closing the fd removes a non-persistent TUN
  });

  it('datagrams routed into the TUN come out of startReader as IPv4/IPv6 packets', async () => {
    const r = await runInNetns<{ errors: string[]; packets: string[] }>(ns, 'read');
    expect(r.errors).toEqual([]);
    const p4 = r.packets.map((h) => Buffer.from(h, 'hex')).find((p) => p[0] >> 4 === 4)!;
    const p6 = r.packets.map((h) => Buffer.from(h, 'hex')).find((p) => p[0] >> 4 === 6)!;
    expect(p4).toBeDefined();
    expect(p4[0]).toBe(0x45); // version 4, 20-byte header
    expect(p4.readUInt16BE(2)).toBe(p4.length);
    expect(p4[9]).toBe(17);
    expect([...p4.subarray(12, 16)]).toEqual([100, 64, 0, 1]);
    expect([...p4.subarray(16, 20)]).toEqual([100, 64, 1, 2]);
    expect(p4.readUInt16BE(20)).toBe(40001);
    expect(p4.readUInt16BE(22)).toBe(9999);
    expect(p4.subarray(28).toString()).toBe('hello-v4');
    expect(p6).toBeDefined();
    expect(p6.readUInt16BE(4)).toBe(p6.length - 40);
    expect(p6[6]).toBe(17);
    expect(Buffer.from(p6.subarray(8, 24))).toEqual(Buffer.from(parseAddress('fd00:a::1')!));
    expect(Buffer.from(p6.subarray(24, 40))).toEqual(Buffer.from(parseAddress('fd00:b::2')!));
    expect(p6.readUInt16BE(40)).toBe(40002);
    expect(p6.subarray(48).toString()).toBe('hello-v6');
  });

  it('tunWrite delivers hand-built UDP and ICMP packets and skips a refused one', async () => {
    const r = await runInNetns<Record<string, any>>(ns, 'write');
    expect(r.errors).toEqual([]);
    expect(r.written).toBe(3); // of 4: the version-0 packet is refused with EINVAL and skipped
    expect(r.v4).toEqual([{ data: 'from-tun-v4', address: '100.64.1.2', port: 7777 }]);
    expect(r.v6).toEqual([{ data: 'from-tun-v6', address: 'fd00:b::2', port: 7778 }]);
    // The kernel answered our echo request; the reply came back out through the reader.
    const reply = Buffer.from(r.echoReplies[0], 'hex');
    expect([...reply.subarray(12, 16)]).toEqual([100, 64, 0, 1]);
    expect([...reply.subarray(16, 20)]).toEqual([100, 64, 1, 2]);
    expect(reply[20]).toBe(0); // echo reply
    expect(reply.readUInt16BE(24)).toBe(0x1234);
    expect(reply.readUInt16BE(26)).toBe(7);
    expect(reply.subarray(28).toString()).toBe('agentvpn-ping');
  });

  it('a reader whose interface is deleted reports one error and stops', async () => {
    const r = await runInNetns<{ errors: string[] }>(ns, 'gone');
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]).toMatch(/^read: /);
  });
});
