import { execFile, execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  answerBindingRequest,
  buildBindingRequest,
  crc32,
  isStun,
  newTransactionId,
  parseBindingResponse,
  STUN_MAGIC_COOKIE,
} from '../../src/net/stun.js';
import { makeEndpoint } from '../../src/net/endpoint.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const ascii = (s: string): Buffer => Buffer.from(s, 'latin1');

// ---------------------------------------------------------------------------------------------
// RFC 5769 test vectors, assembled from the RFC's field-by-field description. The password for
// MESSAGE-INTEGRITY (short-term credential, SASLprep'ed = itself) is "VOkJxbRl1RmTxUk/WvJxBt".
// The MESSAGE-INTEGRITY and FINGERPRINT values printed in the RFC are checked against our own
// HMAC-SHA1 / CRC-32 of the assembled bytes, which proves the assembly right.
const PASSWORD = 'VOkJxbRl1RmTxUk/WvJxBt';
const TXID = hex('b7e7a701 bc34d686 fa87dfae');
const COOKIE = hex('2112a442');

function attr(type: number, value: Buffer, pad = 0x20): Buffer {
  const padded = Buffer.alloc((value.length + 3) & ~3, pad);
  value.copy(padded);
  const h = Buffer.alloc(4);
  h.writeUInt16BE(type, 0);
  h.writeUInt16BE(value.length, 2);
  return Buffer.concat([h, padded]);
}

function header(type: number, bodyLen: number, txid = TXID): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt16BE(type, 0);
  h.writeUInt16BE(bodyLen, 2);
  return Buffer.concat([h, COOKIE, txid]);
}

/** A message from attributes; adds MESSAGE-INTEGRITY and/or FINGERPRINT computed per RFC 5389 §15.4/15.5. */
function message(type: number, attrs: Buffer[], opts: { integrity?: boolean; fingerprint?: boolean } = {}): { msg: Buffer; mi?: Buffer; fp?: Buffer } {
  let body = Buffer.concat(attrs);
  let mi: Buffer | undefined;
  let fp: Buffer | undefined;
  if (opts.integrity) {
    const withMi = Buffer.concat([header(type, body.length + 24), body]);
    mi = createHmac('sha1', PASSWORD).update(withMi).digest();
    body = Buffer.concat([body, attr(0x0008, mi)]);
  }
  if (opts.fingerprint) {
    const withFp = Buffer.concat([header(type, body.length + 8), body]);
    fp = Buffer.alloc(4);
    fp.writeUInt32BE((crc32(withFp) ^ 0x5354554e) >>> 0);
    body = Buffer.concat([body, attr(0x8028, fp)]);
  }
  return { msg: Buffer.concat([header(type, body.length), body]), mi, fp };
}

// RFC 5769 §2.1: Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME, MI, FINGERPRINT.
const REQUEST_ATTRS = [
  attr(0x8022, ascii('STUN test client')),
  attr(0x0024, hex('6e0001ff')),
  attr(0x8029, hex('932ff9b151263b36')),
  attr(0x0006, ascii('evtj:h6vY')), // 9 bytes, padded with three spaces in the RFC
];
// §2.2 / §2.3: Binding success responses with SOFTWARE "test vector", XOR-MAPPED-ADDRESS, MI, FINGERPRINT.
const V4_XMA = attr(0x0020, hex('0001 a147 e112a643')); // 192.0.2.1:32853
const V6_XMA = attr(0x0020, hex('0002 a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9')); // [2001:db8:1234:5678:11:2233:4455:6677]:32853
const SOFTWARE_RESPONSE = attr(0x8022, ascii('test vector'));

