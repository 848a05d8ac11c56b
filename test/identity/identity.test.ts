import { describe, it, expect } from 'vitest';
import { copyFileSync, existsSync, mkdtempSync, statSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Identity, hasIdentity, verifySignature } from '../../src/identity/identity.js';
import { verifyKeyChain } from '../../src/identity/rotation.js';
import { agentIdOf, publicKeyOfAgentId } from '../../src/identity/agent-id.js';
import { networkUlaPrefix, overlayIPv6 } from '../../src/identity/addresses.js';
import { publicKeyOf } from '../../src/crypto/x25519.js';
import { formatAddress, formatPrefix } from '../../src/ip/prefix.js';
import { errorCodeOf } from '../fixtures/error-code.js';

describe('identity', () => {
  it('is created once (mode 0600) and reloaded unchanged', () => {
    const dir = mkdtempSync(join(tmpdir(), 'avid-'));
    const a = Identity.loadOrCreate(dir);
    const b = Identity.loadOrCreate(dir);
    expect(b.id).toBe(a.id);
    expect(statSync(join(dir, 'identity.key')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, 'identity.key'), 'utf8').trim()).toHaveLength(44);
  });

  it('derives a WireGuard key pair consistent with X25519', () => {
    const id = Identity.generate();
    expect(Buffer.from(publicKeyOf(id.wgPrivateKey))).toEqual(Buffer.from(id.wgPublicKey));
    expect(Buffer.from(Identity.wgPublicKeyOf(id.publicKey))).toEqual(Buffer.from(id.wgPublicKey));
  });

  it('signs and verifies; a flipped bit or another key fails', () => {
    const id = Identity.generate();
    const msg = Buffer.from('hello');
    const sig = id.sign(msg);
    expect(verifySignature(id.publicKey, msg, sig)).toBe(true);
    expect(verifySignature(id.publicKey, Buffer.from('hellp'), sig)).toBe(false);
    expect(verifySignature(Identity.generate().publicKey, msg, sig)).toBe(false);
    expect(verifySignature(id.publicKey, msg, sig.subarray(1))).toBe(false);
  });

  it('agent IDs round-trip and reject anything else', () => {
    const id = Identity.generate();
    expect(id.id).toMatch(/^av[a-z2-7]{52}$/);
    expect(Buffer.from(publicKeyOfAgentId(id.id)!)).toEqual(Buffer.from(id.publicKey));
    expect(publicKeyOfAgentId(id.id.slice(0, -1))).toBeNull();
    expect(publicKeyOfAgentId(id.id.toUpperCase())).toBeNull();
    expect(publicKeyOfAgentId('av' + '1'.repeat(52))).toBeNull();
    expect(agentIdOf(new Uint8Array(32))).toBe('av' + 'a'.repeat(52));
  });

  it('derives permanent overlay IPv6 addresses inside the network ULA /48', () => {
    const id = Identity.generate();
    const p = networkUlaPrefix('prod');
    expect(formatPrefix(p)).toMatch(/^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}::\/48$/);
    const addr = overlayIPv6('prod', id.publicKey);
    expect(Buffer.from(addr.subarray(0, 6))).toEqual(Buffer.from(p.addr.subarray(0, 6)));
    expect(formatAddress(overlayIPv6('prod', id.publicKey))).toBe(formatAddress(addr));
    expect(formatAddress(overlayIPv6('staging', id.publicKey))).not.toBe(formatAddress(addr));
  });
});

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');
const dirOf = (): string => mkdtempSync(join(tmpdir(), 'avid-'));

const codeOf = errorCodeOf;

