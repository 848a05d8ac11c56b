"""A client of the local agentvpn daemon: one JSON line per request on its control socket.

The wire format is the daemon's (src/daemon/control-protocol.ts): ``{"id":1,"method":...,"params":{}}``
answered by ``{"id":1,"ok":true,"result":...}`` or ``{"id":1,"ok":false,"code":...,"message":...,"hint":...}``;
the ``events`` method answers ok, then sends ``{"id":1,"event":{...}}`` lines until either side closes.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import socket
from typing import Any, Iterator, List, Optional, Sequence, cast

from .errors import AgentVpnError, no_permission, not_offered, not_running
from .types import EVENT_TYPES, Addresses, Event, Peer, PingResult, SelfInfo, Whois

DEFAULT_INTERFACE = "agentvpn0"

# The daemon's own guard on an answer's size: a status of a big device is large, not unbounded.
MAX_LINE_BYTES = 16 * 1024 * 1024

_ids = itertools.count(1)


def socket_path_of(interface: str) -> str:
    """Where the daemon for ``interface`` listens (AGENTVPN_RUN_DIR moves it, as for the daemon)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", interface) or interface in (".", ".."):
        raise AgentVpnError("BAD_INTERFACE_NAME", f'invalid interface name "{interface}"',
                            f"use 1 to 15 characters from A-Z a-z 0-9 _ . - (default {DEFAULT_INTERFACE})")
    return f"{os.environ.get('AGENTVPN_RUN_DIR', '/run/agentvpn')}/{interface}.sock"


