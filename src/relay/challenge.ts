import { randomBytes } from 'node:crypto';
import { constantTimeEqual } from '../crypto/aead.js';
import { macInto } from '../crypto/blake2s.js';
import { monotonicMs } from '../util/token-bucket.js';

/**
 * The relay's stateless hello challenges (like WireGuard's cookies): a challenge is a MAC, under
 * a secret only this relay knows and replaces every CHALLENGE_ROTATION_MS, of the address and port
 * the request came from (a UDP source, or a TCP connection's remote end) and of the epoch it was
 * made in. A hello must carry, and be signed over, a challenge this relay made for the address the
 * hello comes from, so a hello captured on the way to one relay is worth nothing at another relay
 * (other secret), at this relay from another address (other MAC input), or once two rotations
 * have passed. Nothing is kept per request: minting and checking are one keyed BLAKE2s each.
 * A challenge alone does not stop a relay M the agent dialled from fetching one from another
 * relay for M's own address and replaying the agent's hello there: the relay name the hello is
 * signed for does (relay-name.ts).
 *
 *   challenge (CHALLENGE_SIZE = 20 bytes)
 *   | epoch (4, BE: the relay's 2-minute epoch plus a random offset) | MAC(secret of that epoch, input)(16) |
 *
 *   MAC input (23 bytes)
 *   | epoch (4) | transport (1: 'u' UDP, 't' TCP) | address (16, IPv4 as ::ffff:a.b.c.d) | port (2, BE) |
 *
 * A challenge made in epoch e is accepted in epochs e and e+1: it lives 2 to 4 minutes.
 */

export const CHALLENGE_SIZE = 4 + 16;
/** Secrets are replaced this often (WireGuard rotates its cookie secret every 2 minutes too). */
export const CHALLENGE_ROTATION_MS = 120_000;
/**
 * How long a client reuses a challenge it got (retransmissions, re-hellos on the same path): well
 * under the 2 minutes it is certainly valid for, so one fetched just before a rotation still works.
 */
export const CHALLENGE_REUSE_MS = 60_000;

/** The address the challenge is bound to: 18 bytes, address (16) and port (2), the native endpoint's first bytes. */
export const BOUND_ADDRESS_SIZE = 18;
export type ChallengeTransport = 'udp' | 'tcp';

const SECRET_SIZE = 32;
const INPUT_SIZE = 4 + 1 + BOUND_ADDRESS_SIZE;
const TRANSPORT_BYTE: Record<ChallengeTransport, number> = { udp: 0x75, tcp: 0x74 };

export class ChallengeMinter {
  /** Added to the epoch on the wire, so a challenge does not tell how long the host has been up. */
  private readonly offset = randomBytes(4).readUInt32BE(0);
  private epoch = -1;
  private current = Buffer.alloc(SECRET_SIZE);
  private previous = Buffer.alloc(SECRET_SIZE);
  /** Minting and checking run for every request and hello: into these, allocating nothing. */
  private readonly input = Buffer.alloc(INPUT_SIZE);
  private readonly mac = Buffer.alloc(16);
  /** Challenges minted and checked so far (the work a flood of requests costs: one MAC each). */
  minted = 0;
  checked = 0;

  constructor(private readonly clock: () => number = monotonicMs) {}

  /** Writes a challenge for `addr` (18 bytes at addr[off]) over `transport` into out[at..at+20]. */
  mint(out: Buffer, at: number, addr: Uint8Array, off: number, transport: ChallengeTransport): void {
    const epoch = this.rotate();
    this.minted++;
    const wire = (epoch + this.offset) >>> 0;
    this.macOf(wire, this.current, addr, off, transport);
    out.writeUInt32BE(wire, at);
    this.mac.copy(out, at + 4);
  }

  /** Whether `challenge` (20 bytes) was made by this relay, this epoch or the last, for `addr` over `transport`. */
  check(challenge: Uint8Array, addr: Uint8Array, off: number, transport: ChallengeTransport): boolean {
    if (challenge.length !== CHALLENGE_SIZE) return false;
    const epoch = this.rotate();
    const wire = ((challenge[0] << 24) | (challenge[1] << 16) | (challenge[2] << 8) | challenge[3]) >>> 0;
    const age = (epoch + this.offset - wire) >>> 0; // epochs since it was made (mod 2^32)
    if (age > 1) return false;
    this.checked++;
    this.macOf(wire, age === 0 ? this.current : this.previous, addr, off, transport);
    return constantTimeEqual(this.mac, challenge.subarray(4, CHALLENGE_SIZE));
  }

  /** The current epoch, replacing the secrets when it moved on (both, after more than one rotation). */
  private rotate(): number {
    const epoch = Math.floor(this.clock() / CHALLENGE_ROTATION_MS);
    if (epoch !== this.epoch) {
      this.previous = epoch === this.epoch + 1 ? this.current : randomBytes(SECRET_SIZE);
      this.current = randomBytes(SECRET_SIZE);
      this.epoch = epoch;
    }
    return epoch;
  }

  private macOf(wire: number, secret: Buffer, addr: Uint8Array, off: number, transport: ChallengeTransport): void {
    this.input.writeUInt32BE(wire, 0);
    this.input[4] = TRANSPORT_BYTE[transport];
    this.input.set(addr.subarray(off, off + BOUND_ADDRESS_SIZE), 5);
    macInto(this.mac, secret, this.input);
  }
}
