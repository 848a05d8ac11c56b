import { spawn } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect, type DaemonEvent } from '../../src/index.js';
import { AgentVpnError } from '../../src/errors.js';
import { ControlServer } from '../../src/daemon/control-server.js';
import { EventHub } from '../../src/daemon/event-hub.js';

/**
 * Both SDKs against a real control server (the daemon's, in this process) with canned handlers
 * and a real event hub: the calls, their errors and hints, and that leaving a loop closes the stream.
 */
const REPO = new URL('../../', import.meta.url).pathname;
const PY_SDK = join(REPO, 'sdk/python');
let base: string;
let server: ControlServer;
const hub = new EventHub();
const savedRunDir = process.env.AGENTVPN_RUN_DIR;

const peer = { id: 'a1', name: 'worker', ipv4: '100.64.0.9', ipv6: 'fd00::9', online: true, lastSeen: 1, capabilities: ['llm.inference@1'], tags: [], endpoints: [] };

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'agentvpn-sdk-'));
  await chmod(base, 0o755); // like /run: anyone may look in, the socket itself is root-only
  process.env.AGENTVPN_RUN_DIR = join(base, 'run');
  server = new ControlServer('sdk0', {
    status: () => ({ interface: 'sdk0', peers: [] }),
    id: () => ({ id: 'me', name: 'planner' }),
    peers: (p) => ((p as { cap?: string }).cap === 'gpu' ? [] : [peer]),
    resolve: (p) => {
      if ((p as { name: string }).name !== 'worker') throw new AgentVpnError('NAME_NOT_FOUND', 'no agent named "x"', 'list the agents with `agentvpn peers`');
      return { name: 'worker', ipv4: peer.ipv4, ipv6: peer.ipv6 };
    },
    whois: (p) => ({ ...peer, address: (p as { address: string }).address, port: null, app: {} }),
    events: (p) => hub.subscribe(p),
  });
  await server.start();
});
afterAll(async () => {
  await server.stop();
  if (savedRunDir === undefined) delete process.env.AGENTVPN_RUN_DIR;
  else process.env.AGENTVPN_RUN_DIR = savedRunDir;
  await rm(base, { recursive: true, force: true });
});

const offline = { type: 'peer.offline', id: 'a1', name: 'worker', ipv4: peer.ipv4, ipv6: peer.ipv6 } as const;

const AS_NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

/** Runs python3 with the SDK on its path; resolves with its stdout (rejects with stderr on failure). */
function python(code: string, opts: { asNobody?: boolean } = {}): Promise<string> {
  // Not root: Debian's python3 (a pyenv shim under /root would not run), with the SDK made readable.
  const argv = opts.asNobody ? [...AS_NOBODY, '/usr/bin/python3', '-c', code] : ['python3', '-c', code];
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { env: { ...process.env, PYTHONPATH: PY_SDK } });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (err += c));
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`python exited ${code}: ${err}`))));
  });
}

