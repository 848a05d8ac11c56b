// A TCP proxy on loopback in front of a port, whose connections a test can cut (a blip, a proxy restart).
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

export interface CutProxy {
  url: string;
  /** Resets every connection through it now; new ones are let through. */
  cut(): void;
  close(): void;
}

export async function cutProxy(port: number): Promise<CutProxy> {
  const sockets = new Set<Socket>();
  const server = createServer((inbound) => {
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
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
