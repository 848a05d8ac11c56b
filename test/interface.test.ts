import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNetns, deleteNetns, labGate, runInNetns } from './fixtures/netns.js';

// configureInterface and friends run `ip` in their own network namespace, so they are exercised
// through netns-child.mjs inside a namespace made for this file, on a real TUN device.
const lab = labGate();

describe.skipIf(lab.skip)('interface configuration with iproute2', () => {
  let ns = '';
  let r: Record<string, any>;
  beforeAll(async () => {
    lab.check();
    ns = createNetns('iface');
    r = await runInNetns(ns, 'iface');
  });
  afterAll(() => {
    if (ns) deleteNetns(ns);
  });

  it('sets MTU, addresses (IPv6 without DAD) and brings the link up, idempotently', () => {
    expect(r.link.mtu).toBe(1380);
    expect(r.link.flags).toContain('UP');
    const addrs = r.link.addr_info.filter((a: any) => a.scope === 'global');
    expect(addrs).toEqual([
      expect.objectContaining({ family: 'inet', local: '100.64.7.1', prefixlen: 16 }),
      expect.objectContaining({ family: 'inet6', local: 'fd00:7::1', prefixlen: 64, nodad: true }),
    ]);
  });

  it('routes prefixes (network part) into the interface with replace semantics', () => {
    expect(r.routes4).toEqual(['100.64.0.0/16', '100.65.0.0/16', '100.66.1.0/24']);
    expect(r.routes6).toEqual(expect.arrayContaining(['fd00:7::/64', 'fd00:8::/64', 'fd00:9::5']));
  });

  it('removes routes, tolerating ones already gone', () => {
    expect(r.routes4After).toEqual(['100.64.0.0/16', '100.66.1.0/24']);
    expect(r.routes6After).not.toContain('fd00:8::/64');
    expect(r.routes6After).toContain('fd00:9::5');
  });

  it('failures are INTERFACE_CONFIG naming the ip command and its stderr', () => {
    expect(r.missing.code).toBe('INTERFACE_CONFIG');
    expect(r.missing.message).toBe('ip link set dev nosuch0 mtu 1420 failed: Cannot find device "nosuch0"');
    expect(r.missing.hint).toMatch(/CAP_NET_ADMIN/);
    expect(r.badMtu.code).toBe('INTERFACE_CONFIG');
    expect(r.badMtu.message).toMatch(/^ip link set dev avn1 mtu 100000 failed: .*mtu/i);
  });

  it('deletes the interface; deleting it again or its routes afterwards is fine', () => {
    expect(r.linksAfterDelete).toEqual(['lo']);
  });
});