class _Lines:
    """Reads newline-terminated JSON lines from a socket, each at most MAX_LINE_BYTES."""

    def __init__(self, sock: socket.socket, iface: str) -> None:
        self.sock = sock
        self.iface = iface
        self.buf = b""

    def read(self) -> Optional[dict]:
        """The next line parsed, or None when the daemon closed the connection."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
            if len(self.buf) > MAX_LINE_BYTES:
                raise _protocol_error(self.iface, "line too long")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return cast(dict, json.loads(line))
        except ValueError:
            raise _protocol_error(self.iface, "line is not JSON") from None


def _protocol_error(iface: str, what: str) -> AgentVpnError:
    return AgentVpnError("CONTROL_PROTOCOL", f"bad answer from the agentvpn daemon for interface {iface}: {what}",
                         "make sure the agentvpn daemon and this SDK are the same version")


class EventStream:
    """The daemon's events, as they happen: ``for ev in vpn.events(): ...``.

    Leaving the loop closes the stream (CPython drops it at once; ``with vpn.events() as events:``
    or ``close()`` make that explicit). The daemon ending the stream raises AgentVpnError
    (``DAEMON_STOPPING``, ``DAEMON_CLOSED``, ``EVENTS_TOO_SLOW``). A ``lagged`` event says how
    many events this subscriber missed by reading slowly: re-read ``peers()`` or ``status()``.
    """

    def __init__(self, sock: socket.socket, lines: _Lines, req_id: int, iface: str) -> None:
        self._sock: Optional[socket.socket] = sock
        self._lines = lines
        self._id = req_id
        self._iface = iface

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> Event:
        while True:
            if self._sock is None:
                raise StopIteration
            try:
                line = self._lines.read()
            except socket.timeout:
                raise  # next(timeout=...) turns it into TimeoutError; the stream stays usable
            except OSError as e:
                self.close()
                raise AgentVpnError("DAEMON_CLOSED", f"the event stream of interface {self._iface} broke: {e}",
                                    "check `agentvpn status`, then subscribe again") from None
            if line is None:
                self.close()
                raise AgentVpnError("DAEMON_CLOSED", f"the agentvpn daemon for interface {self._iface} closed the event stream",
                                    "it may have exited or restarted: check `agentvpn status`, then subscribe again")
            if line.get("id") != self._id:
                continue
            end = line.get("end")
            if isinstance(end, dict):
                self.close()
                raise AgentVpnError(str(end.get("code")), str(end.get("message")), str(end.get("hint", "")))
            event = line.get("event")
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                return cast(Event, event)

    def next(self, timeout: Optional[float] = None) -> Event:
        """The next event; with ``timeout`` (seconds) raises TimeoutError when none came in time."""
        if self._sock is not None:
            self._sock.settimeout(timeout)
        try:
            return self.__next__()
        except socket.timeout:
            raise TimeoutError(f"no event within {timeout} s") from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(None)

    def close(self) -> None:
        """Ends the subscription (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class AgentVpn:
    """A typed client of the local agentvpn daemon. Get one with :func:`connect`."""

    def __init__(self, interface: Optional[str] = None, socket_path: Optional[str] = None, timeout: float = 5.0) -> None:
        self.interface = interface or DEFAULT_INTERFACE
        self.socket_path = socket_path or socket_path_of(self.interface)
        self.timeout = timeout

    def status(self) -> dict:
        """The device: interface, addresses, listen port, and each peer's counters and path."""
        return cast(dict, self._call("status"))

    def whoami(self) -> SelfInfo:
        """Who we are in the network: ID, name, overlay addresses, capabilities, tags."""
        return cast(SelfInfo, self._call("id"))

    def peers(self) -> List[Peer]:
        """Every agent this daemon admitted, with its online state."""
        return cast(List[Peer], self._call("peers", {}))

    def discover(self, cap: str) -> List[Peer]:
        """Agents with a capability (structured match: ``llm.inference``, ``llm.inference@1;model=llama3``)."""
        return cast(List[Peer], self._call("peers", {"cap": cap}))

    def resolve(self, name: str) -> Addresses:
        """An agent's overlay addresses by name (``worker`` or ``worker.<network>``)."""
        return cast(Addresses, self._call("resolve", {"name": name}))

    def ping(self, peer: str, count: int = 1) -> PingResult:
        """Disco pings to an agent (by name, IPv4 or ID) over its current path."""
        # Each ping waits up to 2 s for its pong, a short pause between them: the call gets that on top.
        return cast(PingResult, self._call("ping", {"name": peer, "count": count}, timeout=self.timeout + count * 2.5))

    def whois(self, address: str) -> Whois:
        """Who holds an overlay address (``"100.64.0.7"``, ``"100.64.0.7:8080"``, ``"[fd00::7]:8080"``)."""
        return cast(Whois, self._call("whois", {"address": address}))

    def events(self, types: Optional[Sequence[str]] = None) -> EventStream:
        """Peer online/offline, path changes and trust alerts as they happen (``types`` narrows them)."""
        if types is not None:
            unknown = [t for t in types if t not in EVENT_TYPES]
            if unknown or not types:
                raise AgentVpnError("BAD_EVENT_TYPE", f"unknown event types {unknown}", f"choose from {', '.join(EVENT_TYPES)}")
        sock, lines, req_id, _ = self._request("events", {"types": list(types)} if types else {}, self.timeout)
        sock.settimeout(None)  # events come when they come
        return EventStream(sock, lines, req_id, self.interface)

    def _call(self, method: str, params: Optional[dict] = None, timeout: Optional[float] = None) -> Any:
        sock, _, _, result = self._request(method, params or {}, timeout or self.timeout)
        sock.close()
        return result

    def _request(self, method: str, params: dict, timeout: float) -> "tuple[socket.socket, _Lines, int, Any]":
        req_id = next(_ids)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
            sock.sendall(json.dumps({"id": req_id, "method": method, "params": params}).encode() + b"\n")
            lines = _Lines(sock, self.interface)
            res = lines.read()
        except socket.timeout:
            sock.close()
            raise AgentVpnError("DAEMON_TIMEOUT", f'the agentvpn daemon for interface {self.interface} did not answer "{method}" within {timeout} s',
                                "it may be hung: check its log") from None
        except OSError as e:
            sock.close()
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise not_running(self.interface, self.socket_path) from None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise no_permission(self.socket_path) from None
            raise AgentVpnError("CONTROL_ERROR", f"cannot reach the agentvpn daemon for interface {self.interface}: {e}",
                                f"check {self.socket_path}") from None
        except AgentVpnError:
            sock.close()
            raise
        if res is None:
            sock.close()
            raise AgentVpnError("DAEMON_CLOSED", f'the agentvpn daemon for interface {self.interface} closed the connection without answering "{method}"',
                                "it may have exited: run `agentvpn status` to check")
        if res.get("id") != req_id:
            sock.close()
            raise _protocol_error(self.interface, "response does not match the request")
        if res.get("ok") is True:
            return sock, lines, req_id, res.get("result")
        sock.close()
        code = str(res.get("code", "CONTROL_PROTOCOL"))
        if code == "UNKNOWN_METHOD":
            raise not_offered(self.interface, method)
        raise AgentVpnError(code, str(res.get("message", code)), str(res.get("hint", "")))


def connect(interface: Optional[str] = None, socket_path: Optional[str] = None, timeout: float = 5.0) -> AgentVpn:
    """Connects to the local daemon and checks that it answers (AgentVpnError when it does not).

    ``interface`` picks the daemon (default agentvpn0); ``socket_path`` names its socket directly
    (a run dir mounted into a container, say); ``timeout`` bounds each call, in seconds.
    """
    vpn = AgentVpn(interface, socket_path, timeout)
    vpn.status()
    return vpn
