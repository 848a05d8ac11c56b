import { chainDescendsFrom, parseKeyStatement, statementHash, verifyKeyChain } from '../identity/rotation.js';
import { idKeyOf, MAX_TRUST_ENTRIES, type TrustEntry, type TrustLookup, type TrustMode, type TrustOffer, type TrustState, type TrustUpdate } from './store.js';

/**
 * Admission by trust: whether an agent's (already verified) record may become a peer, and how
 * the trust store changes. A pure function of the store, the mode and the record.
 *
 * | situation                                             | tofu               | approve            | open             |
 * | ----------------------------------------------------- | ------------------ | ------------------ | ---------------- |
 * | blocked ID, or a name/IPv4 held by a blocked entry    | refused            | refused            | refused          |
 * | new ID, name and IPv4                                 | pinned, admitted   | pending, refused   | pinned, admitted |
 * | known name or IPv4 with another ID                    | changed, refused   | changed, refused   | replaced, admitted |
 * | known ID, pinned key                                  | admitted*          | admitted*          | admitted         |
 * | known ID, a key its chain rotates to from the pinned  | pin moves, admitted* | pin moves, admitted* | pin moves      |
 * | known ID, an older key of the chain (a replay)        | refused, unchanged | refused, unchanged | pin moves        |
 * | known ID, another key (no valid rotation: a fork)     | changed, refused   | changed, refused   | pin moves        |
 *
 * (*) when the entry is pinned, approved or changed (a changed entry keeps trusting its pinned
 * key; the offer waits for `trust accept`); a pending entry is admitted only once approved
 * (in tofu and open modes a pending entry is pinned).
 * "From the pinned": the chain holds the pinned key at its pinned place, and (once we saw a chain)
 * the very statement we pinned, so a fork made with old keys (say from a stolen backup) is caught.
 */

/** The parts of an AgentView that trust looks at (the record must have passed verifyRecord). */
export interface TrustView {
  record: { id: string; name: string; ipv4: string; key?: string };
  chain?: readonly unknown[];
}

export interface TrustDecision {
  admit: boolean;
  /** The state of the entry this decision is about (for a collision: of the entry collided with). */
  state: TrustState;
  /** A refusal or a security-relevant change: log it (warn) and show it (status, trust list). */
  alert?: string;
  /** An ordinary event worth an info line (first pin, rotation followed). */
  note?: string;
  update: TrustUpdate;
}

const NO_CHANGE: TrustUpdate = { put: [], remove: [] };

function short(id: string): string {
  return id.slice(0, 12) + '…';
}

/** The key a view proves and its chain position, or a problem (a record without a chain is at seq 0 with its ID key). */
function presented(view: TrustView): { key: string; keySeq: number; statement?: string } | string {
  const idKey = idKeyOf(view.record.id);
  if (!idKey) return 'not a valid agent ID';
  const key = view.record.key ?? idKey;
  if (view.chain === undefined) return key === idKey ? { key, keySeq: 0 } : 'a rotated key without its key chain';
  const check = verifyKeyChain(view.record.id, view.chain);
  if (!check.ok) return `key chain: ${check.problem}`;
  if (Buffer.from(check.currentKey).toString('base64') !== key) return 'the record is not signed by the current key of its chain';
  return { key, keySeq: check.seq, statement: statementHash(parseKeyStatement(view.chain[view.chain.length - 1])!) };
}

/** Whether the chain holds `entry`'s key at its place, and the statement we pinned if we pinned one. */
function descends(chain: readonly unknown[] | undefined, entry: TrustEntry): boolean {
  if (!chain || !chainDescendsFrom(chain, Buffer.from(entry.key, 'base64'))) return false;
  const at = parseKeyStatement(chain[entry.keySeq]);
  if (!at || at.key !== entry.key) return false;
  return entry.statement === undefined || statementHash(at) === entry.statement;
}

/** The entry with `offer` recorded; the same offer again changes nothing (so a repeated record costs no write). */
function withOffer(e: TrustEntry, offer: TrustOffer, state: TrustState): TrustEntry {
  const same = e.offered && e.offered.id === offer.id && e.offered.key === offer.key && e.offered.name === offer.name && e.offered.ipv4 === offer.ipv4;
  return { ...e, state, offered: same ? e.offered! : offer };
}

