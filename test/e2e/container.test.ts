import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENTVPN_BIN, Lab, startLabAgent, startLabRegistry, waitFor, type LabAgent, type LabProcess, type LabRegistry } from '../../src/lab/index.js';
import type { PeerInfo } from '../../src/daemon/fleet.js';
import { labReady, startHttpServer } from './checks.js';

/**
 * agentvpn the way containers run it. A lab namespace stands in for the host's network
 * namespace (docker --network host). "Container" 1 runs the daemon in mount and PID namespaces
 * of its own (unshare) with two capabilities, NET_ADMIN and NET_BIND_SERVICE, /dev/net/tun, and
 * its run dir and state dir on volumes (bind mounts of test dirs; the host's /run and /var/lib
 * stay untouched). "Container" 2, in the same network
 * namespace, has no capabilities at all (setpriv: empty bounding set): it reaches a peer over
 * the overlay, talks to the daemon through the run dir volume, and cannot change interfaces.
 */
const REPO = new URL('../../', import.meta.url).pathname;
const REGISTRY = '203.0.113.10';

/** Mounts every container makes: a private /run with the daemon's run dir volume in it. */
const RUN_VOLUME = 'mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/agentvpn && mount --bind "$RUN_VOL" /run/agentvpn';

function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.AGENTVPN_RUN_DIR; // the container uses the defaults: /run/agentvpn, /var/lib/agentvpn
  delete env.AGENTVPN_STATE_DIR;
  return env;
}

