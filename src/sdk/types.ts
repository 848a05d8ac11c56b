/** The SDK's public types: what each call of the local daemon answers (JSON-safe, times in unix ms). */
export type { PeerInfo, WhoisInfo } from '../daemon/admission.js';
export type { DeviceStatus, PeerStatus, FirewallStatus } from '../daemon/status-types.js';
export type { DaemonEvent, DaemonEventType, EventAgent, PathKind } from '../daemon/control-protocol.js';

export interface ConnectOptions {
  /** Which daemon (default agentvpn0): its socket is /run/agentvpn/<interface>.sock (AGENTVPN_RUN_DIR moves it). */
  interface?: string;
  /** A socket path of its own (a run dir mounted into a container, say); overrides `interface` for the path. */
  socketPath?: string;
  /** How long one call may wait for its answer (default 5000 ms). */
  timeoutMs?: number;
}

/** Who this agent is in its network (registry mode). */
export interface SelfInfo {
  id: string;
  name: string;
  network: string;
  ipv4: string;
  ipv6: string;
  wgPublicKey: string;
  capabilities: string[];
  tags: string[];
  registry: string;
  registryConnected: boolean;
}

export interface Addresses {
  name: string;
  ipv4: string;
  ipv6: string;
}

/** One disco pong: the path it took and its round trip. */
export interface PingReply {
  seq: number;
  path: 'direct' | 'relay';
  endpoint: string;
  rttMs: number;
}

export interface PingResult {
  name: string;
  ipv4: string;
  /** One per ping, in order: a pong, or `{ seq, timeout: true }` when none came back in time. */
  replies: (PingReply | { seq: number; timeout: true })[];
}
