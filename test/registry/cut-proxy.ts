// A TCP proxy on loopback in front of a port, whose connections a test can cut (a blip, a proxy restart).
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

export interface CutProxy {
  url: string;
  /** Connections taken so far. */
  accepted(): number;
  /** Ends every connection through it now (`how`: a FIN, or a TCP reset); new ones are let through. */
  cut(how?: 'end' | 'reset'): void;
  /** From now on connections are taken but never answered (a frozen instance, a balancer before a dead one). */
  freeze(): void;
  close(): void;
}

export async function cutProxy(port: number): Promise<CutProxy> {
  const sockets = new Set<Socket>();
  let frozen = false;
  let accepted = 0;
  const server = createServer((inbound) => {
    accepted++;
    if (frozen) {
      sockets.add(inbound);
      inbound.on('close', () => sockets.delete(inbound));
      inbound.on('error', () => {});
      return;
    }
    const outbound = connect(port, '127.0.0.1');
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    inbound.pipe(outbound).pipe(inbound);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    accepted: () => accepted,
    cut: (how = 'end') => {
      for (const s of sockets) {
        if (how === 'reset') s.resetAndDestroy();
        else s.destroy();
      }
    },
    freeze: () => {
      frozen = true;
    },
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
