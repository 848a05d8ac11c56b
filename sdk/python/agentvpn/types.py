"""What each call answers: plain dicts (parsed JSON), typed for editors and checkers."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, TypedDict, Union


class Peer(TypedDict):
    """An agent of the fleet as the local daemon knows it (``peers()``, ``discover()``)."""

    id: str
    name: str
    ipv4: str
    ipv6: str
    online: bool
    lastSeen: int
    capabilities: List[str]
    tags: List[str]
    endpoints: List[str]


class Whois(TypedDict):
    """Who holds an overlay address: for servers that authorize requests by sender."""

    address: str
    port: Optional[int]
    id: str
    name: str
    tags: List[str]
    capabilities: List[str]
    app: Dict[str, List[Any]]
    online: bool


class Addresses(TypedDict):
    name: str
    ipv4: str
    ipv6: str


class SelfInfo(TypedDict):
    id: str
    name: str
    network: str
    ipv4: str
    ipv6: str
    wgPublicKey: str
    capabilities: List[str]
    tags: List[str]
    registry: str
    registryConnected: bool


class PingResult(TypedDict):
    name: str
    ipv4: str
    replies: List[Dict[str, Any]]


class PeerPresenceEvent(TypedDict, total=False):
    type: Literal["peer.online", "peer.offline"]
    at: int
    id: str
    name: str
    ipv4: str
    ipv6: str
    reason: str
    suppressed: int


class PathChangedEvent(TypedDict, total=False):
    type: Literal["path.changed"]
    at: int
    id: str
    name: str
    ipv4: str
    ipv6: str
    kind: Literal["direct", "relay"]
    endpoint: str
    rttMs: Optional[float]
    reason: str
    suppressed: int


class TrustAlertEvent(TypedDict, total=False):
    type: Literal["trust.alert"]
    at: int
    id: str
    name: str
    state: str
    alert: str
    suppressed: int


class LaggedEvent(TypedDict):
    """``dropped`` events were left out because this subscriber read too slowly."""

    type: Literal["lagged"]
    at: int
    dropped: int


Event = Union[PeerPresenceEvent, PathChangedEvent, TrustAlertEvent, LaggedEvent]

EVENT_TYPES = ("peer.online", "peer.offline", "path.changed", "trust.alert")
