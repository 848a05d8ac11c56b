// A daemon restarted in a loop (a crash loop under systemd, say) spends its agent's write budget
// at the registry; its next start must wait that out, not fail. A real registry on loopback.
import { afterEach, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { noAudit } from '../../src/audit/sink.js';
import { Membership } from '../../src/daemon/membership.js';
import type { AgentVpnError } from '../../src/errors.js';
import { Identity } from '../../src/identity/identity.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';

const NET = 'budget-net';
let dir: string;
let reg: RunningRegistry | undefined;
const cleanups: Array<() => unknown> = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

it('a join refused for the agent\'s write budget is waited out, with the wait the registry names', async () => {
  dir = mkdtempSync(join(tmpdir(), 'agentvpn-membership-budget-'));
  reg = await startRegistry({ db: join(dir, 'registry.db'), network: NET });
  const token = await reg.createToken({ network: NET, uses: null });
  const identity = Identity.generate();
  const client = new RegistryClient({ url: reg.url, identity, network: NET });
  cleanups.push(() => client.close());
  const start = () => {
    const m = new Membership({
      client, identity, name: 'looping', token, network: NET, capabilities: [], stateDir: dir, log: pino({ level: 'silent' }),
      endpoints: () => ['192.0.2.30:51820'], audit: noAudit,
    });
    cleanups.push(() => m.stop());
    return m;
  };
  const first = start();
  await first.join();
  await first.publish();
  // Its heartbeats until the registry refuses them: the budget is spent.
  let refusal: AgentVpnError | null = null;
  for (let i = 0; i < 100 && !refusal; i++) refusal = await client.heartbeat().then(() => null, (e: AgentVpnError) => e);
  expect(refusal?.code).toBe('AGENT_RATE_LIMITED');
  const refusedBefore = reg.stats().refused.AGENT_RATE_LIMITED;

  const t0 = performance.now();
  const { join: joined } = await start().join();
  const waitedMs = performance.now() - t0;
  console.log(`join after the budget was spent: taken after ${waitedMs.toFixed(0)} ms, ${reg.stats().refused.AGENT_RATE_LIMITED - refusedBefore} refusal(s) waited out`);
  expect(joined.network).toBe(NET);
  expect(reg.stats().refused.AGENT_RATE_LIMITED).toBeGreaterThan(refusedBefore);
  expect(waitedMs).toBeGreaterThan(100);
});
