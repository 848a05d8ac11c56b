#!/usr/bin/env node
// Records known-answer vectors from a live handshake with wireguard-go, for test/wireguard/kat.test.ts.
//
// Inside a network namespace it creates, this script runs wireguard-go (peer "W") whose
// endpoint for us (peer "A") is a UDP socket on the namespace's loopback. With fixed ephemeral
// keys, timestamps and indices on our side, every message we produce is deterministic, so the
// unit test can rebuild them byte for byte and decrypt what wireguard-go sent back.
//
//   sudo node scripts/gen-wg-vectors.mjs > test/wireguard/wg-vectors.json   (after npm run build)
import { execFileSync, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalIdentity, Handshake, consumeInitiation, createResponse, createInitiation, consumeResponse, deriveSessionKeys } from '../dist/wireguard/noise.js';
import { CookieGenerator } from '../dist/wireguard/cookie.js';
import { open, seal, writeNonce } from '../dist/crypto/aead.js';
import { publicKeyOf } from '../dist/crypto/x25519.js';

const ns = `avkat${process.pid}`;
const hex = (b) => Buffer.from(b).toString('hex');
const key = (byte) => { const k = new Uint8Array(32).fill(byte); k[0] &= 248; k[31] = (k[31] & 127) | 64; return k; };
const sh = (...argv) => execFileSync(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] }).toString();
const inNs = (...argv) => sh('ip', 'netns', 'exec', ns, ...argv);

