import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Identity } from '../../src/identity/identity.js';
import { RECORD_LIFETIME_MS, signRecord } from '../../src/registry/record.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';

const NET = 'lab';
const AGENTS = 12;

describe('GET /v1/agents in pages', () => {
  let dir: string;
  let reg: RunningRegistry;
  const clients: RegistryClient[] = [];
  const ids: string[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-list-pages-'));
    reg = await startRegistry({ db: join(dir, 'registry.db'), network: NET, listen: '127.0.0.1:0' });
    const token = await reg.createToken();
    for (let i = 0; i < AGENTS; i++) {
      const identity = Identity.generate();
      const c = new RegistryClient({ url: reg.url, identity, network: NET, timeoutMs: 5000 });
      clients.push(c);
      const j = await c.join(`agent-${i}`, token);
      const now = Date.now();
      await c.publish(signRecord(identity, {
        v: 1, network: NET, id: identity.id, name: `agent-${i}`, wgPublicKey: Buffer.from(identity.wgPublicKey).toString('base64'),
        ipv4: j.ipv4, ipv6: j.ipv6, endpoints: ['192.0.2.7:51820'], capabilities: [`svc.s${i % 2};zone=z${i % 3}`], seq: 1, issuedAt: now, expiresAt: now + RECORD_LIFETIME_MS,
      }));
      ids.push(identity.id);
    }
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    ids.length = 0;
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('pages in ID order with a cursor; list() follows the pages; a bad limit or cursor is refused', async () => {
    const c = clients[0];
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await c.listPage({}, { limit: 5, cursor });
      expect(page.agents.length).toBeLessThanOrEqual(5);
      seen.push(...page.agents.map((a) => a.record.id));
      cursor = page.next ?? undefined;
      pages++;
    } while (cursor !== undefined);
    console.log(`${AGENTS} agents in pages of 5: ${pages} pages, ${seen.length} agents`);
    expect(pages).toBe(3);
    expect(seen).toEqual([...ids].sort());
    expect((await c.list()).map((a) => a.record.id)).toEqual([...ids].sort());
    const zone = await c.list({ cap: 'svc.s0;zone=z0' });
    expect(zone.map((a) => a.record.name).sort()).toEqual(['agent-0', 'agent-6']);
    await expect(c.listPage({}, { limit: 0 })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(c.listPage({}, { limit: 1001 })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(c.listPage({}, { cursor: 'bogus' })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
  });
});
