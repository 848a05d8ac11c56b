import { describe, expect, it } from 'vitest';
import { EventHub, MAX_SUBSCRIBERS } from '../../src/daemon/event-hub.js';
import { FleetEventSource } from '../../src/daemon/fleet-events.js';
import type { StreamSink } from '../../src/daemon/control-stream.js';
import type { AgentView } from '../../src/registry/client.js';

/** A subscriber that keeps what it is sent, parsed. */
function listen(hub: EventHub, params: unknown = {}): { events: Record<string, unknown>[]; close(): void } {
  const events: Record<string, unknown>[] = [];
  const sub = hub.subscribe(params);
  const sink: StreamSink = { send: (json) => events.push(JSON.parse(json) as Record<string, unknown>) };
  sub.attach(sink);
  return { events, close: () => sub.close() };
}

function view(id: string, online: boolean, name = id): AgentView {
  return {
    record: { id, name, ipv4: '100.64.0.7', ipv6: 'fd00::7', wgPublicKey: Buffer.alloc(32, 7).toString('base64') },
    online, lastSeen: 0, signature: '',
  } as unknown as AgentView;
}

describe('event hub', () => {
  it('caps subscribers at MAX_SUBSCRIBERS with a clear error; a closed one frees its slot', () => {
    const hub = new EventHub();
    const subs = Array.from({ length: MAX_SUBSCRIBERS }, () => listen(hub));
    expect(() => hub.subscribe({})).toThrow(expect.objectContaining({ code: 'TOO_MANY_SUBSCRIBERS' }));
    subs[0].close();
    expect(() => listen(hub)).not.toThrow();
    expect(hub.stats.refusedSubscribers).toBe(1);
  });

  it('refuses unknown event types', () => {
    const hub = new EventHub();
    expect(() => hub.subscribe({ types: ['peer.online', 'everything'] })).toThrow(expect.objectContaining({ code: 'BAD_EVENT_TYPE' }));
    expect(() => hub.subscribe({ types: 'peer.online' })).toThrow(expect.objectContaining({ code: 'BAD_EVENT_TYPE' }));
    const only = listen(hub, { types: ['peer.offline'] });
    hub.publish({ type: 'peer.online', id: 'a', name: 'a', ipv4: '', ipv6: '' });
    hub.publish({ type: 'peer.offline', id: 'a', name: 'a', ipv4: '', ipv6: '' });
    expect(only.events.map((e) => e.type)).toEqual(['peer.offline']);
  });

  it('a flapping agent gets 20 events per 10 s; the next one after counts the rest in `suppressed`', () => {
    let now = 1_000_000;
    const hub = new EventHub(() => now);
    const sub = listen(hub);
    for (let i = 0; i < 5000; i++) hub.publish({ type: i % 2 ? 'peer.online' : 'peer.offline', id: 'flappy', name: 'flappy', ipv4: '', ipv6: '' });
    hub.publish({ type: 'peer.online', id: 'calm', name: 'calm', ipv4: '', ipv6: '' });
    console.log(`flapping presence: 5000 published, ${sub.events.length - 1} delivered for it, ${hub.stats.suppressed} suppressed`);
    expect(sub.events.filter((e) => e.id === 'flappy')).toHaveLength(20);
    expect(sub.events.filter((e) => e.id === 'calm')).toHaveLength(1); // another agent is not starved by it
    now += 10_000;
    hub.publish({ type: 'peer.offline', id: 'flappy', name: 'flappy', ipv4: '', ipv6: '' });
    expect(sub.events.at(-1)).toMatchObject({ id: 'flappy', type: 'peer.offline', suppressed: 4980 });
  });
});

describe('fleet event source', () => {
  function setup(admitted: Set<string>) {
    const hub = new EventHub();
    const sub = listen(hub);
    const source = new FleetEventSource({
      hub, isAdmitted: (id) => admitted.has(id),
      pathOf: () => ({ kind: 'relay', endpoint: '203.0.113.10:3478', rttMs: 3.25 }),
    });
    return { sub, source };
  }

  it('presence: an admitted agent coming online and going offline; unadmitted ones say nothing', () => {
    const { sub, source } = setup(new Set(['a']));
    source.observe(view('a', false)); // a newcomer that is offline: nothing new
    source.observe(view('a', true));
    source.observe(view('a', true)); // repeated record: nothing
    source.observe(view('a', false));
    source.observe(view('stranger', true));
    expect(sub.events.map((e) => `${e.type} ${e.id}`)).toEqual(['peer.online a', 'peer.offline a']);
    expect(sub.events[0]).toMatchObject({ name: 'a', ipv4: '100.64.0.7', ipv6: 'fd00::7' });
  });

  it('path changes and trust alerts come from the audit sink; a removed online agent goes offline', async () => {
    const { sub, source } = setup(new Set(['a']));
    source.observe(view('a', true));
    source.audited('path.changed', 'a', { kind: 'direct', endpoint: '192.0.2.18:51820', rttUs: 612 });
    source.audited('path.changed', 'a', { kind: 'relay', endpoint: '192.0.2.18:51820', reason: 'the direct path stopped answering' });
    source.audited('path.changed', 'base64key=', { kind: 'relay', endpoint: 'x' }); // not an admitted agent
    await Promise.resolve(); // path changes are read once the path layer made them
    source.audited('trust.refused', 'b', { name: 'b', state: 'changed', alert: 'b offers another key' });
    source.audited('peer.removed', 'a', { name: 'a' });
    expect(sub.events.map((e) => e.type)).toEqual(['peer.online', 'path.changed', 'path.changed', 'trust.alert', 'peer.offline']);
    expect(sub.events[1]).toMatchObject({ id: 'a', name: 'a', kind: 'direct', endpoint: '192.0.2.18:51820', rttMs: 0.61 });
    expect(sub.events[2]).toMatchObject({ kind: 'relay', endpoint: '203.0.113.10:3478', rttMs: 3.25, reason: 'the direct path stopped answering' });
    expect(sub.events[3]).toMatchObject({ id: 'b', name: 'b', state: 'changed', alert: 'b offers another key' });
    expect(sub.events[4]).toMatchObject({ id: 'a', reason: 'removed' });
  });
});
