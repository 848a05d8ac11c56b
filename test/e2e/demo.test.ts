import { describe, expect, it } from 'vitest';
import { AGENTVPN_BIN, REPO_ROOT, listNamespaces, runCommand } from '../../src/lab/index.js';
import { labReady } from './checks.js';

describe.runIf(labReady(['ip', 'iptables', 'curl', 'python3', 'sshd', 'ssh', 'ssh-keygen']))('agentvpn demo', () => {
  it('shows HTTP and SSH by name across NATs, the paths, and cleans up', async () => {
    const before = await listNamespaces();
    const r = await runCommand([process.execPath, AGENTVPN_BIN, 'demo', '--json'], { cwd: REPO_ROOT, timeoutMs: 180_000 });
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.ok).toBe(true);
    expect(out.http).toBe('hello from worker, across two NATs');
    expect(out.ssh).toBe('Linux on gpu, over agentvpn');
    expect(out.discovered).toEqual(['worker']);
    const path = (a: string, b: string) => out.paths.find((p: { agent: string; peer: string }) => p.agent === a && p.peer === b)?.path;
    expect(path('planner', 'worker')).toBe('direct');
    expect(path('planner', 'gpu')).toBe('relayed');
    expect(await listNamespaces()).toEqual(before);
  });
});
