/**
 * Path-selection timing (milliseconds), each with its reason. AGENTVPN_TEST_TIMER_SCALE does
 * not apply here: these are already short, and the NAT tests measure them as they are.
 */
export const paths = {
  /** How often path state is checked. */
  tickMs: 250,
  /**
   * A direct path whose liveness pings went unanswered this long is dead: fall back to the relay.
   * With a ping every 2 s, a path cut at any moment is detected within 7 s (the issue asks < 10 s).
   */
  directDeadAfterMs: 5_000,
  /** Liveness pings on an active direct path; three fit in the dead-after time. */
  directPingIntervalMs: 2_000,
  /** While relayed and active, probe all candidates this often (NAT mappings and candidates change). */
  reprobeWhenRelayedMs: 5_000,
  /** While direct, look for a better path now and then. */
  reprobeWhenDirectMs: 30_000,
  /** Relayed traffic to a peer triggers a probe at most this often. */
  probeOnTrafficMs: 1_000,
  /** A ping from an address gets a ping back (to confirm the path for us) at most this often per address. */
  pingBackEveryMs: 1_000,
  /** A call-me-maybe gets each of the peer's candidates pinged at most this often per address. */
  callMeMaybePingEveryMs: 5_000,
  /**
   * An idle peer is not pinged, so its direct path goes unverified; after this long without a
   * pong (NAT mappings may have expired) it is used only once confirmed again: the next traffic
   * starts on the relay and probes, and moves direct within a round trip.
   */
  idleTrustMs: 15_000,
  /** A peer with no traffic for this long is idle: no pings, no probes (a 10,000-agent fleet stays quiet). */
  activeWindowMs: 60_000,
  /** Unanswered pings are forgotten after this. */
  pingTimeoutMs: 5_000,
  /** Switch to another direct endpoint only when it is clearly faster (avoid flapping). */
  betterRttFactor: 0.7,
  /** Between pings of `agentvpn ping`. */
  pingCommandIntervalMs: 500,
};

/**
 * Disco budgets, spent before the message is opened (a failed XChaCha20-Poly1305 open costs ~4 us
 * here, and a flood of messages claiming a member's key would otherwise buy that per packet).
 * A peer sends a ping every 2 s and a probe round (≤ 16 pings) every 5 s, so 100/s from where it is
 * expected (its direct path, its candidates, the relay) never bites; 20/s from elsewhere is room for
 * the new NAT mappings hole punching discovers. The total (~40 ms of CPU a second at most) serves
 * ~10,000 active peers.
 */
export const discoBudget = {
  expected: { rate: 100, burst: 200 },
  elsewhere: { rate: 20, burst: 40 },
  total: { rate: 10_000, burst: 10_000 },
  /** Replies to our pings let past the budgets, at most (a probe round pings ≤ 16 candidates and the relay). */
  maxAwaitedReplies: 32,
  /** Replay window per peer in counter units (1/16 ms): 256 ms of reordering between the direct and relayed paths. */
  replayWindowBits: 4096,
};

/**
 * Home relay choice (relay-choice.ts, relay-probe.ts, relay-links.ts). A relay that stops
 * answering must be left within 10 s (the issue): it is probed every second, declared dead after
 * 4 s of silence, and the move (new session, new record, peers told by the registry's event
 * stream) takes well under a second more.
 */
export const relayChoice = {
  /** STUN probes to our home relay: its liveness. One ~48-byte datagram a second. */
  homeProbeMs: 1_000,
  /** STUN probes to the other relays: their RTT is fresh when we must pick the next home. */
  otherProbeMs: 5_000,
  /** The home relay is dead after this long without an answer (four probes lost in a row). */
  deadAfterMs: 4_000,
  /**
   * A relay whose link stayed down this long (it refused our hellos, or neither UDP nor TCP
   * reached it, though it answers STUN) is not used as home. Longer than the client's first
   * retry (1 s): a relay that follows the registry's members refuses an agent that just joined
   * once, then takes it.
   */
  downGraceMs: 3_000,
  /**
   * ... and is not chosen again for this long unless no other relay answers: a relay that refuses
   * us would otherwise win on RTT, refuse, and make us publish a new record at every retry.
   */
  avoidAfterDownMs: 5 * 60_000,
  /** Unanswered probes are forgotten after this (a later answer is not a round trip we measured). */
  probeTimeoutMs: 3_000,
  /** Weight of a new RTT sample in the smoothed RTT: one slow answer does not move us. */
  rttSampleWeight: 0.3,
  /** Hysteresis: another relay becomes home only when both this much faster (ratio) ... */
  switchFactor: 0.67,
  /** ... and at least this many ms faster: sub-millisecond differences never move us. */
  switchMarginMs: 10,
  /**
   * ... for this long without a break: a relay process busy for a few seconds (a GC, a burst)
   * does not move every agent that uses the other one (each move is a new record for peers).
   */
  switchAfterMs: 10_000,
  /** Relays advertised by the registry that we use, at most (the rest are ignored). */
  maxAdvertised: 16,
  /** Links open at once (home and peers' home relays), at most: past that, peers are sent through our home relay. */
  maxLinks: 8,
  /** A peer's relay link unused this long is closed (each costs keepalives and a session on that relay). */
  linkIdleMs: 60_000,
};

/**
 * Birthday probing (birthday.ts): bounds of each attempt and of all of them together. A symmetric
 * NAT here picks ports from 1024-65535 (Linux --random-fully; most CPE NATs likewise), ~64,500.
 */
export const birthday = {
  /** Extra sockets of a hard-side attempt: with 1,024 probes, P(hit) = 1 - (1 - 256/64,512)^1024 ≈ 98 %. */
  sockets: 256,
  /** Fewer sockets than this (the fd limit) make an attempt not worth its probes. */
  minSockets: 64,
  /** All extra sockets open at once, at most: one attempt's 256 and those kept by birthday paths (within the usual 1,024-fd limit). */
  maxOpenSockets: 512,
  maxHardAttempts: 1,
  /** Easy-side attempts at once: each costs up to 1,024 probes of the shared budget. */
  maxEasyAttempts: 4,
  /** Probes per attempt, at most, whichever the role. */
  maxProbesPerAttempt: 1_024,
  /** An attempt ends after this whatever happened (1,024 probes at 100/s take ~10 s; answers trail by an RTT). */
  attemptMs: 15_000,
  /** Every probe we send, all peers and roles together: a peer cannot make us a packet cannon. */
  probesPerSecond: 100,
  /** One hard round (a ping from each socket) may go at once: the mappings should exist before the easy side's probes arrive. */
  probeBurst: 256,
  /** The hard side pings from each socket twice, so one lost ping does not waste its port. */
  hardRounds: 2,
  hardRoundIntervalMs: 5_000,
  /** The easy side waits this long after answering: the hard side opens its ports one relay round trip later. */
  easyDelayMs: 300,
  /** Random ports the easy side probes: the unprivileged range NATs allocate from. */
  minPort: 1_024,
  /** Relayed, active and still without a direct path this long after disco began: try birthday probing. */
  startAfterMs: 3_000,
  /** The peer's answer to our request must come within this. */
  answerWithinMs: 5_000,
  /** After an attempt with a peer that found nothing: wait this long, doubling with each failure, up to the max. */
  backoffFirstMs: 30_000,
  backoffMaxMs: 10 * 60_000,
};
