/**
 * Protocol constants from the WireGuard whitepaper (section 6) and wire-format sizes.
 * Timers are in milliseconds. `timers` is a mutable object so a test-only setting
 * (AGENTVPN_TEST_TIMER_SCALE) can shorten them to exercise rekeying quickly.
 */

export const MESSAGE_INITIATION = 1;
export const MESSAGE_RESPONSE = 2;
export const MESSAGE_COOKIE_REPLY = 3;
export const MESSAGE_TRANSPORT = 4;

export const INITIATION_SIZE = 148;
export const RESPONSE_SIZE = 92;
export const COOKIE_REPLY_SIZE = 64;
/** type(1) reserved(3) receiver(4) counter(8) */
export const TRANSPORT_HEADER_SIZE = 16;
export const TRANSPORT_MIN_SIZE = TRANSPORT_HEADER_SIZE + 16;

/** Data messages are padded to a multiple of 16 bytes to hide exact lengths. */
export const PADDING_MULTIPLE = 16;

/**
 * A keypair is never used past 2^64 - 2^13 - 1 messages. Counters are JS numbers on our side,
 * exact only to 2^53, so we cap there: no real session gets near either bound.
 */
export const REJECT_AFTER_MESSAGES = Number.MAX_SAFE_INTEGER;
/** The whitepaper rekeys after 2^60 messages; scaled down with the cap above so it can still trigger. */
export const REKEY_AFTER_MESSAGES = REJECT_AFTER_MESSAGES - 2 ** 16;

const base = {
  /** The initiator rekeys a session this old when it next sends. */
  rekeyAfterTime: 120_000,
  /** No keypair is used for sending or receiving after this age. */
  rejectAfterTime: 180_000,
  /** Give up a handshake (and drop queued packets) after trying this long. */
  rekeyAttemptTime: 90_000,
  /** Retransmit an unanswered initiation after this long (plus jitter). */
  rekeyTimeout: 5_000,
  /** Jitter added to each retransmission, so peers do not handshake in lockstep. */
  rekeyTimeoutJitterMax: 333,
  /** Send an empty keepalive when we received data but sent nothing for this long. */
  keepaliveTimeout: 10_000,
  /** A new initiation from one peer is accepted at most this often (flood guard). */
  handshakeInitiationRate: 20,
  /** Cookie secrets rotate this often, so cookies expire. */
  cookieRefreshTime: 120_000,
};

export type Timers = typeof base;

function scaled(): Timers {
  const scale = Number(process.env.AGENTVPN_TEST_TIMER_SCALE ?? '1');
  if (!(scale > 0) || scale === 1) return { ...base };
  const t = { ...base };
  for (const k of Object.keys(t) as (keyof Timers)[]) t[k] = Math.max(1, Math.round(t[k] * scale));
  return t;
}

/** Effective timers; scaled only when the test-only AGENTVPN_TEST_TIMER_SCALE is set. */
export const timers: Timers = scaled();

/** Bounded queue of packets waiting for a handshake, per peer (as wireguard-go). */
export const MAX_STAGED_PACKETS = 128;

/** Replay window: how many counters behind the highest one are still accepted. */
export const REPLAY_WINDOW_BITS = 8192;

/** Handshake messages per second above which the device is "under load" and demands cookies. */
export const UNDER_LOAD_HANDSHAKES_PER_SECOND = 500;
/** Stay under load this long after the rate falls again. */
export const UNDER_LOAD_HOLD_TIME = 1_000;
/**
 * Handshake messages per source (IPv4 address, IPv6 /64) that may enter the shared queue lane: a
 * whole fleet behind one NAT rekeying (10,000 agents every 2 minutes is ~85/s) fits; a flood does not.
 */
export const HANDSHAKE_DOOR_PER_SOURCE = { rate: 200, burst: 400 };
/** Under load as soon as the handshake queue's shared lane is this full (as wireguard-go: 1/8). */
export const UNDER_LOAD_QUEUE_PRESSURE = 1 / 8;
/** Per source IP (IPv6: per /64), handshake messages per second once under load (token bucket). */
export const HANDSHAKES_PER_SECOND_PER_IP = 20;
export const HANDSHAKE_BURST_PER_IP = 5;
/**
 * Cookie replies: a real peer needs one per handshake attempt (every 5 s at most), so two a second
 * per source is plenty; the total caps what a flood from many sources costs (~2 ms of CPU a second).
 */
export const COOKIE_REPLIES_PER_SOURCE = { rate: 2, burst: 4 };
export const COOKIE_REPLIES_PER_SECOND = { rate: 2_000, burst: 2_000 };
/** Sources with a live rate-limit bucket; a flood of invented sources is refused beyond this. */
export const MAX_RATE_LIMITED_SOURCES = 16_384;
/**
 * The handshake queue: messages from known peers' endpoints (a lane of their own, so a flood
 * cannot push them out) and from anyone else (as wireguard-go's QueueHandshakeSize).
 */
export const HANDSHAKE_QUEUE_KNOWN = 128;
export const HANDSHAKE_QUEUE_OTHERS = 1024;
/**
 * Handshake work per event-loop turn: at most this long before the loop goes back to reading
 * packets, so the data path never waits longer than this for handshakes (one DH is ~0.12 ms).
 */
export const HANDSHAKE_TURN_BUDGET_MS = 1;