describe('key rotation', () => {
  it('moves to the committed next key; ID, addresses and the chain proof follow', () => {
    const a = Identity.generate();
    expect(a.seq).toBe(0);
    expect(b64(a.idKey)).toBe(b64(a.publicKey));
    const b = a.rotate();
    const c = b.rotate();
    for (const r of [b, c]) {
      expect(r.id).toBe(a.id);
      expect(b64(r.idKey)).toBe(b64(a.idKey));
      expect(formatAddress(overlayIPv6('prod', r.idKey))).toBe(formatAddress(overlayIPv6('prod', a.idKey)));
      const check = verifyKeyChain(r.id, [...r.chain]);
      expect(check.ok && b64(check.currentKey)).toBe(b64(r.publicKey));
      expect(Buffer.from(publicKeyOf(r.wgPrivateKey))).toEqual(Buffer.from(r.wgPublicKey));
      expect(verifySignature(r.publicKey, Buffer.from('m'), r.sign(Buffer.from('m')))).toBe(true);
    }
    expect(c.seq).toBe(2);
    expect(new Set([a, b, c].map((i) => b64(i.publicKey))).size).toBe(3);
    // The old identity object signs with the old key still; only the chain says which key is current.
    expect(verifySignature(a.publicKey, Buffer.from('m'), a.sign(Buffer.from('m')))).toBe(true);
  });

  it('is persisted before it is used and survives a reload; the rotated-out key file is removed', () => {
    const dir = dirOf();
    const a = Identity.loadOrCreate(dir);
    expect(statSync(join(dir, 'identity.json')).mode & 0o777).toBe(0o600);
    const b = a.rotate();
    expect(existsSync(join(dir, 'identity.key'))).toBe(false);
    expect(hasIdentity(dir)).toBe(true);
    const again = Identity.loadOrCreate(dir);
    expect(again.id).toBe(a.id);
    expect(again.seq).toBe(1);
    expect(b64(again.publicKey)).toBe(b64(b.publicKey));
    expect(again.chain).toEqual(b.chain);
    const c = again.rotate();
    expect(Identity.loadOrCreate(dir).seq).toBe(2);
    expect(b64(Identity.loadOrCreate(dir).publicKey)).toBe(b64(c.publicKey));
    // A stale object (another process rotated since) cannot rotate again: it would fork the chain.
    expect(codeOf(() => b.rotate())).toBe('IDENTITY_STALE');
  });

  it('a crash at any point leaves a usable identity', () => {
    const dir = dirOf();
    const a = Identity.loadOrCreate(dir);
    copyFileSync(join(dir, 'identity.key'), join(dir, 'identity.key.backup'));
    // Crash while writing the new state: only a temp file exists; the old identity loads.
    writeFileSync(join(dir, `identity.json.tmp-${process.pid}`), '{"v":1,"key":"trunc');
    expect(b64(Identity.loadOrCreate(dir).publicKey)).toBe(b64(a.publicKey));
    // Crash after the new state was renamed in but before identity.key was removed: the new one loads, the old key goes.
    const b = a.rotate();
    copyFileSync(join(dir, 'identity.key.backup'), join(dir, 'identity.key'));
    const loaded = Identity.loadOrCreate(dir);
    expect(b64(loaded.publicKey)).toBe(b64(b.publicKey));
    expect(existsSync(join(dir, 'identity.key'))).toBe(false);
  });

  it('an old state dir (identity.key only) loads unchanged and gets one persisted inception statement', () => {
    const dir = dirOf();
    const seed = new Uint8Array(32).fill(7);
    writeFileSync(join(dir, 'identity.key'), b64(seed) + '\n', { mode: 0o600 });
    const before = new Identity(seed);
    const a = Identity.loadOrCreate(dir);
    expect(a.id).toBe(before.id);
    expect(b64(a.wgPublicKey)).toBe(b64(before.wgPublicKey));
    expect(a.chain).toHaveLength(1);
    // The inception (and its next-key commitment) is made once, not on every load.
    expect(Identity.loadOrCreate(dir).chain).toEqual(a.chain);
    expect(readFileSync(join(dir, 'identity.key'), 'utf8').trim()).toBe(b64(seed));
  });

  it('a corrupt or inconsistent state is a clear error, never a silent new identity', () => {
    const dir = dirOf();
    const a = Identity.loadOrCreate(dir);
    const file = join(dir, 'identity.json');
    const good = readFileSync(file, 'utf8');
    const state = JSON.parse(good) as { key: string; next: string; chain: unknown[] };
    for (const bad of [
      'not json', '{}', JSON.stringify({ ...state, key: state.next }), JSON.stringify({ ...state, next: state.key }),
      JSON.stringify({ ...state, chain: [] }), JSON.stringify({ ...state, key: 'short' }), 'x'.repeat(300_000),
    ]) {
      writeFileSync(file, bad);
      expect(codeOf(() => Identity.loadOrCreate(dir))).toBe('IDENTITY_CORRUPT');
    }
    writeFileSync(file, good);
    writeFileSync(join(dir, 'identity.key'), b64(new Uint8Array(32).fill(9)) + '\n');
    expect(codeOf(() => Identity.loadOrCreate(dir))).toBe('IDENTITY_CORRUPT');
    expect(a.id).toMatch(/^av/);
  });
});

describe('rotation under SIGKILL', () => {
  it('a process killed at random points while rotating always leaves a loadable identity that only moves forward', async () => {
    const { spawn, spawnSync } = await import('node:child_process');
    const root = join(import.meta.dirname, '..', '..');
    const built = join(root, 'dist/identity/identity.js');
    if (!existsSync(built)) spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', root], { stdio: 'ignore' });
    let dir = dirOf();
    let first = Identity.loadOrCreate(dir);
    let seq = 0;
    let rotations = 0;
    const rotator = `const { Identity } = await import(${JSON.stringify(built)});
      let id = Identity.loadOrCreate(process.argv[1]);
      process.stdout.write('ready\\n');
      for (;;) id = id.rotate();`;
    const kills = 12;
    for (let i = 0; i < kills; i++) {
      const child = spawn(process.execPath, ['--input-type=module', '-e', rotator, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
      await new Promise((r) => setTimeout(r, 5 + Math.random() * 40));
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      const loaded = Identity.loadOrCreate(dir);
      expect(loaded.id).toBe(first.id);
      expect(loaded.seq).toBeGreaterThanOrEqual(seq);
      expect(verifyKeyChain(loaded.id, [...loaded.chain]).ok).toBe(true);
      rotations += loaded.seq - seq;
      seq = loaded.seq;
      if (seq >= 40) {
        // Stay well below MAX_CHAIN (the child would stop at KEY_CHAIN_FULL): go on with a fresh identity.
        dir = dirOf();
        first = Identity.loadOrCreate(dir);
        seq = 0;
      }
    }
    console.log(`killed a rotating process ${kills} times (${rotations} rotations done); the identity loaded and verified every time`);
  }, 60_000);
});
