import { timers } from './constants.js';
import type { Peer } from './peer.js';

/** What the timers may ask the device to do for a peer. */
export interface TimerActions {
  /** Start (retry = false) or retransmit (retry = true) a handshake initiation. */
  initiate(peer: Peer, now: number, retry: boolean): void;
  keepalive(peer: Peer, now: number): void;
  /** Stop trying to handshake; drop queued packets. */
  giveUp(peer: Peer, now: number): void;
  /** Erase all session keys: nothing has happened for a long time. */
  expire(peer: Peer, now: number): void;
}

/**
 * The whitepaper's timer rules (section 6), evaluated for one peer on each device tick rather
 * than with per-packet timer objects: the packet path only stamps times on the peer.
 */
export function runPeerTimers(peer: Peer, now: number, act: TimerActions): void {
  if (peer.handshakeAttemptStartedAt !== null && now >= peer.nextRetransmitAt) {
    if (now - peer.handshakeAttemptStartedAt >= timers.rekeyAttemptTime) act.giveUp(peer, now);
    else act.initiate(peer, now, true);
  }

  const hasSession = peer.keypairs.current !== null;
  // Passive keepalive: we got data but had nothing to send back for a while.
  if (hasSession && peer.lastDataReceivedAt > peer.lastSentAt && now - peer.lastDataReceivedAt >= timers.keepaliveTimeout) {
    act.keepalive(peer, now);
  }
  // We sent data and heard nothing back: the session may be dead, so handshake again.
  if (peer.unansweredSince !== null && now - peer.unansweredSince >= timers.keepaliveTimeout + timers.rekeyTimeout) {
    peer.unansweredSince = null;
    act.initiate(peer, now, false);
  }
  // Persistent keepalive keeps NAT mappings open even when idle.
  if (peer.persistentKeepalive > 0 && now - peer.lastSentAt >= peer.persistentKeepalive * 1000) {
    act.keepalive(peer, now);
  }
  if (peer.latestHandshakeAt !== null && now - peer.latestHandshakeAt >= timers.rejectAfterTime * 3 && peer.keypairs.all().length > 0) {
    act.expire(peer, now);
  }
}
