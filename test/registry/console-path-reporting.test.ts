import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Membership } from '../../src/daemon/membership.js';
import { Identity } from '../../src/identity/identity.js';
import type { RegistryClient } from '../../src/registry/client.js';
import type { ReportedPath } from '../../src/registry/path-report.js';

/**
 * What an agent sends the console: its paths with a heartbeat when they change (peer, kind,
 * endpoint), again when the registry did not keep them, and not again at once after a failure.
 */
describe('membership path reports', () => {
  const dirs: string[] = [];
  afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

  it('sends on change, resends what was not kept, backs off after a failure', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'agentvpn-paths-'));
    dirs.push(dir);
    const peer = Identity.generate().id;
    let paths: ReportedPath[] = [{ peer, kind: 'direct', endpoint: '192.0.2.2:51820', rttMs: 0.5 }];
    const sent: ReportedPath[][] = [];
    let answer: boolean | Error = true;
    const client = {
      heartbeat: async () => {},
      reportPaths: async (p: ReportedPath[]) => {
        sent.push(p);
        if (answer instanceof Error) throw answer;
        return answer;
      },
    } as unknown as RegistryClient;
    const m = new Membership({
      client, identity: Identity.generate(), name: 'a', network: 'n', capabilities: [], stateDir: dir, log: pino({ level: 'silent' }),
      endpoints: () => [], audit: async () => {}, paths: () => paths,
    });
    const events = { snapshot() {}, agent() {}, removed() {}, policy() {} };
    const beat = async () => {
      await m.heartbeat(events);
      await new Promise((r) => setImmediate(r));
    };
    await beat();
    await beat();
    expect(sent.length).toBe(1); // unchanged: not sent again within the refresh interval
    paths = [{ ...paths[0], rttMs: 0.7 }];
    await beat();
    expect(sent.length).toBe(1); // an RTT alone waits for the refresh
    paths = [{ ...paths[0], kind: 'relay', endpoint: '203.0.113.10:7443' }];
    answer = false;
    await beat();
    await beat();
    expect(sent.length).toBe(3); // changed, not kept: sent again with the next heartbeat
    answer = new Error('NOT_FOUND');
    paths = [];
    await beat();
    await beat();
    console.log(`heartbeats: 7, path reports sent: ${sent.length}`);
    expect(sent.length).toBe(4); // failed (an older registry): not retried with every heartbeat
  });
});
