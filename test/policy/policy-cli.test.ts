/** `agentvpn policy test` with a policy file and no daemon, and static mode's policy file checks. */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeKey } from '../../src/crypto/keys.js';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import type { DeviceConfig } from '../../src/config/types.js';
import { AgentVpnError } from '../../src/errors.js';
import { compileStaticPolicy } from '../../src/policy/static.js';

const ROOT = join(import.meta.dirname, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'agentvpn-policy-'));

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(ROOT, 'bin/agentvpn.js'), ...args], { env: { ...process.env, AGENTVPN_RUN_DIR: dir, NO_COLOR: '1' } },
      (err, stdout, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? 1 : 0, stdout, stderr }));
  });
}

const kA = generatePrivateKey();
const kB = generatePrivateKey();
const file = join(dir, 'policy.json');
writeFileSync(file, `{
  "agents": {
    "alpha": { "wgPublicKey": "${encodeKey(publicKeyOf(kA))}", "tags": ["web"] },
    "beta": { "wgPublicKey": "${encodeKey(publicKeyOf(kB))}", "capabilities": ["db.postgres@16"] }
  },
  "grants": [
    { "src": ["tag:web"], "dst": ["cap:db.postgres"], "ip": ["tcp:5432"] }
  ]
}`);

describe('agentvpn policy test', () => {
  it('prints allow and the deciding grant (exit 0), deny and the near misses (exit 2), --json', async () => {
    const allow = await cli(['policy', 'test', '--src', 'alpha', '--dst', 'beta', 'tcp:5432', '--policy', file]);
    expect(allow.code).toBe(0);
    expect(allow.stdout).toBe('allow  alpha -> beta tcp:5432\nallowed by grant #1 (line 7): tag:web -> cap:db.postgres tcp:5432\n');
    const deny = await cli(['policy', 'test', '--src', 'beta', '--dst', 'alpha', 'tcp:5432', '--policy', file]);
    expect(deny.code).toBe(2);
    expect(deny.stdout).toContain('deny  beta -> alpha tcp:5432');
    const json = await cli(['policy', 'test', '--src', 'alpha', '--dst', 'beta', 'tcp:22', '--policy', file, '--json']);
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: true, allow: false, grant: null, near: [0] });
  });

  it('refuses bad flows, unknown agents and broken files with a hint', async () => {
    const flow = await cli(['policy', 'test', '--src', 'alpha', '--dst', 'beta', 'tcp:99999', '--policy', file, '--json']);
    expect(JSON.parse(flow.stdout)).toMatchObject({ ok: false, code: 'BAD_FLOW' });
    const who = await cli(['policy', 'test', '--src', 'alpha', '--dst', 'zed', 'icmp', '--policy', file, '--json']);
    expect(JSON.parse(who.stdout)).toMatchObject({ ok: false, code: 'AGENT_UNKNOWN' });
    const broken = join(dir, 'broken.json');
    writeFileSync(broken, '{"grants": [\n  {"src": ["*"], "dst": ["*"], "ip": ["tcp:http"]}\n]}');
    const bad = await cli(['policy', 'test', '--src', 'alpha', '--dst', 'beta', 'icmp', '--policy', broken]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(`error: ${broken}:2:39: invalid ip entry "tcp:http"`);
    expect(bad.stderr).toContain('hint: ip entries are');
    const nofile = await cli(['policy', 'test', '--src', 'alpha', '--dst', 'beta', 'icmp', '--json']);
    expect(JSON.parse(nofile.stdout)).toMatchObject({ ok: false, code: 'DAEMON_NOT_RUNNING' });
  });
});

describe('static mode policy file', () => {
  const config = (key: Uint8Array): DeviceConfig => ({ privateKey: key, addresses: [], listenPort: 0, mtu: 1420, peers: [] });
  it('compiles for the device that is one of its agents, and refuses one that is not', () => {
    const c = compileStaticPolicy(file, config(kB));
    expect(c.enforcing).toBe(true);
    expect(c.byWgKey.get(encodeKey(publicKeyOf(kA)))!.inbound.allows(6, 5432)).toBe(true);
    let err: unknown;
    try {
      compileStaticPolicy(file, config(generatePrivateKey()));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentVpnError);
    expect((err as AgentVpnError).message).toContain("no agent in \"agents\" has this device's key");
  });
});
