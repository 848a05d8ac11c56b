/**
 * A registry on a fresh SQLite file with a capturing proxy in front (capture-proxy.ts), made
 * before each test of the describe block that calls it and removed after it: the replay and
 * read-session tests' attacker on the path. Read its fields inside the tests, after beforeEach.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach } from 'vitest';
import { Identity } from '../../src/identity/identity.js';
import { RegistryClient } from '../../src/registry/client.js';
import { signRecord } from '../../src/registry/record.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { CaptureProxy } from './capture-proxy.js';
import { recordFor } from './hostile-helpers.js';

export interface ProxiedRegistry {
  reg: RunningRegistry;
  /** Its SQLite file. */
  db: string;
  proxy: CaptureProxy;
  /** A join token of the default network. */
  token: string;
  /** Clients closed after the test. */
  clients: RegistryClient[];
  /** An agent that joined and published, talking through the proxy unless `url` says otherwise. */
  agent(name: string, url?: string): Promise<{ identity: Identity; client: RegistryClient }>;
  /** Stops the registry and starts it again on the same database; the proxy follows it. */
  restart(): Promise<void>;
}

export function proxiedRegistry(prefix: string, network = 'default'): ProxiedRegistry {
  let dir = '';
  const start = () => startRegistry({ db: f.db });
  const f: ProxiedRegistry = {
    reg: undefined as unknown as RunningRegistry,
    db: '',
    proxy: undefined as unknown as CaptureProxy,
    token: '',
    clients: [],
    async agent(name, url = f.proxy.url) {
      const identity = Identity.generate();
      const client = new RegistryClient({ url, identity, network, timeoutMs: 5000 });
      f.clients.push(client);
      const j = await client.join(name, f.token);
      await client.publish(signRecord(identity, recordFor(identity, j, name)));
      return { identity, client };
    },
    async restart() {
      await f.reg.stop();
      f.reg = await start();
      f.proxy.retarget(f.reg.port);
    },
  };
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), prefix));
    f.db = join(dir, 'registry.db');
    f.reg = await start();
    f.token = await f.reg.createToken();
    f.proxy = new CaptureProxy({ host: '127.0.0.1', port: f.reg.port });
    await f.proxy.start();
  });
  afterEach(async () => {
    for (const c of f.clients.splice(0)) c.close();
    await f.proxy.stop();
    await f.reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return f;
}
