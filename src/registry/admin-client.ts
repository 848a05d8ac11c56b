import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { AgentVpnError } from '../errors.js';
import type { AgentListing } from './operator.js';

/**
 * The operator's side of the admin API (admin-routes.ts), for `agentvpn registry agent|policy
 * --registry URL` from a host without the database. Answers are the same as the database
 * commands give.
 */

/** An admin answer is an agent list at most (10,000 agents in a few MiB). */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;
const TIMEOUT_MS = 10_000;

export class AdminClient {
  private readonly base: URL;
  private readonly ca: Buffer | undefined;

  constructor(url: string, private readonly token: string, private readonly network: string, caFile?: string) {
    try {
      this.base = new URL(url);
    } catch {
      throw new AgentVpnError('BAD_REGISTRY_URL', `invalid registry URL "${url}"`, 'give the registry as http(s)://HOST:PORT');
    }
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') {
      throw new AgentVpnError('BAD_REGISTRY_URL', `registry URL "${url}" is not http or https`, 'give the registry as http(s)://HOST:PORT');
    }
    if (caFile) {
      try {
        this.ca = readFileSync(caFile);
      } catch (e) {
        throw new AgentVpnError('REGISTRY_CA', `cannot read the registry CA certificate ${caFile}: ${(e as Error).message}`, 'check the CA file path and its permissions');
      }
    }
  }

  list(): Promise<AgentListing> {
    return this.call('GET', 'agents') as unknown as Promise<AgentListing>;
  }

  async remove(target: string, block: boolean): Promise<{ id: string; name: string }> {
    const path = `agents/${encodeURIComponent(target)}${block ? '/block' : ''}`;
    return (await this.call(block ? 'POST' : 'DELETE', path)) as { id: string; name: string };
  }

  async setPolicy(text: string): Promise<{ version: number }> {
    return (await this.call('PUT', 'policy', text)) as { version: number };
  }

  async getPolicy(): Promise<{ version: number; policy: string; setAt: number } | null> {
    return ((await this.call('GET', 'policy')) as { policy: { version: number; policy: string; setAt: number } | null }).policy;
  }

  private call(method: string, path: string, body?: string): Promise<Record<string, unknown>> {
    const url = new URL(`${this.base.pathname.replace(/\/+$/, '')}/v1/admin/${path}?network=${encodeURIComponent(this.network)}`, this.base);
    const transport = url.protocol === 'https:' ? https : http;
    const payload = body === undefined ? undefined : Buffer.from(body);
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}`, accept: 'application/json' };
    if (payload) headers['content-length'] = String(payload.length);
    return new Promise((resolve, reject) => {
      const req = transport.request(url, { method, headers, ca: this.ca, timeout: TIMEOUT_MS }, (res) => {
        const chunks: Buffer[] = [];
        let total = 0;
        res.on('data', (c: Buffer) => {
          total += c.length;
          if (total > MAX_ANSWER_BYTES) res.destroy(new Error('answer too large'));
          else chunks.push(c);
        });
        res.on('error', (e) => reject(unreachable(this.base.href, e)));
        res.on('end', () => {
          let answer: { ok?: unknown; code?: unknown; message?: unknown; hint?: unknown };
          try {
            answer = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            return reject(new AgentVpnError('REGISTRY_BAD_RESPONSE', `the registry answered HTTP ${res.statusCode} without an agentvpn answer`, 'check that the URL points at an agentvpn registry'));
          }
          if (answer.ok === true) return resolve(answer as Record<string, unknown>);
          reject(new AgentVpnError(String(answer.code ?? 'REGISTRY_BAD_RESPONSE'), String(answer.message ?? `HTTP ${res.statusCode}`), String(answer.hint ?? '')));
        });
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${TIMEOUT_MS / 1000} s`)));
      req.on('error', (e) => reject(unreachable(this.base.href, e)));
      req.end(payload);
    });
  }
}

function unreachable(url: string, e: Error): AgentVpnError {
  return new AgentVpnError('REGISTRY_UNREACHABLE', `cannot reach the registry at ${url}: ${e.message}`, 'check the --registry URL and that the registry is running and reachable');
}
