/** Every error a user can see: a stable machine-readable code and a hint saying what to do. */
export class AgentVpnError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'AgentVpnError';
  }

  toJSON(): { ok: false; code: string; message: string; hint: string } {
    return { ok: false, code: this.code, message: this.message, hint: this.hint };
  }
}

export function isAgentVpnError(e: unknown): e is AgentVpnError {
  return e instanceof AgentVpnError;
}
