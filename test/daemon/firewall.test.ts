import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Firewall, checkNoOverlap, firewallScript, firewallTableName, overlayPrefixes } from '../../src/daemon/firewall.js';
import { formatPrefix, parsePrefix, type Prefix } from '../../src/ip/prefix.js';

// No test here runs the real nft: the end-to-end isolation test does, inside its namespaces.
const P = (s: string): Prefix => parsePrefix(s)!;
const log = pino({ level: 'silent' });

describe('firewall rules', () => {
  it('guards the networks of the interface addresses, each once, none inside another', () => {
    const fleet = overlayPrefixes([P('100.64.3.7/10'), P('fd5e:1:2:3::9/48')]);
    expect(fleet.map(formatPrefix)).toEqual(['100.64.0.0/10', 'fd5e:1:2::/48']);
    const messy = overlayPrefixes([P('10.0.0.1/24'), P('10.0.0.2/24'), P('10.0.0.3/16'), P('10.9.0.1/32'), P('fd00:a::1/64')]);
    expect(messy.map(formatPrefix)).toEqual(['10.0.0.0/16', '10.9.0.1/32', 'fd00:a::/64']);
  });

  it('writes one transaction: replace the table, accept the TUN and lo, drop overlay sources, then overlay destinations', () => {
    const script = firewallScript('agentvpn0', [P('100.64.0.0/10'), P('fd5e:1:2::/48')]);
    const lines = script.split('\n').map((l) => l.trim());
    expect(lines.slice(0, 3)).toEqual(['table inet agentvpn_agentvpn0', 'delete table inet agentvpn_agentvpn0', 'table inet agentvpn_agentvpn0 {']);
    expect(lines).toContain('type filter hook prerouting priority raw; policy accept;');
    const rules = lines.filter((l) => /(accept|drop)$/.test(l));
    expect(rules).toEqual([
      'iifname { "agentvpn0", "lo" } accept',
      'ip saddr { 100.64.0.0/10 } counter name "spoofed_source" drop',
      'ip6 saddr { fd5e:1:2::/48 } counter name "spoofed_source" drop',
      'ip daddr { 100.64.0.0/10 } counter name "to_overlay" drop',
      'ip6 daddr { fd5e:1:2::/48 } counter name "to_overlay" drop',
    ]);
    // IPv4 only: no empty IPv6 sets (nft refuses them).
    expect(firewallScript('wg0', [P('10.0.0.0/24')])).not.toContain('ip6');
    expect(firewallTableName('wg-0.x')).toBe('agentvpn_wg-0.x');
  });

  it('refuses prefixes that hold another interface\'s address (the rules would cut that network off)', () => {
    const interfaces = {
      lo: [{ address: '127.0.0.1', family: 'IPv4' }, { address: '::1', family: 'IPv6' }],
      eth0: [{ address: '10.1.2.3', family: 'IPv4' }, { address: 'fe80::1%eth0', family: 'IPv6' }],
      agentvpn0: [{ address: '10.0.0.1', family: 'IPv4' }],
    } as unknown as ReturnType<typeof import('node:os').networkInterfaces>;
    expect(() => checkNoOverlap('agentvpn0', [P('10.0.0.0/16'), P('fd00:a::/64')], interfaces)).not.toThrow();
    expect(() => checkNoOverlap('agentvpn0', [P('10.0.0.0/8')], interfaces)).toThrow(expect.objectContaining({
      code: 'FIREWALL_OVERLAP', message: expect.stringContaining('10.1.2.3, an address of eth0'),
    }));
  });
});

describe('Firewall without a working nft', () => {
  const savedPath = process.env.PATH;
  const dirs: string[] = [];
  afterEach(() => {
    process.env.PATH = savedPath;
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const firewall = () => new Firewall({ iface: 'agentvpn0', addresses: [P('100.64.9.1/24')], enabled: true, log });

  it('says to install nftables (or --no-firewall) when nft is missing', async () => {
    process.env.PATH = '/nonexistent';
    await expect(firewall().start()).rejects.toMatchObject({
      code: 'FIREWALL_UNAVAILABLE', hint: expect.stringMatching(/install nftables.*--no-firewall.*unsafe/),
    });
  });

  it('reports what nft said when it refuses, and installs nothing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fake-nft-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'nft'), '#!/bin/sh\necho "Error: Could not process rule: Operation not permitted" >&2\nexit 1\n');
    chmodSync(join(dir, 'nft'), 0o755);
    process.env.PATH = dir;
    const fw = firewall();
    await expect(fw.start()).rejects.toMatchObject({
      code: 'FIREWALL_FAILED', message: expect.stringContaining('Operation not permitted'), hint: expect.stringContaining('CAP_NET_ADMIN'),
    });
    expect(await fw.status()).toEqual({ enabled: true, table: null, prefixes: ['100.64.9.0/24'], dropped: null });
    await fw.stop(); // nothing to remove: no nft call, no error
  });

  it('with --no-firewall installs nothing and only tries to remove a leftover table', async () => {
    process.env.PATH = '/nonexistent';
    const fw = new Firewall({ iface: 'agentvpn0', addresses: [P('100.64.9.1/24')], enabled: false, log });
    await fw.start();
    expect(await fw.status()).toMatchObject({ enabled: false, table: null });
  });
});