describe('RFC 5769 test vectors', () => {
  it('sample request: our assembly reproduces the RFC bytes and the server answers it', () => {
    const { msg, mi, fp } = message(0x0001, REQUEST_ATTRS, { integrity: true, fingerprint: true });
    expect(msg.readUInt16BE(2)).toBe(0x58);
    expect(mi!.toString('hex')).toBe('9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2');
    expect(fp!.toString('hex')).toBe('e57a3bcf');
    expect(isStun(msg, 0, msg.length)).toBe(true);
    const src = makeEndpoint(Uint8Array.from([192, 0, 2, 1]), 32853);
    const answer = answerBindingRequest(msg, 0, msg.length, src, 0);
    expect(answer).not.toBeNull();
    const parsed = parseBindingResponse(answer!, 0, answer!.length)!;
    expect(parsed.txid.equals(TXID)).toBe(true);
    expect(Array.from(parsed.address)).toEqual([192, 0, 2, 1]);
    expect(parsed.port).toBe(32853);
    // The XOR-MAPPED-ADDRESS we encode is the RFC's (§2.2) byte for byte.
    expect(answer!.subarray(20, 32).equals(V4_XMA)).toBe(true);
  });

  it('sample IPv4 response, with MESSAGE-INTEGRITY and FINGERPRINT', () => {
    const { msg, mi, fp } = message(0x0101, [SOFTWARE_RESPONSE, V4_XMA], { integrity: true, fingerprint: true });
    expect(msg.readUInt16BE(2)).toBe(0x3c);
    expect(mi!.toString('hex')).toBe('2b91f599fd9e90c38c7489f92af9ba53f06be7d7');
    expect(fp!.toString('hex')).toBe('c07d4c96');
    const r = parseBindingResponse(msg, 0, msg.length)!;
    expect(r).not.toBeNull();
    expect(r.txid.equals(TXID)).toBe(true);
    expect(Array.from(r.address)).toEqual([192, 0, 2, 1]);
    expect(r.port).toBe(32853);
  });

  it('sample IPv6 response, with MESSAGE-INTEGRITY and FINGERPRINT', () => {
    const { msg, mi, fp } = message(0x0101, [SOFTWARE_RESPONSE, V6_XMA], { integrity: true, fingerprint: true });
    expect(msg.readUInt16BE(2)).toBe(0x48);
    expect(mi!.toString('hex')).toBe('a382954e4be67bf11784c97c8292c275bfe3ed41');
    expect(fp!.toString('hex')).toBe('c8fb0b4c');
    const r = parseBindingResponse(msg, 0, msg.length)!;
    expect(r.port).toBe(32853);
    expect(Buffer.from(r.address).toString('hex')).toBe('20010db8123456780011223344556677');
  });

  it('the responses parse with only one of MESSAGE-INTEGRITY / FINGERPRINT, and with neither', () => {
    for (const xma of [V4_XMA, V6_XMA]) {
      for (const opts of [{ integrity: true }, { fingerprint: true }, {}]) {
        const { msg } = message(0x0101, [SOFTWARE_RESPONSE, xma], opts);
        const r = parseBindingResponse(msg, 0, msg.length);
        expect(r?.port, JSON.stringify(opts)).toBe(32853);
        expect(r?.address.length).toBe(xma === V4_XMA ? 4 : 16);
      }
    }
  });

  it('a wrong FINGERPRINT makes the message not STUN', () => {
    const { msg } = message(0x0101, [SOFTWARE_RESPONSE, V4_XMA], { integrity: true, fingerprint: true });
    msg[msg.length - 1]! ^= 1;
    expect(parseBindingResponse(msg, 0, msg.length)).toBeNull();
    const req = message(0x0001, REQUEST_ATTRS, { integrity: true, fingerprint: true }).msg;
    req[30]! ^= 0x40; // inside SOFTWARE: covered by the CRC
    expect(answerBindingRequest(req, 0, req.length, makeEndpoint(Uint8Array.from([192, 0, 2, 1]), 1), 0)).toBeNull();
  });

  it('an address attribute after MESSAGE-INTEGRITY is ignored (RFC 5389 §15.4)', () => {
    const { msg } = message(0x0101, [SOFTWARE_RESPONSE, V4_XMA], { integrity: true });
    const forged = attr(0x0020, hex('0001 0000 00000000'));
    const body = Buffer.concat([msg.subarray(20), forged]);
    const tampered = Buffer.concat([header(0x0101, body.length), body]);
    const r = parseBindingResponse(tampered, 0, tampered.length)!;
    expect(Array.from(r.address)).toEqual([192, 0, 2, 1]);
  });
});

