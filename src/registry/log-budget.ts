/**
 * Refusals are logged one line each, but a flood of them must not become a flood of log lines
 * (CPU for every line, the disk for all of them): at most LINES_PER_SECOND a second, and for
 * the rest one line per second saying how many were left out. Counters keep every refusal.
 */

/** Enough to see what an honest misconfiguration looks like; a flood shows as the summary line. */
const LINES_PER_SECOND = 20;

export class LogBudget {
  private second = 0;
  private lines = 0;
  private skipped = 0;

  /** `onSkipped(n)` is called when a new second starts after n lines were left out. */
  constructor(private readonly onSkipped: (n: number) => void) {}

  /** Whether a line may be written now. */
  allow(now = Date.now()): boolean {
    const second = Math.floor(now / 1000);
    if (second !== this.second) {
      if (this.skipped > 0) this.onSkipped(this.skipped);
      this.second = second;
      this.lines = 0;
      this.skipped = 0;
    }
    if (this.lines < LINES_PER_SECOND) {
      this.lines++;
      return true;
    }
    this.skipped++;
    return false;
  }
}
