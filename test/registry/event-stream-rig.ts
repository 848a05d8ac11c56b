/**
 * What the event-hub tests share (event-catch-up, stream-resume): fake fleet entries, an EventHub
 * on a real HTTP server, streams opened to it, and an SSE reader that applies snapshot and events
 * to a map of views as the agent's client does, keeping them across reconnects.
 */
import { createServer, get, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { EventHub, type Viewable } from '../../src/registry/events.js';
import type { AgentView } from '../../src/registry/protocol.js';
import { VIEW_DIGEST_HEADER, bucketOf } from '../../src/registry/view-digest.js';

export const NET = 'n';

export class FakeEntry implements Viewable {
  eventSeq = 0;
  /** `pad`: characters added to the view (1,000: ~1 KB views, so 8,000 make an 8 MB snapshot). */
  constructor(readonly id: string, readonly version: number, readonly online = true, readonly pad = 0) {}
  get json(): string {
    return JSON.stringify({ record: { id: this.id }, version: this.version, online: this.online, pad: 'x'.repeat(this.pad) });
  }

  /** What a view digest covers: the version stands for the record's seq. */
  get view(): AgentView {
    return { record: { id: this.id, seq: this.version } as AgentView['record'], signature: 'sig', online: this.online, lastSeen: 0 };
  }
}

export interface View {
  version: number;
  online: boolean;
}

/** An SSE reader, linear in what it reads (the snapshot is one frame of megabytes). */
export class SseReader {
  readonly views = new Map<string, View>();
  /** Events read on the current connection, by kind. */
  kinds: Record<string, number> = {};
  /** Characters read on the current connection. */
  chars = 0;
  lastId: string | undefined;
  policy: unknown;
  /** Chunks of the block under way, joined only when it ends. */
  private parts: string[] = [];

  /** Reads `res` (a new connection: the counts start again, the views are kept); `onData` runs after each chunk. */
  read(res: IncomingMessage, onData: () => void = () => {}): void {
    this.kinds = {};
    this.chars = 0;
    this.parts = [];
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      this.chars += chunk.length;
      this.take(chunk);
      onData();
    });
  }

  private take(chunk: string): void {
    // A block ends in this chunk, or across its start ("\n" | "\n").
    const last = this.parts[this.parts.length - 1];
    if (!chunk.includes('\n\n') && !(chunk.startsWith('\n') && last?.endsWith('\n'))) {
      this.parts.push(chunk);
      return;
    }
    let text = this.parts.join('') + chunk;
    this.parts = [];
    let end = text.indexOf('\n\n', Math.max(0, text.length - chunk.length - 1));
    while (end >= 0) {
      this.apply(text.slice(0, end));
      text = text.slice(end + 2);
      end = text.indexOf('\n\n');
    }
    if (text) this.parts.push(text);
  }

  private apply(block: string): void {
    const event = /^event: (.*)$/m.exec(block)?.[1];
    const data = /^data: (.*)$/m.exec(block)?.[1];
    if (event && data !== undefined) {
      this.kinds[event] = (this.kinds[event] ?? 0) + 1;
      const d = JSON.parse(data);
      if (event === 'snapshot') {
        this.views.clear();
        for (const a of d.agents) this.views.set(a.record.id, { version: a.version, online: a.online });
        this.policy = d.policy;
      } else if (event === 'removed') {
        this.views.delete(d.id);
      } else if (event === 'policy') {
        this.policy = d;
      } else if (event === 'bucket') {
        const kept = new Set(d.ids as string[]);
        for (const id of [...this.views.keys()]) if (bucketOf(id) === d.bucket && !kept.has(id)) this.views.delete(id);
      } else if (event !== 'resumed') {
        this.views.set(d.agent.record.id, { version: d.agent.version, online: d.agent.online });
      }
    }
    const id = /^id: (.*)$/m.exec(block)?.[1];
    if (id) this.lastId = id; // after the event is applied, as EventSource does
  }
}

/** An EventHub on a real HTTP server; the credential is the request's `x-test-credential` (the registry's is its signer). */
export class HubRig {
  hub: EventHub | undefined;
  port = 0;
  private server: Server | undefined;
  private readonly responses: IncomingMessage[] = [];

  /** Serves `agents` after adding `count` of them (a0, a1, ...; views padded by `pad`). */
  async serve(agents: Map<string, FakeEntry>, policyJson: () => string, o: { count: number; pad?: number; keepAliveMs?: number }): Promise<EventHub> {
    for (let i = 0; i < o.count; i++) agents.set(`a${i}`, new FakeEntry(`a${i}`, 0, true, o.pad ?? 0));
    const h = (this.hub = new EventHub({ streams: 10, streamsPerCredential: 10 }, o.keepAliveMs));
    h.start();
    this.server = createServer((req, res) => {
      const last = req.headers['last-event-id'];
      const digest = req.headers[VIEW_DIGEST_HEADER];
      const credential = `token:${req.headers['x-test-credential'] ?? 't'}`;
      void h.subscribe(NET, credential, res, () => agents.values(), policyJson, null, typeof last === 'string' ? last : undefined, credential,
        { digest: typeof digest === 'string' ? digest : undefined, agent: (id) => agents.get(id) });
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as AddressInfo).port;
    return h;
  }

  /** `digest`: a view digest to send (VIEW_DIGEST_HEADER). */
  open(lastEventId?: string, credential = 't', digest?: string): Promise<IncomingMessage> {
    const headers = { 'x-test-credential': credential, ...(lastEventId ? { 'last-event-id': lastEventId } : {}), ...(digest ? { [VIEW_DIGEST_HEADER]: digest } : {}) };
    return new Promise((resolve) => get({ host: '127.0.0.1', port: this.port, path: '/', headers }, (r) => resolve(this.responses[this.responses.push(r) - 1])));
  }

  /** Stops everything; a failed test's reader must not go on reading into the next. */
  async close(): Promise<void> {
    for (const r of this.responses.splice(0)) r.destroy();
    this.hub?.stop();
    this.server?.closeAllConnections();
    await new Promise((r) => this.server?.close(r));
  }
}
