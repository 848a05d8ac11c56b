"""agentvpn: a client of the local agentvpn daemon, stdlib only.

    import agentvpn
    vpn = agentvpn.connect()
    for worker in vpn.discover("llm.inference"):
        print(worker["name"], worker["ipv4"])
    for ev in vpn.events():
        print(ev["type"], ev.get("name"))
"""

from .client import DEFAULT_INTERFACE, AgentVpn, EventStream, connect, socket_path_of
from .errors import AgentVpnError
from .types import EVENT_TYPES, Addresses, Event, Peer, PingResult, SelfInfo, Whois

__all__ = [
    "DEFAULT_INTERFACE", "EVENT_TYPES", "AgentVpn", "AgentVpnError", "EventStream", "connect", "socket_path_of",
    "Addresses", "Event", "Peer", "PingResult", "SelfInfo", "Whois",
]
__version__ = "0.1.0"
