/**
 * An attacker on the path between an agent and its registry, on loopback: forwards every
 * request, keeps a copy of it (method, path, headers, body), and can send any copy again.
 * Tests point a RegistryClient at `url` and replay what it captured.
 */
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface CapturedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface ReplayAnswer {
  status: number;
  body: Record<string, unknown>;
}

export class CaptureProxy {
  readonly captured: CapturedRequest[] = [];
  private server: Server | undefined;
  url = '';

  constructor(private target: { host: string; port: number }) {}

  /** Forwards to another registry port from now on (after a restart on a new port). */
  retarget(port: number): void {
    this.target = { ...this.target, port };
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const copy = { method: req.method ?? 'GET', path: req.url ?? '/', headers: { ...req.headers }, body: Buffer.concat(chunks) };
        this.captured.push(copy);
        const up = request({ ...this.target, method: copy.method, path: copy.path, headers: copy.headers }, (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        });
        up.on('error', () => res.destroy());
        res.on('close', () => up.destroy());
        up.end(copy.body);
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', () => resolve()));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** The captured requests matching method and a path prefix, oldest first. */
  find(method: string, pathPrefix: string): CapturedRequest[] {
    return this.captured.filter((c) => c.method === method && c.path.startsWith(pathPrefix));
  }

  /** Sends a captured request again, straight to the registry; reads the first answer bytes only for streams. */
  replay(c: CapturedRequest): Promise<ReplayAnswer> {
    return new Promise((resolve, reject) => {
      const up = request({ ...this.target, method: c.method, path: c.path, headers: c.headers }, (answer) => {
        const status = answer.statusCode ?? 0;
        if (String(answer.headers['content-type']).startsWith('text/event-stream')) {
          up.destroy();
          return resolve({ status, body: {} });
        }
        const chunks: Buffer[] = [];
        answer.on('data', (d: Buffer) => chunks.push(d));
        answer.on('end', () => {
          let body: Record<string, unknown>;
          try {
            body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            body = {};
          }
          resolve({ status, body });
        });
      });
      up.on('error', reject);
      up.end(c.body);
    });
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
