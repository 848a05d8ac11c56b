import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENTVPN_BIN, Lab, REPO_ROOT, renderWgQuickConfig, waitFor, wgKeyPair, type LabProcess } from '../../src/lab/index.js';
import { labReady } from './checks.js';

/**
 * The test plays systemd: it runs agentvpn@.service's ExecStart line (parsed from the unit file)
 * in a lab namespace with NOTIFY_SOCKET and WATCHDOG_USEC set, and listens on that socket. READY=1
 * must come only once the interface is up with its address, then WATCHDOG=1 at WATCHDOG_USEC/2,
 * RELOADING=1 and READY=1 again on SIGHUP (which no longer stops the daemon), STOPPING=1 on SIGTERM.
 */

const UNITS = ['agentvpn@.service', 'agentvpn-registry.service', 'agentvpn-relay.service'];
const UNIT_DIR = join(REPO_ROOT, 'scripts');
/** Where the units expect the CLI (`npm install -g` with prefix /usr); the tests use the repo's. */
const INSTALLED_BIN = '/usr/bin/agentvpn';
const LISTENER = join(REPO_ROOT, 'test', 'fixtures', 'notify-listener.py');
/** 1 s: the daemon pings every 500 ms, so a few seconds show the cadence. */
const WATCHDOG_USEC = 1_000_000;

/** The value of `Key=` in the unit's [Service] section. */
function unitValue(text: string, key: string): string {
  const line = text.split('\n').find((l) => l.startsWith(`${key}=`));
  if (!line) throw new Error(`no ${key}= in the unit`);
  return line.slice(key.length + 1);
}

/** ExecStart as argv for this instance: %i, the config dir and the binary substituted; unset $VARS give no words. */
function execStartArgv(unit: string, iface: string, configDir: string): string[] {
  return unitValue(unit, 'ExecStart').split(/\s+/).filter((w) => !/^\$[A-Z_]+$/.test(w)).flatMap((w) => {
    if (w === INSTALLED_BIN) return [process.execPath, AGENTVPN_BIN];
    return [w.replaceAll('%i', iface).replaceAll('/etc/agentvpn/', `${configDir}/`)];
  });
}

