"""The one error type of the SDK: a stable code and a hint saying what to do."""

from __future__ import annotations


class AgentVpnError(Exception):
    """An error from the agentvpn daemon or from reaching it.

    ``code`` is stable and machine-readable (``DAEMON_NOT_RUNNING``, ``NAME_NOT_FOUND``, ...);
    ``hint`` says what to do about it.
    """

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


def not_running(iface: str, path: str) -> AgentVpnError:
    return AgentVpnError(
        "DAEMON_NOT_RUNNING",
        f"no agentvpn daemon answers on {path} (interface {iface})",
        "start it with `sudo agentvpn up`; connect(interface=...) picks another daemon, "
        "AGENTVPN_RUN_DIR or socket_path another socket",
    )


def no_permission(path: str) -> AgentVpnError:
    return AgentVpnError(
        "CONTROL_PERMISSION",
        f"not allowed to open {path}: the daemon's control socket is root-only (mode 0600)",
        "run the agent as root, or in a container that mounts the daemon's run dir (docs/containers.md)",
    )


def not_offered(iface: str, method: str) -> AgentVpnError:
    return AgentVpnError(
        "NOT_IN_REGISTRY_MODE",
        f'the daemon for interface {iface} does not offer "{method}"',
        "discovery, names, ping, whois and events need a daemon in registry mode "
        "(`agentvpn up --registry URL`), of the same version as this SDK",
    )
