// A standalone relay that follows a registry's membership (`agentvpn relay --registry URL`).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { AdminClient } from '../../src/registry/admin-client.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { EARLY_REFRESH_MS, MEMBER_REFRESH_MS, MemberFeed } from '../../src/relay/member-feed.js';
import { SILENT_LOG } from '../../src/relay/protocol.js';
import { sleep, startAgent, waitState, type TestAgent } from './harness.js';

const BIN = join(import.meta.dirname, '..', '..', 'bin', 'agentvpn.js');

describe('member feed', () => {
  it("allows each network's members, keeps the last list while the registry cannot be read, and says when it changed", async () => {
    const [a, b, c] = [Identity.generate(), Identity.generate(), Identity.generate()];
    let red: Uint8Array[] = [a.publicKey, b.publicKey];
    let redDown = false;
    let changes = 0;
    const feed = new MemberFeed([
      { network: 'red', list: async () => { if (redDown) throw new Error('registry down'); return red; } },
      { network: 'blue', list: async () => [b.publicKey] },
    ], SILENT_LOG, () => changes++);
    expect(feed.hook(a.publicKey)).toBeNull(); // nobody before the first list
    await feed.refresh();
    expect(feed.loaded).toBe(true);
    expect(feed.hook(a.publicKey)).toEqual(['red']);
    expect(feed.hook(b.publicKey)).toEqual(['red', 'blue']);
    expect(feed.hook(c.publicKey)).toBeNull();
    await feed.refresh();
    expect(changes).toBe(1); // the same lists again: no recheck
    redDown = true;
    await feed.refresh();
    expect(feed.hook(a.publicKey)).toEqual(['red']);
    redDown = false;
    red = [b.publicKey];
    await feed.refresh();
    expect(feed.hook(a.publicKey)).toBeNull();
    expect(changes).toBe(2);
  });

  it("a stranger's hello re-reads the lists early (a member that just joined), at most once per EARLY_REFRESH_MS", async () => {
    const a = Identity.generate();
    let reads = 0;
    let members: Uint8Array[] = [];
    const feed = new MemberFeed([{ network: 'red', list: async () => (reads++, members) }], SILENT_LOG);
    await feed.refresh();
    feed.start();
    try {
      members = [a.publicKey]; // a joins after the last read
      for (let i = 0; i < 1000; i++) feed.hook(Identity.generate().publicKey);
      await waitFor(() => feed.hook(a.publicKey) !== null, { timeoutMs: 2_000, intervalMs: 10, what: 'the new member' });
      console.log(`1,000 strangers' hellos: ${reads - 1} early read(s) of the member list`);
      expect(reads).toBe(2);
    } finally {
      feed.stop();
    }
  });
});

describe('agentvpn relay --registry', () => {
  let dir = '';
  let reg: RunningRegistry | null = null;
  let relay: ReturnType<typeof spawn> | null = null;
  const agents: TestAgent[] = [];

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    relay?.kill('SIGTERM');
    relay = null;
    await reg?.stop();
    reg = null;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('only members of its networks may use it, and a removed member loses its session', async () => {
    dir = mkdtempSync(join(tmpdir(), 'avpn-relay-members-'));
    reg = await startRegistry({ db: join(dir, 'r.db'), network: 'lab' });
    const [alice, bob, stranger] = [Identity.generate(), Identity.generate(), Identity.generate()];
    for (const [id, name] of [[alice, 'alice'], [bob, 'bob']] as const) {
      await new RegistryClient({ url: reg.url, identity: id, network: 'lab', timeoutMs: 5000 }).join(name, await reg.createToken());
    }
    const adminToken = await reg.createAdminToken();
    relay = spawn(process.execPath, [BIN, 'relay', '--listen', '127.0.0.1:0', '--registry', reg.url, '--network', 'lab', '--log-level', 'warn', '--json'],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, AGENTVPN_ADMIN_TOKEN: adminToken } });
    let out = '';
    let err = '';
    relay.stdout!.on('data', (d) => (out += d));
    relay.stderr!.on('data', (d) => (err += d));
    await waitFor(() => out.includes('\n'), { timeoutMs: 30_000, what: `relay output (${err})` });
    const started = JSON.parse(out) as { udp: string; allowKeys: number; registry: string };
    expect(started).toMatchObject({ allowKeys: 2, registry: reg.url, networks: ['lab'] });

    const a = await startAgent({ udp: started.udp }, { identity: alice });
    const b = await startAgent({ udp: started.udp }, { identity: bob });
    const s = await startAgent({ udp: started.udp }, { identity: stranger, udpTimeoutMs: 1000 });
    agents.push(a, b, s);
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    await sleep(2_000);
    console.log(`after 2 s: members ${a.client.state}/${b.client.state}, stranger ${s.client.state}`);
    expect(s.client.state).not.toBe('udp');
    expect(s.client.state).not.toBe('tcp');
    a.client.send(b.wgKey, Buffer.from('hi bob'));
    await waitFor(() => b.received.length === 1, { timeoutMs: 5_000, intervalMs: 20, what: 'bob gets alice\'s packet' });

    // A member that joins now gets a session at its first retry, not at the next full refresh.
    const carol = Identity.generate();
    await new RegistryClient({ url: reg.url, identity: carol, network: 'lab', timeoutMs: 5000 }).join('carol', await reg.createToken());
    const joinedAt = Date.now();
    const c = await startAgent({ udp: started.udp }, { identity: carol });
    agents.push(c);
    await waitState(c, 'udp', EARLY_REFRESH_MS + 5_000);
    console.log(`carol joined after the relay read its list: session after ${Date.now() - joinedAt} ms (full refresh every ${MEMBER_REFRESH_MS} ms)`);

    await new AdminClient(reg.url, adminToken, 'lab').remove('bob', false);
    const removedAt = Date.now();
    await waitFor(() => {
      a.client.send(b.wgKey, Buffer.from('still there?'));
      return a.notHere.length > 0;
    }, { timeoutMs: MEMBER_REFRESH_MS + 10_000, intervalMs: 200, what: 'the relay to drop bob' });
    console.log(`bob removed from the registry: the relay stopped forwarding to him after ${Date.now() - removedAt} ms (refresh every ${MEMBER_REFRESH_MS} ms)`);
    // From then on nothing reaches bob through the relay.
    const got = b.received.length;
    for (let i = 0; i < 20; i++) a.client.send(b.wgKey, Buffer.from(`after ${i}`));
    await sleep(500);
    expect(b.received.length).toBe(got);
  }, 60_000);
});