describe('systemd units', () => {
  it.runIf(spawnSync('systemd-analyze', ['--version']).status === 0 || process.env.CI)('systemd-analyze verify accepts every unit file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'avpn-units-'));
    for (const name of UNITS) {
      // verify checks that ExecStart's binary exists: point it at the repo's CLI, which does.
      const text = readFileSync(join(UNIT_DIR, name), 'utf8').replaceAll(INSTALLED_BIN, AGENTVPN_BIN);
      writeFileSync(join(dir, name), text);
      const r = spawnSync('systemd-analyze', ['verify', join(dir, name)], { encoding: 'utf8' });
      // verify exits 0 on unknown keys and bad values too, only warning: any output is a failure.
      expect({ unit: name, status: r.status, output: (r.stdout + r.stderr).trim() }).toEqual({ unit: name, status: 0, output: '' });
      expect(unitValue(text, 'Documentation')).toMatch(/^(file:\/|https:\/\/|man:)/);
    }
    const main = readFileSync(join(UNIT_DIR, 'agentvpn@.service'), 'utf8');
    expect(unitValue(main, 'Type')).toBe('notify');
    expect(unitValue(main, 'NotifyAccess')).toBe('main');
    expect(unitValue(main, 'WatchdogSec')).toMatch(/^\d+s$/);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe.runIf(labReady(['ip', 'python3']))('systemd notify: the unit\'s ExecStart in a lab namespace', () => {
  let lab: Lab;
  let ns: string;
  const iface = 'avn0';
  let daemon: LabProcess;
  let runDir: string;
  let policyFile: string;
  let writePolicy: (grants: unknown) => void;
  const messages: { t: number; msg: string; link?: { flags: string[]; addr_info: { local: string }[] }[] | null }[] = [];

  const waitForMessage = (pred: (m: string) => boolean, what: string, from = 0) =>
    waitFor(() => messages.slice(from).find((m) => pred(m.msg)) ?? null, { timeoutMs: 20_000, intervalMs: 50, what });

  beforeAll(async () => {
    lab = new Lab();
    ns = await lab.addNamespace('sd');
    lab.claimInterface(ns, iface);
    const me = await wgKeyPair();
    const peer = await wgKeyPair();
    const configDir = join(lab.dir, 'etc-agentvpn');
    mkdirSync(configDir, { recursive: true, mode: 0o700 });
    writeFileSync(join(configDir, `${iface}.conf`), renderWgQuickConfig({
      privateKey: me.privateKey, addresses: ['100.64.7.1/24'], listenPort: 51899,
      peers: [{ publicKey: peer.publicKey, allowedIps: ['100.64.7.2/32'], endpoint: '192.0.2.99:51820' }],
    }), { mode: 0o600 });
    policyFile = join(configDir, 'policy.json');
    writePolicy = (grants) => writeFileSync(policyFile, JSON.stringify({
      agents: { me: { wgPublicKey: me.publicKey }, peer: { wgPublicKey: peer.publicKey } }, grants,
    }), { mode: 0o600 });
    writePolicy([]);
    // The config file names the wg-quick and policy files relative to itself, as /etc/agentvpn/avn0.json would.
    writeFileSync(join(configDir, `${iface}.json`), JSON.stringify({ config: `${iface}.conf`, policy: 'policy.json', 'log-level': 'info' }), { mode: 0o600 });

    const socket = join(lab.dir, 'notify.sock');
    const listener = lab.spawn(ns, ['python3', LISTENER, socket, '--link', ns, iface], { name: 'notify-listener', stdio: 'pipe' });
    let bound = false;
    createInterface({ input: listener.stdout! }).on('line', (line) => {
      const j = JSON.parse(line);
      if (j.listening) bound = true;
      else messages.push(j);
    });
    await waitFor(() => bound, { timeoutMs: 10_000, what: 'notify listener bound' });

    const unit = readFileSync(join(UNIT_DIR, 'agentvpn@.service'), 'utf8');
    const argv = execStartArgv(unit, iface, configDir);
    expect(argv.slice(2)).toEqual(['up', '--foreground', '--interface', iface, '--config-file', join(configDir, `${iface}.json`)]);
    runDir = join(lab.dir, 'run');
    mkdirSync(runDir, { recursive: true });
    daemon = lab.spawn(ns, argv, {
      name: 'agentvpn-unit', cwd: '/',
      env: { ...process.env, NOTIFY_SOCKET: socket, WATCHDOG_USEC: String(WATCHDOG_USEC), AGENTVPN_RUN_DIR: runDir },
    });
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('READY=1 arrives once the interface is up with its address, with a STATUS line', async () => {
    const ready = await waitForMessage((m) => m.split('\n').includes('READY=1'), 'READY=1').catch((e) => {
      throw new Error(`${(e as Error).message}\ndaemon log:\n${lab.logTail(daemon)}`);
    });
    expect(messages.indexOf(ready)).toBe(0); // nothing before READY
    console.log(`READY message: ${JSON.stringify(ready.msg)}; ${iface} when it arrived: ${JSON.stringify(ready.link?.[0]?.flags)}`);
    expect(ready.link?.[0]?.flags).toContain('UP');
    expect(ready.link?.[0]?.addr_info.map((a) => a.local)).toContain('100.64.7.1');
    expect(ready.msg).toContain('STATUS=up, 1 peer');
  });

  it('WATCHDOG=1 every WATCHDOG_USEC/2 from the main loop', async () => {
    const start = messages.length;
    const first = await waitForMessage((m) => m === 'WATCHDOG=1', 'WATCHDOG=1', start);
    await new Promise((r) => setTimeout(r, 3000));
    const pings = messages.filter((m) => m.msg === 'WATCHDOG=1' && m.t >= first.t);
    const spanS = pings.at(-1)!.t - first.t;
    console.log(`watchdog: ${pings.length} pings over ${spanS.toFixed(2)} s (every ${WATCHDOG_USEC / 2000} ms expected)`);
    // ~6 expected in 3 s; generous bounds for a loaded 2-core machine.
    expect(pings.length).toBeGreaterThanOrEqual(3);
    expect(pings.length).toBeLessThanOrEqual(10);
  });

  it('SIGHUP reloads (RELOADING=1, then READY=1) and the daemon stays up', async () => {
    const start = messages.length;
    daemon.kill('SIGHUP');
    await waitForMessage((m) => m.startsWith('RELOADING=1'), 'RELOADING=1', start);
    const again = await waitForMessage((m) => m.split('\n').includes('READY=1'), 'READY=1 after the reload', start);
    expect(again.msg).toContain('STATUS=up');
    expect(daemon.exitCode).toBeNull();
    expect(await lab.interfaceUp(ns, iface)).toBe(true);
  });

  it('`agentvpn reload` re-reads the static policy and says so; a policy that does not parse keeps the one in force', async () => {
    const reload = async () => {
      const r = await lab.exec(ns, [process.execPath, AGENTVPN_BIN, 'reload', '--interface', iface, '--json'], { env: { ...process.env, AGENTVPN_RUN_DIR: runDir } });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      return JSON.parse(r.stdout) as { applied: string[]; refreshed: string[] };
    };
    writePolicy([{ src: ['name:peer'], dst: ['name:me'], ip: ['tcp:22'] }]);
    const ok = await reload();
    expect(ok.applied).toEqual([]);
    expect(ok.refreshed, JSON.stringify(ok)).toEqual([`policy ${policyFile} re-read and applied`]);
    writeFileSync(policyFile, '{"agents": ');
    const bad = await reload();
    expect(bad.refreshed[0], JSON.stringify(bad)).toContain('does not parse');
    expect(bad.refreshed[0]).toContain('the policy in force stays');
    expect(daemon.exitCode).toBeNull();
  });

  it('STOPPING=1 on SIGTERM, then the daemon exits cleanly and the interface is gone', async () => {
    const start = messages.length;
    daemon.kill('SIGTERM');
    const stopping = await waitForMessage((m) => m.startsWith('STOPPING=1'), 'STOPPING=1', start);
    const exit = await daemon.exited;
    expect(exit.code).toBe(0);
    expect(await lab.interfaceUp(ns, iface)).toBe(false);
    const after = messages.slice(messages.indexOf(stopping) + 1).map((m) => m.msg);
    expect(after.filter((m) => m.includes('READY=1') || m === 'WATCHDOG=1')).toEqual([]); // nothing after STOPPING
  });
});