describe('STUN messages', () => {
  const v4src = makeEndpoint(Uint8Array.from([198, 51, 100, 7]), 41641);
  const v6src = makeEndpoint(Buffer.from('20010db8000000000000000000000042', 'hex'), 51820);

  it('buildBindingRequest: header, cookie, txid and a valid FINGERPRINT', () => {
    const txid = newTransactionId();
    const req = buildBindingRequest(txid);
    expect(req.length).toBe(28);
    expect(req.readUInt16BE(0)).toBe(0x0001);
    expect(req.readUInt16BE(2)).toBe(8);
    expect(req.readUInt32BE(4)).toBe(STUN_MAGIC_COOKIE);
    expect(req.subarray(8, 20).equals(txid)).toBe(true);
    expect(req.readUInt16BE(20)).toBe(0x8028);
    expect(req.readUInt32BE(24)).toBe((crc32(req, 0, 20) ^ 0x5354554e) >>> 0);
    expect(isStun(req, 0, req.length)).toBe(true);
    const bare = buildBindingRequest(txid, { fingerprint: false });
    expect(bare.length).toBe(20);
    expect(isStun(bare, 0, 20)).toBe(true);
    expect(() => buildBindingRequest(Buffer.alloc(11))).toThrow(RangeError);
  });

  it('request → answer → parse round trip for IPv4 and IPv6 sources, at an offset', () => {
    for (const src of [v4src, v6src]) {
      const txid = newTransactionId();
      const req = buildBindingRequest(txid);
      const framed = Buffer.concat([randomBytes(7), req, randomBytes(5)]);
      const srcFramed = Buffer.concat([Buffer.alloc(3, 0xee), src]);
      const answer = answerBindingRequest(framed, 7, req.length, srcFramed, 3)!;
      expect(answer).not.toBeNull();
      expect(isStun(answer, 0, answer.length)).toBe(true);
      const framedAnswer = Buffer.concat([Buffer.alloc(2), answer]);
      const r = parseBindingResponse(framedAnswer, 2, answer.length)!;
      expect(r.txid.equals(txid)).toBe(true);
      expect(Buffer.from(makeEndpoint(r.address, r.port)).subarray(0, 18).equals(src.subarray(0, 18))).toBe(true);
    }
  });

  it('answers only Binding requests; parses only Binding success responses', () => {
    const req = buildBindingRequest(newTransactionId());
    expect(parseBindingResponse(req, 0, req.length)).toBeNull();
    const answer = answerBindingRequest(req, 0, req.length, v4src, 0)!;
    expect(answerBindingRequest(answer, 0, answer.length, v4src, 0)).toBeNull();
    const indication = Buffer.from(req);
    indication.writeUInt16BE(0x0011, 0); // Binding indication
    expect(answerBindingRequest(indication, 0, 20, v4src, 0)).toBeNull(); // (fingerprint now wrong too)
    const errorResponse = Buffer.from(answer);
    errorResponse.writeUInt16BE(0x0111, 0);
    expect(parseBindingResponse(errorResponse, 0, errorResponse.length)).toBeNull();
    // A source endpoint that does not fit is refused, not read out of bounds.
    expect(answerBindingRequest(req, 0, req.length, Buffer.alloc(10), 0)).toBeNull();
  });

  it('falls back to MAPPED-ADDRESS, and prefers XOR-MAPPED-ADDRESS when both are present', () => {
    const mapped = attr(0x0001, hex('0001 1f90 cb007105')); // 203.0.113.5:8080
    const only = message(0x0101, [mapped]).msg;
    const r = parseBindingResponse(only, 0, only.length)!;
    expect(Array.from(r.address)).toEqual([203, 0, 113, 5]);
    expect(r.port).toBe(8080);
    const both = message(0x0101, [mapped, V4_XMA]).msg;
    expect(Array.from(parseBindingResponse(both, 0, both.length)!.address)).toEqual([192, 0, 2, 1]);
    const none = message(0x0101, [SOFTWARE_RESPONSE]).msg;
    expect(parseBindingResponse(none, 0, none.length)).toBeNull();
    const badFamily = message(0x0101, [attr(0x0020, hex('0003 a147 e112a643'))]).msg;
    expect(parseBindingResponse(badFamily, 0, badFamily.length)).toBeNull();
    const shortV6 = message(0x0101, [attr(0x0020, hex('0002 a147 e112a643'))]).msg;
    expect(parseBindingResponse(shortV6, 0, shortV6.length)).toBeNull();
  });

  it('isStun tells STUN from WireGuard, disco, relay frames and garbage', () => {
    const req = buildBindingRequest(newTransactionId());
    expect(isStun(req, 0, req.length)).toBe(true);
    expect(isStun(req, 0, req.length - 4)).toBe(false); // length field disagrees with the datagram
    expect(isStun(req, 0, 19)).toBe(false);
    expect(isStun(req, 1, req.length)).toBe(false); // out of bounds
    expect(isStun(req, -1, 20)).toBe(false);
    const wgInit = Buffer.alloc(148);
    wgInit.writeUInt32LE(1, 0);
    wgInit.writeUInt16BE(128, 2); // even a plausible-looking length does not help without the cookie
    expect(isStun(wgInit, 0, 148)).toBe(false);
    for (const type of [1, 2, 3, 4]) {
      const wg = Buffer.alloc(32);
      wg.writeUInt32LE(type, 0);
      expect(isStun(wg, 0, 32)).toBe(false);
    }
    for (const first of [0xa0, 0xaf, 0xb0, 0xbf]) {
      const f = Buffer.from(req);
      f[0] = first;
      expect(isStun(f, 0, f.length)).toBe(false);
    }
    const oddLen = Buffer.concat([header(0x0001, 6), Buffer.alloc(6)]);
    expect(isStun(oddLen, 0, oddLen.length)).toBe(false);
  });

  it('answers classic RFC 3489 requests (no magic cookie) with MAPPED-ADDRESS', () => {
    const classic = Buffer.concat([hex('0001 0008'), randomBytes(16), hex('0003 0004 00000000')]);
    classic.writeUInt32BE(0x01020304, 4); // not the cookie
    expect(isStun(classic, 0, classic.length)).toBe(false);
    const answer = answerBindingRequest(classic, 0, classic.length, v4src, 0)!;
    expect(answer.readUInt16BE(0)).toBe(0x0101);
    expect(answer.subarray(4, 20).equals(classic.subarray(4, 20))).toBe(true);
    expect(answer.readUInt16BE(20)).toBe(0x0001);
    expect(Array.from(answer.subarray(28, 32))).toEqual([198, 51, 100, 7]);
    expect(answer.readUInt16BE(26)).toBe(41641);
    expect(answerBindingRequest(classic, 0, classic.length, v6src, 0)).toBeNull(); // RFC 3489 is IPv4-only
  });
});