describe.runIf(labReady(['ip', 'unshare', 'setpriv', 'curl', 'python3']))('containers: a daemon container sharing the host netns, an app container with no capabilities', () => {
  let lab: Lab;
  let registry: LabRegistry;
  let hostNs: string;
  let peer: LabAgent;
  let peerIp = '';
  let daemonBox: LabProcess;
  let runVol = '';
  let stateVol = '';

  /** The daemon's PID (on the host) under the unshare that started it. */
  const daemonPid = (): number => Number(readFileSync(`/proc/${daemonBox.pid}/task/${daemonBox.pid}/children`, 'utf8').trim().split(/\s+/)[0]);

  beforeAll(async () => {
    expect(existsSync('/dev/net/tun'), '/dev/net/tun is needed').toBe(true);
    lab = new Lab();
    const hub = await lab.addRouter('hub');
    const regNs = await lab.addNamespace('reg');
    await lab.connect(hub, regNs, { a: '203.0.113.1/24', b: `${REGISTRY}/24`, ifB: 'eth0' });
    await lab.ip(regNs, ['route', 'add', 'default', 'via', '203.0.113.1']);
    registry = await startLabRegistry(lab, regNs, REGISTRY, { offlineAfterSec: 6 });
    const peerNs = await lab.addNamespace('peer');
    await lab.connect(hub, peerNs, { a: '192.0.2.1/28', b: '192.0.2.2/28', ifB: 'eth0' });
    await lab.ip(peerNs, ['route', 'add', 'default', 'via', '192.0.2.1']);
    peer = await startLabAgent(lab, peerNs, 'peer', registry);
    peerIp = (await peer.json<{ ipv4: string }>(['id'])).ipv4;
    const www = join(lab.dir, 'www');
    mkdirSync(www);
    writeFileSync(join(www, 'who'), 'peer\n');
    await startHttpServer(lab, peerNs, www, peerIp, 8080);

    hostNs = await lab.addNamespace('host');
    await lab.connect(hub, hostNs, { a: '192.0.2.17/28', b: '192.0.2.18/28', ifB: 'eth0' });
    await lab.ip(hostNs, ['route', 'add', 'default', 'via', '192.0.2.17']);
    runVol = join(lab.dir, 'vol-run');
    stateVol = join(lab.dir, 'vol-state');
    mkdirSync(runVol, { mode: 0o755 });
    mkdirSync(stateVol, { mode: 0o700 });
    // docker run --network host --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_BIND_SERVICE --device /dev/net/tun
    //   -v run:/run/agentvpn -v state:/var/lib/agentvpn  (NET_BIND_SERVICE: the DNS responder on port 53)
    const script = `set -e
${RUN_VOLUME}
mount -t tmpfs -o mode=0755 tmpfs /var/lib && mkdir /var/lib/agentvpn && mount --bind "$STATE_VOL" /var/lib/agentvpn
exec setpriv --bounding-set=-all,+net_admin,+net_bind_service --inh-caps=-all -- "$NODE" "$BIN" up --foreground --registry "$REGISTRY_URL" --token "$TOKEN" --name boxed --network "$NETWORK" --listen-port 51820`;
    daemonBox = lab.spawn(hostNs, ['unshare', '--mount', '--pid', '--fork', '--mount-proc', '--kill-child=SIGTERM', 'sh', '-c', script], {
      name: 'daemon-container',
      env: cleanEnv({ RUN_VOL: runVol, STATE_VOL: stateVol, NODE: process.execPath, BIN: AGENTVPN_BIN, REGISTRY_URL: registry.url, TOKEN: registry.token, NETWORK: registry.network }),
      cwd: REPO,
    });
    await waitFor(async () => {
      if (daemonBox.exitCode !== null) throw new Error(`the daemon container exited:\n${lab.logTail(daemonBox)}`);
      return lab.interfaceUp(hostNs, 'agentvpn0');
    }, { timeoutMs: 30_000, what: 'daemon container up' });
    await waitFor(async () => (await peer.json<{ peers: PeerInfo[] }>(['peers'])).peers.some((p) => p.name === 'boxed' && p.online),
      { timeoutMs: 20_000, what: 'peer sees boxed online' });
  }, 120_000);

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('the daemon runs in its own mount and PID namespaces, in the host network namespace, with its run and state dirs on volumes', () => {
    const pid = daemonPid();
    const nsPids = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1].split(/\s+/);
    expect(nsPids.at(-1), 'PID 1 of its PID namespace').toBe('1');
    // cap_net_admin (12) and cap_net_bind_service (10) only, as with --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_BIND_SERVICE.
    expect(/^CapEff:\s+(\w+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]).toBe('0000000000001400');
    expect(readlinkSync(`/proc/${pid}/ns/mnt`)).not.toBe(readlinkSync('/proc/self/ns/mnt'));
    expect(readlinkSync(`/proc/${pid}/ns/net`)).toBe(`net:[${statSync(`/run/netns/${hostNs}`).ino}]`);
    const sock = lstatSync(join(runVol, 'agentvpn0.sock'));
    expect(sock.isSocket()).toBe(true);
    expect(sock.mode & 0o777, 'the control socket is root-only').toBe(0o600);
    expect(existsSync('/run/agentvpn/agentvpn0.sock'), "the host's /run is not the container's").toBe(false);
    const state = readdirSync(stateVol);
    console.log(`daemon container: host PID ${pid}, NSpid ${nsPids.join(' ')}; state volume holds ${state.join(', ')}`);
    expect(state.length).toBeGreaterThan(0);
    expect(existsSync('/var/lib/agentvpn'), "the host's /var/lib is not the container's").toBe(false);
  });

  it('an app container without capabilities uses the overlay and the daemon, and cannot change interfaces', async () => {
    // docker run --network host --cap-drop ALL -v run:/run/agentvpn app
    const app = `set -e
${RUN_VOLUME}
exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs -- sh -c '
  echo "who=$(curl -sS --max-time 10 http://$PEER_IP:8080/who)"
  if err=$(ip link add avtest0 type dummy 2>&1); then echo "iplink=0"; else echo "iplink=$? $err"; fi
  grep CapEff /proc/self/status
  echo "peers=$(/usr/bin/python3 -c "import agentvpn, json; print(json.dumps([p[\\"name\\"] for p in agentvpn.connect().peers()]))")"
'`;
    const r = await lab.run(hostNs, ['unshare', '--mount', '--pid', '--fork', '--mount-proc', 'sh', '-c', app], {
      env: cleanEnv({ RUN_VOL: runVol, PEER_IP: peerIp, PYTHONPATH: join(REPO, 'sdk/python') }), timeoutMs: 30_000,
    });
    console.log(`app container:\n${r.stdout.trim()}\n${r.stderr.trim()}`);
    expect(r.stdout).toMatch(/^who=peer$/m);
    expect(r.stdout).toMatch(/^CapEff:\s+0+$/m);
    expect(r.stdout).toMatch(/^iplink=[1-9]\d* .*Operation not permitted/m);
    expect(r.stdout).toMatch(/^peers=\["peer"\]$/m);
    expect((await lab.exec(hostNs, ['ip', 'link', 'show', 'avtest0'])).code).not.toBe(0);
  });

  it('stopping the container (SIGTERM to its PID 1) takes the interface down and tells the fleet', async () => {
    process.kill(daemonPid(), 'SIGTERM'); // what `docker stop` does
    await Promise.race([daemonBox.exited, new Promise((_, reject) => setTimeout(() => reject(new Error('daemon container did not stop')), 15_000))]);
    expect((await lab.exec(hostNs, ['ip', 'link', 'show', 'agentvpn0'])).code).not.toBe(0);
    await waitFor(async () => (await peer.json<{ peers: PeerInfo[] }>(['peers'])).peers.some((p) => p.name === 'boxed' && !p.online),
      { timeoutMs: 20_000, what: 'peer sees boxed offline' });
  });
});
