import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { readBody, readJson } from '../../src/registry/http-body.js';

/** A request that sends `chunks` and then ends (or closes early when `cut`). */
function request(chunks: Buffer[], cut = false): IncomingMessage {
  const req = Object.assign(new EventEmitter(), { headers: {}, complete: false }) as unknown as IncomingMessage & EventEmitter;
  setImmediate(() => {
    for (const c of chunks) req.emit('data', c);
    if (cut) return void req.emit('close');
    (req as { complete: boolean }).complete = true;
    req.emit('end');
    req.emit('close');
  });
  return req;
}

describe('request bodies', () => {
  it('are read whole, from one chunk or several', async () => {
    expect((await readBody(request([Buffer.from('{"a":1}')]))).toString()).toBe('{"a":1}');
    expect((await readBody(request([Buffer.from('{"a"'), Buffer.from(':'), Buffer.from('2}')]))).toString()).toBe('{"a":2}');
    expect((await readBody(request([]))).length).toBe(0);
    expect(await readJson(request([Buffer.from('{"b":'), Buffer.from('[1,2]}')]))).toEqual({ b: [1, 2] });
  });

  it('are refused past the limit, and when cut off', async () => {
    await expect(readBody(request([Buffer.alloc(6), Buffer.alloc(6)]), 10)).rejects.toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    await expect(readBody(request([Buffer.alloc(4)], true))).rejects.toMatchObject({ code: 'BAD_REQUEST' });
  });
});
