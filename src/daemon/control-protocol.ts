/** The control socket's wire format: one JSON object per line in each direction. */
export interface ControlRequest {
  id: number | string;
  method: string;
  params?: unknown;
}

export type ControlResponse =
  | { id: number | string | null; ok: true; result: unknown }
  | { id: number | string | null; ok: false; code: string; message: string; hint: string };
