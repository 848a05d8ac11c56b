import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENTVPN_BIN, Lab, REPO_ROOT, startLabAgent, startLabRegistry, waitFor, waitForFleet, type LabAgent, type LabRegistry } from '../../src/lab/index.js';
import { Identity } from '../../src/identity/identity.js';
import { labReady } from './checks.js';

/**
 * The registry's web console in headless Chromium (Debian's, driven by playwright-core): a
 * registry and three agents in the lab, the browser in a namespace of its own that can reach the
 * registry and nothing else (no default route: whatever Chromium tries on its own goes nowhere).
 * It logs in with an admin token, sees the agents online with the paths they report, and sees
 * two go offline without a reload: one stopped (it leaves), one killed (the registry's
 * offline-after). Its screenshot is docs/console.png.
 */

const CHROMIUM = '/usr/bin/chromium';
const REGISTRY_IP = '203.0.113.10';
const URL_BASE = `http://${REGISTRY_IP}:7443`;
/** Short, so a killed agent is marked offline within seconds. */
const OFFLINE_AFTER_S = 3;
/** docs/console.png is refreshed with AGENTVPN_DOCS_SCREENSHOT=1; other runs leave the committed one alone. */
const DOCS_SCREENSHOT = new URL('../../docs/console.png', import.meta.url).pathname;