describe('fuzz: garbage never throws and never yields nonsense', () => {
  const src = makeEndpoint(Uint8Array.from([203, 0, 113, 9]), 4242);

  function check(buf: Buffer, off: number, len: number): void {
    const stun = isStun(buf, off, len);
    const parsed = parseBindingResponse(buf, off, len);
    if (parsed) {
      expect(stun).toBe(true);
      expect([4, 16]).toContain(parsed.address.length);
      expect(parsed.port).toBeGreaterThanOrEqual(0);
      expect(parsed.port).toBeLessThanOrEqual(65535);
      expect(parsed.txid.length).toBe(12);
    }
    const answer = answerBindingRequest(buf, off, len, src, 0);
    if (answer && isStun(answer, 0, answer.length)) {
      const back = parseBindingResponse(answer, 0, answer.length)!;
      expect(Array.from(back.address)).toEqual([203, 0, 113, 9]);
      expect(back.port).toBe(4242);
    } else if (answer) {
      expect(answer.readUInt16BE(0)).toBe(0x0101); // the classic form
    }
  }

  it('random buffers', () => {
    for (let i = 0; i < 20_000; i++) {
      const len = i % 97;
      const buf = randomBytes(len + 4);
      if (i % 3 === 0 && len >= 20) {
        // Make it look like STUN often enough to reach the attribute walker.
        buf[0] = i % 2;
        buf[1] = 1;
        buf.writeUInt16BE(len - 20, 2);
        buf.writeUInt32BE(STUN_MAGIC_COOKIE, 4);
      }
      check(buf, 2, Math.min(len, buf.length - 2));
    }
  });

  it('mutations of valid messages (bit flips, truncation, bad lengths)', () => {
    const seeds = [
      buildBindingRequest(newTransactionId()),
      answerBindingRequest(buildBindingRequest(newTransactionId()), 0, 28, src, 0)!,
      message(0x0101, [SOFTWARE_RESPONSE, V6_XMA], { integrity: true, fingerprint: true }).msg,
      message(0x0001, REQUEST_ATTRS, { integrity: true, fingerprint: true }).msg,
    ];
    for (let i = 0; i < 20_000; i++) {
      const seed = seeds[i % seeds.length]!;
      const m = Buffer.from(seed);
      const flips = 1 + (i % 4);
      for (let f = 0; f < flips; f++) m[Math.floor(Math.random() * m.length)]! ^= 1 << Math.floor(Math.random() * 8);
      if (i % 5 === 0) m.writeUInt16BE(Math.floor(Math.random() * 0x10000) & ~3, 2);
      if (i % 7 === 0) {
        // attribute length fields pointing past the end
        const at = 20 + 4 * Math.floor(Math.random() * ((m.length - 20) / 4));
        if (at + 4 <= m.length) m.writeUInt16BE(Math.floor(Math.random() * 0x10000), at + 2);
      }
      const len = i % 11 === 0 ? Math.floor(Math.random() * m.length) : m.length;
      check(m, 0, len);
    }
  });
});