if (!process.env.AVKAT_CHILD) {
  // Parent: build the namespace and wireguard-go, then rerun this script inside the namespace.
  const dir = mkdtempSync(join(tmpdir(), 'avkat-'));
  let wg;
  try {
    sh('ip', 'netns', 'add', ns);
    inNs('ip', 'link', 'set', 'lo', 'up');
    wg = spawn('ip', ['netns', 'exec', ns, 'wireguard-go', '-f', 'wgkat'], { stdio: 'ignore' });
    for (let i = 0; i < 50 && !/wgkat/.test(inNs('ip', 'link')); i++) execFileSync('sleep', ['0.1']);
    const out = {};
    for (const psk of [false, true]) {
      writeFileSync(join(dir, 'w.key'), Buffer.from(key(0x11)).toString('base64'));
      writeFileSync(join(dir, 'psk'), Buffer.from(key(0x33)).toString('base64'));
      inNs('wg', 'set', 'wgkat', 'private-key', join(dir, 'w.key'), 'listen-port', '51820',
        'peer', Buffer.from(publicKeyOf(key(0x22))).toString('base64'), 'endpoint', '127.0.0.1:40000',
        'allowed-ips', '100.64.0.2/32', ...(psk ? ['preshared-key', join(dir, 'psk')] : []));
      inNs('ip', 'address', 'replace', '100.64.0.1/24', 'dev', 'wgkat');
      inNs('ip', 'link', 'set', 'wgkat', 'up');
      const child = execFileSync('ip', ['netns', 'exec', ns, process.execPath, process.argv[1]], {
        env: { ...process.env, AVKAT_CHILD: '1', AVKAT_PSK: psk ? '1' : '' }, stdio: ['ignore', 'pipe', 'inherit'], timeout: 60_000,
      });
      out[psk ? 'withPsk' : 'withoutPsk'] = JSON.parse(child.toString());
      inNs('wg', 'set', 'wgkat', 'peer', Buffer.from(publicKeyOf(key(0x22))).toString('base64'), 'remove');
    }
    process.stdout.write(JSON.stringify({ generatedBy: 'scripts/gen-wg-vectors.mjs', wireguardGo: sh('dpkg-query', '-W', '-f', '${Version}', 'wireguard-go'), ...out }, null, 2) + '\n');
  } finally {
    if (wg) wg.kill();
    try { sh('ip', 'netns', 'del', ns); } catch { /* already gone */ }
  }
} else {
  // Child, inside the namespace: play peer A against wireguard-go on 127.0.0.1:51820.
  const psk = process.env.AVKAT_PSK ? key(0x33) : undefined;
  const local = new LocalIdentity(key(0x22));
  const wPub = publicKeyOf(key(0x11));
  const sock = createSocket('udp4');
  await new Promise((r) => sock.bind(40000, '127.0.0.1', r));
  const next = () => new Promise((r) => sock.once('message', (m) => r(m)));
  const send = (m) => new Promise((r) => sock.send(m, 51820, '127.0.0.1', r));
  const ping = () => spawn('ping', ['-c', '1', '-W', '3', '100.64.0.2'], { stdio: 'ignore' });
  const decrypt = (kp, msg) => {
    const nonce = Buffer.alloc(12);
    writeNonce(nonce, Number(msg.readBigUInt64LE(8)));
    const plain = Buffer.alloc(msg.length - 32);
    if (!open(plain, msg.subarray(16), null, nonce, kp.receiveKey)) throw new Error('cannot decrypt wireguard-go transport data');
    return plain;
  };

  // 1. wireguard-go initiates (triggered by a ping); we respond deterministically.
  ping();
  const initiation = await next();
  const hs = new Handshake(local, wPub, psk);
  const consumed = consumeInitiation(local, initiation);
  if (!consumed || !consumed.apply(hs)) throw new Error('wireguard-go initiation rejected');
  const responderEphemeral = key(0x44);
  const response = createResponse(hs, 0x01020304, Uint8Array.from(responderEphemeral));
  new CookieGenerator(wPub).addMacs(response);
  const keys1 = deriveSessionKeys(hs);
  await send(response);
  let transport1;
  do transport1 = await next(); while (transport1[0] !== 4 || transport1.length === 32);
  const plain1 = decrypt(keys1, transport1);

  // 2. We initiate with fixed ephemeral, index and timestamp; wireguard-go responds.
  const hs2 = new Handshake(local, wPub, psk);
  const initiatorEphemeral = key(0x55);
  const timestamp = Buffer.alloc(12);
  timestamp.writeBigUInt64BE(0x400000000000000an + BigInt(Math.floor(Date.now() / 1000)) + 5n, 0);
  const initiation2 = createInitiation(local, hs2, 0x0a0b0c0d, Date.now(), Uint8Array.from(initiatorEphemeral), timestamp);
  new CookieGenerator(wPub).addMacs(initiation2);
  await send(initiation2);
  const response2 = await next();
  if (!consumeResponse(local, hs2, response2)) throw new Error('wireguard-go response rejected');
  const keys2 = deriveSessionKeys(hs2);
  // The responder may only use the new session once the initiator confirms it: send a keepalive.
  const keepalive = Buffer.alloc(32);
  keepalive.writeUInt32LE(4, 0);
  keepalive.writeUInt32LE(keys2.remoteIndex, 4);
  const nonce = Buffer.alloc(12);
  seal(keepalive.subarray(16), new Uint8Array(0), null, nonce, keys2.sendKey);
  await send(keepalive);
  ping();
  let transport2;
  do transport2 = await next(); while (transport2[0] !== 4 || transport2.length === 32 || transport2.readUInt32LE(4) !== 0x0a0b0c0d);
  const plain2 = decrypt(keys2, transport2);
  sock.close();

  process.stdout.write(JSON.stringify({
    ourPrivateKey: hex(key(0x22)), wireguardGoPrivateKey: hex(key(0x11)), presharedKey: psk ? hex(psk) : null,
    responder: { initiation: hex(initiation), ephemeral: hex(responderEphemeral), index: 0x01020304, response: hex(response), transport: hex(transport1), plaintext: hex(plain1) },
    initiator: { ephemeral: hex(initiatorEphemeral), index: 0x0a0b0c0d, timestamp: hex(timestamp), initiation: hex(initiation2), response: hex(response2), keepalive: hex(keepalive), transport: hex(transport2), plaintext: hex(plain2) },
  }));
}