describe.runIf(labReady(['ip', 'curl']) && existsSync(CHROMIUM))('console: the registry web console in Chromium', () => {
  let lab: Lab;
  let registry: LabRegistry;
  let browser: Browser | undefined;
  let web: string;
  let admin: string;
  const agents: Record<string, LabAgent> = {};
  const names = ['planner', 'worker', 'worker2'];

  beforeAll(async () => {
    lab = new Lab();
    const hub = await lab.addRouter('hub');
    const regNs = await lab.addNamespace('reg');
    await lab.connect(hub, regNs, { a: '203.0.113.1/24', b: `${REGISTRY_IP}/24`, ifB: 'eth0' });
    await lab.ip(regNs, ['route', 'add', 'default', 'via', '203.0.113.1']);
    registry = await startLabRegistry(lab, regNs, REGISTRY_IP, { offlineAfterSec: OFFLINE_AFTER_S });
    const caps: Record<string, string[]> = { planner: ['llm.plan'], worker: ['llm.inference@1;model=llama3', 'gpu'], worker2: ['llm.inference@2;model=mistral'] };
    for (const [i, name] of names.entries()) {
      const ns = await lab.addNamespace(name);
      await lab.connect(hub, ns, { a: `192.0.2.${16 * i + 1}/28`, b: `192.0.2.${16 * i + 2}/28`, ifB: 'eth0' });
      await lab.ip(ns, ['route', 'add', 'default', 'via', `192.0.2.${16 * i + 1}`]);
      agents[name] = await startLabAgent(lab, ns, name, registry, { caps: caps[name] });
    }
    await waitForFleet(Object.values(agents));

    // The browser's namespace: a route to the registry's network only.
    web = await lab.addNamespace('web');
    await lab.connect(hub, web, { a: '198.51.100.1/24', b: '198.51.100.2/24', ifB: 'eth0' });
    await lab.ip(web, ['route', 'add', '203.0.113.0/24', 'via', '198.51.100.1']);
    const wrapper = join(lab.dir, 'chromium-in-netns');
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${web} ${CHROMIUM} "$@"\n`);
    chmodSync(wrapper, 0o755);
    browser = await chromium.launch({ executablePath: wrapper, args: ['--no-sandbox', `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE ${REGISTRY_IP}`] });
  }, 180_000);

  afterAll(async () => {
    await browser?.close().catch(() => {});
    await lab?.cleanup();
  });

  const row = (page: Page, name: string, state?: string) => page.locator(`tr[data-agent-name="${name}"]${state ? `[data-state="${state}"]` : ''}`);

  it('logs in, shows the agents online with their paths, and sees them go offline without a reload', async () => {
    const created = await lab.run(registry.ns, [process.execPath, AGENTVPN_BIN, 'registry', 'admin-token', 'create', '--db', registry.db, '--json'], { cwd: REPO_ROOT });
    admin = JSON.parse(created.stdout).token as string;
    const context = await browser!.newContext({ viewport: { width: 1200, height: 700 } });
    const page = await context.newPage();
    const pageErrors: string[] = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));
    const requested: string[] = [];
    page.on('request', (r) => requested.push(r.url()));

    await page.goto(`${URL_BASE}/console`);
    await page.locator('#token').waitFor({ state: 'visible' });
    // The running registry learns of a CLI-made admin token within its sweep (~1 s).
    await waitFor(async () => {
      if (await page.locator('#app').isVisible()) return true;
      await page.fill('#token', admin);
      await page.click('button[type=submit]');
      return page.locator('#app').waitFor({ state: 'visible', timeout: 3_000 }).then(() => true, () => false);
    }, { timeoutMs: 20_000, what: 'the console login' });

    for (const name of names) await row(page, name, 'online').waitFor({ timeout: 15_000 });
    expect(await page.locator('#live').getAttribute('data-live')).toBe('true');
    // Each agent reports a direct path to both others (the heartbeat after its paths settle; the page polls every 5 s).
    await waitFor(async () => {
      for (const name of names) if ((await row(page, name).locator('.path[data-kind="direct"]').count()) < 2) return false;
      return true;
    }, { timeoutMs: 30_000, what: 'every agent to report direct paths to the other two' });
    const plannerRow = row(page, 'planner');
    expect(await plannerRow.locator('.caps').textContent()).toContain('llm.plan');
    expect(await plannerRow.textContent()).toMatch(/100\.64\.\d+\.\d+/);
    const paths = await row(page, 'worker').locator('.path').allTextContents();
    console.log(`worker's reported paths: ${paths.join(' | ')}`);

    // The token is nowhere but in the login request's header; the session cookie is HttpOnly and SameSite=Strict.
    expect(requested.some((u) => u.includes(admin))).toBe(false);
    const [cookie] = await context.cookies();
    expect(cookie).toMatchObject({ name: 'avconsole', httpOnly: true, sameSite: 'Strict', path: '/console' });
    expect(requested.every((u) => u.startsWith(URL_BASE))).toBe(true);

    const shot = await page.screenshot({ path: process.env.AGENTVPN_DOCS_SCREENSHOT === '1' ? DOCS_SCREENSHOT : join(lab.dir, 'console.png') });
    console.log(`screenshot: ${shot.length} bytes`);
    await page.evaluate(() => ((window as unknown as { notReloaded: boolean }).notReloaded = true));

    // A dropped stream (its connections reset, as a proxy or NAT might): the page says so and reconnects by itself.
    const reset = await lab.exec(web, ['ss', '-K', 'dst', REGISTRY_IP, 'dport', '=', '7443']);
    expect(reset.code, reset.stderr).toBe(0);
    await page.locator('#live[data-live="false"]').waitFor({ timeout: 5_000 });
    const dropped = await page.locator('#live').textContent();
    await page.locator('#live[data-live="true"]').waitFor({ timeout: 15_000 });
    console.log(`stream reset: the page showed "${dropped}", then live again`);

    // Stopped: the agent leaves, the registry pushes 'offline' at once.
    let t0 = Date.now();
    await lab.kill(agents.worker2.proc!);
    await row(page, 'worker2', 'offline').waitFor({ timeout: 10_000 });
    const leftMs = Date.now() - t0;
    // Killed: no leave; the registry's sweep finds it silent after offline-after.
    t0 = Date.now();
    agents.worker.proc!.kill('SIGKILL');
    await row(page, 'worker', 'offline').waitFor({ timeout: 20_000 });
    const silentMs = Date.now() - t0;
    console.log(`console showed offline: stopped agent after ${leftMs} ms, killed agent after ${silentMs} ms (offline-after ${OFFLINE_AFTER_S} s)`);
    expect(await row(page, 'planner').getAttribute('data-state')).toBe('online');
    expect(await page.locator('#agents-count').textContent()).toBe('1 online of 3');
    expect(await page.evaluate(() => (window as unknown as { notReloaded?: boolean }).notReloaded)).toBe(true);
    expect(pageErrors).toEqual([]);
    await context.close();
  }, 120_000);

  it('renders attacker-chosen strings as text: an agent named <img src=x onerror=...> and markup in every field', async () => {
    const evil = (n: number) => `<img src=x onerror="window.pwned=${n}">`;
    const id = Identity.generate().id;
    const peer = Identity.generate().id;
    // A real capability with markup (as much as the registry's grammar allows), through the registry.
    agents.evil = await startLabAgent(lab, agents.worker2.ns, 'evil', registry, { caps: ['demo;html=<script>alert(1)</script>'], port: 51821 });
    // The registry admits no such agent name; the page must still never parse what it gets as markup
    // (a registry bug, or a malicious registry): the stream and the state are rewritten on their way in.
    const fakeView = {
      record: {
        v: 1, network: registry.network, id, name: evil(1), wgPublicKey: 'x', ipv4: evil(2), ipv6: evil(3), endpoints: [evil(4)], capabilities: [evil(5)],
        seq: 1, issuedAt: 0, expiresAt: 0,
      },
      signature: 'x', online: true, lastSeen: Date.now(), tags: [evil(6)],
    };
    const context = await browser!.newContext({ viewport: { width: 1200, height: 700 } });
    const page = await context.newPage();
    const dialogs: string[] = [];
    page.on('dialog', (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    const extra = {
      members: [{ id: peer, name: evil(7), ipv4: evil(8), tags: [evil(9)], joinedAt: 0 }],
      paths: { [id]: { at: Date.now(), paths: [{ peer, kind: 'direct', endpoint: evil(10), rttMs: 1 }] } },
      policy: { version: 1, text: `{"grants": []} // ${evil(11)}`, setAt: 0 },
      blocked: [{ id: peer, name: evil(12), blockedAt: 0 }],
      refusals: [{ id: 1, agent: peer, at: 0, reason: evil(13), held: 0, size: 0 }],
      tokens: [{ id: evil(14), createdAt: 0, expiresAt: null, usesLeft: null, tags: [evil(15)], usable: true }],
    };
    // Rewritten inside the page (its fetch wrapped before its script runs), so every request still
    // goes from the browser's namespace to the registry and nowhere else.
    await page.addInitScript(({ view, add }) => {
      const real = window.fetch.bind(window);
      window.fetch = async (input: RequestInfo | URL, init?: RequestInit) => {
        const url = String(input instanceof Request ? input.url : input);
        if (url.includes('/console/api/events')) {
          const body = `event: snapshot\ndata: ${JSON.stringify({ agents: [view], policy: null })}\n\n`;
          return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
        }
        const answer = await real(input, init);
        if (!url.includes('/console/api/state') || !answer.ok) return answer;
        const state = await answer.json() as Record<string, unknown>;
        Object.assign(state, add, { members: [...(state.members as object[]), ...add.members] });
        return new Response(JSON.stringify(state), { status: 200, headers: { 'content-type': 'application/json' } });
      };
    }, { view: fakeView, add: extra });
    await page.goto(`${URL_BASE}/console`);
    await page.fill('#token', admin);
    await page.click('button[type=submit]');
    const fake = page.locator(`tr[data-agent-id="${id}"]`);
    await fake.waitFor({ timeout: 15_000 });
    await page.locator(`tr[data-agent-id="${peer}"]`).waitFor({ timeout: 15_000 });
    expect(await fake.locator('.name').textContent()).toBe(evil(1));
    expect(await fake.locator('.endpoints').textContent()).toBe(evil(4));
    expect(await fake.locator('.caps').textContent()).toBe(evil(5));
    expect(await page.locator(`tr[data-agent-id="${peer}"] .name`).textContent()).toBe(evil(7));
    expect(await page.locator('#policy').textContent()).toContain(evil(11));
    const injected = await page.evaluate(() => document.querySelectorAll('#app img, #app script, #app iframe, #app svg').length);
    const pwned = await page.evaluate(() => (window as unknown as { pwned?: number }).pwned);
    console.log(`markup in 15 fields: ${injected} elements made from it, window.pwned=${String(pwned)}, ${dialogs.length} dialogs`);
    expect({ injected, pwned, dialogs }).toEqual({ injected: 0, pwned: undefined, dialogs: [] });

    // And the real agent's capability, as the registry serves it, is text too (a fresh page, nothing rewritten).
    const plain = await context.newPage();
    plain.on('dialog', (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    await plain.goto(`${URL_BASE}/console`);
    await row(plain, 'evil', 'online').waitFor({ timeout: 15_000 });
    expect(await row(plain, 'evil').locator('.caps').textContent()).toBe('demo;html=<script>alert(1)</script>');
    expect(await plain.evaluate(() => document.querySelectorAll('#app script').length)).toBe(0);
    expect(dialogs).toEqual([]);
    await context.close();
  }, 90_000);
});