// Interop with a STUN client we did not write: `stun` from Debian's stun-client (an RFC 3489
// client: it runs the classic NAT-type tests, so this also exercises the classic path).
function hasStunClient(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v stun'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('interop: stun-client against our server on loopback', () => {
  const available = hasStunClient();
  if (!available && process.env.CI) {
    it('stun-client is installed', () => {
      throw new Error('the `stun` command (Debian package stun-client) is missing: run scripts/install-deps.sh');
    });
    return;
  }
  let server: Socket;
  let port = 0;
  let answered = 0;

  beforeAll(async () => {
    if (!available) return;
    server = createSocket('udp4');
    server.on('message', (msg, rinfo) => {
      const ep = makeEndpoint(Uint8Array.from(rinfo.address.split('.').map(Number)), rinfo.port);
      const answer = answerBindingRequest(msg, 0, msg.length, ep, 0);
      if (answer) {
        answered++;
        server.send(answer, rinfo.port, rinfo.address);
      }
    });
    await new Promise<void>((r) => server.bind(0, '127.0.0.1', r));
    port = server.address().port;
  });
  afterAll(() => server?.close());

  it.skipIf(!available)('the client learns its mapped address from us', async () => {
    // The client binds srcPort and srcPort+1: find a pair that is free right now.
    let srcPort = 0;
    for (let tries = 0; tries < 50 && srcPort === 0; tries++) {
      const candidate = 40000 + Math.floor(Math.random() * 10000) * 2;
      const probes = [createSocket('udp4'), createSocket('udp4')];
      const ok = await Promise.all(probes.map((p, i) => new Promise<boolean>((resolve) => {
        p.once('error', () => resolve(false));
        p.bind(candidate + i, () => resolve(true));
      })));
      for (const p of probes) {
        try {
          p.close();
        } catch {
          // a failed bind leaves nothing to close
        }
      }
      if (ok.every(Boolean)) srcPort = candidate;
    }
    expect(srcPort).not.toBe(0);
    const out = await new Promise<string>((resolve, reject) => {
      execFile('stun', [`127.0.0.1:${port}`, '-v', '-p', String(srcPort)], { timeout: 30_000 }, (err, stdout, stderr) => {
        // Its exit status encodes the NAT type, not success: judge by the output.
        if (err && err.killed) reject(new Error(`stun timed out:\n${stdout}${stderr}`));
        else resolve(stdout + stderr);
      });
    });
    expect(answered).toBeGreaterThan(0);
    expect(out).toContain(`MappedAddress = 127.0.0.1:${srcPort}`);
    expect(out).toMatch(/test I = 1/);
  });
});