export function decide(store: TrustLookup, mode: TrustMode, view: TrustView, now = Date.now()): TrustDecision {
  const r = view.record;
  const own = store.get(r.id);
  const shown = presented(view);
  if (typeof shown === 'string') {
    return { admit: false, state: own?.state ?? 'pending', alert: `agent ${r.name} (${short(r.id)}) refused: ${shown}`, update: NO_CHANGE };
  }
  const offer: TrustOffer = { id: r.id, name: r.name, ipv4: r.ipv4, key: shown.key, keySeq: shown.keySeq, ...(shown.statement ? { statement: shown.statement } : {}), at: now };
  const fresh: TrustEntry = {
    id: r.id, name: r.name, ipv4: r.ipv4, key: shown.key, keySeq: shown.keySeq, ...(shown.statement ? { statement: shown.statement } : {}),
    state: 'pinned', firstSeen: own?.firstSeen ?? now, lastSeen: now,
  };

  if (own?.state === 'blocked') return { admit: false, state: 'blocked', alert: `blocked agent ${r.name} (${short(r.id)}) refused`, update: NO_CHANGE };

  const rivals = [store.byName(r.name), store.byIpv4(r.ipv4)].filter((e, i, all): e is TrustEntry => !!e && e.id !== r.id && all.indexOf(e) === i);
  if (rivals.length > 0) {
    const blocked = rivals.some((e) => e.state === 'blocked');
    if (mode === 'open' && !blocked) {
      return { admit: true, state: 'pinned', note: `${r.name} (${r.ipv4}) is now agent ${short(r.id)} (open mode: admitted)`, update: { remove: rivals.map((e) => e.id), put: [{ ...fresh, state: own?.state ?? 'pinned' }] } };
    }
    // A rival awaiting approval stays pending: a collision must never count as an approval.
    const put = rivals.map((e) => withOffer(e, offer, e.state === 'blocked' || e.state === 'pending' ? e.state : 'changed'));
    const held = rivals.map((e) => `${e.name ?? e.id} (${e.ipv4 ?? '-'}, agent ${short(e.id)})`).join(' and ');
    return {
      admit: false, state: blocked ? 'blocked' : 'changed', update: { remove: [], put },
      alert: `${held} now shows another agent ${short(r.id)}: refused${blocked ? ' (blocked)' : ` until \`agentvpn trust accept ${rivals[0].name ?? r.name}\``}`,
    };
  }

  if (!own) {
    // A full store gives up the pending entry seen longest ago (nobody decided on it; it comes back
    // as pending if that agent shows up again); pins, approvals and blocks are never given up.
    const evict = store.size >= MAX_TRUST_ENTRIES ? store.oldestPending() : undefined;
    if (store.size >= MAX_TRUST_ENTRIES && !evict) return { admit: false, state: 'pending', alert: `trust store full (${MAX_TRUST_ENTRIES} entries): agent ${r.name} refused`, update: NO_CHANGE };
    const remove = evict ? [evict.id] : [];
    if (mode === 'approve') {
      return { admit: false, state: 'pending', alert: `new agent ${r.name} (${short(r.id)}) awaits approval: \`agentvpn trust approve ${r.name}\``, update: { remove, put: [{ ...fresh, state: 'pending' }] } };
    }
    return { admit: true, state: 'pinned', note: `pinned ${r.name} (${short(r.id)}) on first use`, update: { remove, put: [fresh] } };
  }

  // A pending entry: in approve mode it waits; a mode without approval pins it.
  const state: TrustState = own.state === 'pending' && mode !== 'approve' ? 'pinned' : own.state;
  const admit = state !== 'pending';
  const waiting = admit ? undefined : `agent ${r.name} (${short(r.id)}) awaits approval: \`agentvpn trust approve ${r.name}\``;
  const keep = (e: TrustEntry, note?: string): TrustDecision => ({ admit, state, ...(waiting ? { alert: waiting } : {}), ...(note ? { note } : {}), update: { remove: [], put: [e] } });

  if (shown.key === own.key) {
    if (mode !== 'open' && own.statement && shown.statement && shown.statement !== own.statement) {
      return { admit: false, state: 'changed', alert: `agent ${r.name} (${short(r.id)}) shows a forked key chain: refused until \`agentvpn trust accept ${own.name ?? r.name}\``, update: { remove: [], put: [withOffer(own, offer, 'changed')] } };
    }
    const statement = own.statement ?? shown.statement;
    return keep({ ...own, state, name: r.name, ipv4: r.ipv4, ...(statement ? { statement } : {}), lastSeen: now });
  }
  if (mode === 'open') return keep({ ...fresh, state }, `agent ${r.name} now uses key seq ${shown.keySeq} (open mode)`);
  if (shown.keySeq < own.keySeq) {
    return { admit: false, state: own.state, alert: `agent ${r.name} (${short(r.id)}) refused: an older key (seq ${shown.keySeq}, pinned seq ${own.keySeq}), a replay`, update: NO_CHANGE };
  }
  if (shown.keySeq > own.keySeq && descends(view.chain, own)) {
    return keep({ ...fresh, state, firstSeen: own.firstSeen, ...(own.offered ? { offered: own.offered } : {}) }, `agent ${r.name} rotated its key to seq ${shown.keySeq}`);
  }
  return {
    admit: false, state: 'changed', update: { remove: [], put: [withOffer(own, offer, 'changed')] },
    alert: `agent ${r.name} (${short(r.id)}) shows another key without a valid rotation from the pinned one: refused until \`agentvpn trust accept ${own.name ?? r.name}\``,
  };
}