describe('TypeScript SDK', () => {
  it('calls the daemon: status, whoami, peers, discover, resolve, whois', async () => {
    const vpn = await connect({ interface: 'sdk0' });
    expect((await vpn.status()).interface).toBe('sdk0');
    expect((await vpn.whoami()).name).toBe('planner');
    expect(await vpn.peers()).toEqual([peer]);
    expect(await vpn.discover({ cap: 'gpu' })).toEqual([]);
    expect((await vpn.resolve('worker')).ipv4).toBe('100.64.0.9');
    expect((await vpn.whois('100.64.0.9:4000')).name).toBe('worker');
    await expect(vpn.resolve('nobody')).rejects.toMatchObject({ code: 'NAME_NOT_FOUND', hint: expect.stringContaining('agentvpn peers') });
  });

  it('says what to do when no daemon runs, and when a method needs registry mode', async () => {
    const err = await connect({ interface: 'absent0' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentVpnError);
    expect(err).toMatchObject({ code: 'DAEMON_NOT_RUNNING', hint: expect.stringContaining('sudo agentvpn up') });
    const vpn = await connect({ interface: 'sdk0' });
    await expect(vpn.ping('worker')).rejects.toMatchObject({ code: 'NOT_IN_REGISTRY_MODE' });
  });

  it('events: typed events in a for-await loop; break closes the subscription', async () => {
    const vpn = await connect({ interface: 'sdk0' });
    const stream = vpn.events();
    await stream.opened;
    expect(hub.subscriberCount).toBe(1);
    hub.publish(offline);
    hub.publish({ type: 'path.changed', id: 'a1', name: 'worker', ipv4: peer.ipv4, ipv6: peer.ipv6, kind: 'relay', endpoint: 'relay', rttMs: null });
    const seen: DaemonEvent[] = [];
    for await (const ev of stream) {
      seen.push(ev);
      if (seen.length === 2) break;
    }
    expect(seen.map((e) => e.type)).toEqual(['peer.offline', 'path.changed']);
    await vi.waitFor(() => expect(hub.subscriberCount).toBe(0));
    expect(server.streamsStatus().open).toBe(0);
  });

  it('events: bad types are refused before any stream opens', async () => {
    const vpn = await connect({ interface: 'sdk0' });
    const stream = vpn.events({ types: ['nonsense' as 'peer.online'] });
    await expect(stream.next()).rejects.toMatchObject({ code: 'BAD_EVENT_TYPE' });
  });
});

describe('Python SDK (stdlib only)', () => {
  it('the same calls, errors with codes and hints, and events whose loop closes the stream on break', async () => {
    const script = `
import json, threading, agentvpn
vpn = agentvpn.connect(interface="sdk0")
out = {"peers": vpn.peers(), "gpu": vpn.discover("gpu"), "resolved": vpn.resolve("worker"), "whois": vpn.whois("100.64.0.9")["name"], "me": vpn.whoami()["name"]}
try:
    vpn.resolve("nobody")
except agentvpn.AgentVpnError as e:
    out["error"] = [e.code, e.hint]
try:
    agentvpn.connect(interface="absent0")
except agentvpn.AgentVpnError as e:
    out["absent"] = [e.code, e.hint]
seen = []
events = vpn.events(types=["peer.offline"])
print("subscribed", flush=True)
for ev in events:
    seen.append(ev)
    break
out["events"] = seen
with vpn.events(types=["trust.alert"]) as quiet:
    try:
        quiet.next(timeout=0.2)
    except TimeoutError:
        out["timeout"] = True
print(json.dumps(out), flush=True)
`;
    const run = python(script);
    await vi.waitFor(() => expect(hub.subscriberCount).toBe(1), { timeout: 10_000 });
    hub.publish({ type: 'peer.online', id: 'a1', name: 'worker', ipv4: peer.ipv4, ipv6: peer.ipv6 }); // not asked for
    hub.publish(offline);
    const out = JSON.parse((await run).split('\n').filter(Boolean).at(-1)!) as Record<string, unknown>;
    expect(out).toMatchObject({
      peers: [peer], gpu: [], resolved: { ipv4: '100.64.0.9' }, whois: 'worker', me: 'planner',
      error: ['NAME_NOT_FOUND', expect.stringContaining('agentvpn peers')],
      absent: ['DAEMON_NOT_RUNNING', expect.stringContaining('sudo agentvpn up')],
      events: [{ type: 'peer.offline', name: 'worker' }],
      timeout: true,
    });
    await vi.waitFor(() => expect(hub.subscriberCount).toBe(0));
  });

  it('a process that is not root is told the socket is root-only', async () => {
    const out = await python(`
import agentvpn
try:
    agentvpn.connect(interface="sdk0")
except agentvpn.AgentVpnError as e:
    print(e.code, "|", e.hint)
`, { asNobody: true });
    expect(out).toMatch(/^CONTROL_PERMISSION \| run the agent as root/);
  });

  it('(TypeScript too, from the built package)', async () => {
    const code = `import('${REPO}dist/index.js').then((m) => m.connect({ interface: 'sdk0' })).catch((e) => console.log(e.code, '|', e.hint))`;
    const out = await new Promise<string>((resolve) => {
      const child = spawn(AS_NOBODY[0], [...AS_NOBODY.slice(1), process.execPath, '-e', code], { env: process.env });
      let text = '';
      child.stdout.on('data', (c) => (text += c));
      child.on('exit', () => resolve(text));
    });
    expect(out).toMatch(/^CONTROL_PERMISSION \| run the agent as root/);
  });
});
