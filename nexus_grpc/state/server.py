"""The serving process's own state, read by the gate in front of every RPC: ready, draining,
refusing, the RPCs in progress (unary and streams counted apart), and the token policy.

Kept below the servicers so that they depend on this small object, not on the runtime that
composes everything.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from dataclasses import dataclass, field

SHED_FRACTION = 0.9  # of the unary budget, above which normal-priority Decides are shed


@dataclass
class ServerState:
    max_unary: int = 1024
    max_streams: int = 1024
    admin_token_env: str = "NEXUS_ADMIN_TOKEN"
    client_token_env: str = ""
    listen: str = "127.0.0.1:50051"
    ready: bool = False  # a configuration is loaded and the first probe round is done
    draining: bool = False  # health says NOT_SERVING; RPCs are still served
    refusing: bool = False  # new RPCs get UNAVAILABLE
    unary_active: int = 0  # unary RPCs in progress, this one included
    streams_active: int = 0  # streaming RPCs in progress (Envoy ext_proc streams, Queue holds)
    streams_shedding: int = 0  # streams over budget waiting for the first message to answer
    reload_failures: int = 0
    unavailable_reasons: list[str] = field(default_factory=list)

    def admin_token(self) -> str:
        return os.environ.get(self.admin_token_env, "") if self.admin_token_env else ""

    def client_token(self) -> str:
        return os.environ.get(self.client_token_env, "") if self.client_token_env else ""

    @property
    def loopback_only(self) -> bool:
        return loopback_only(self.listen)

    def overloaded(self) -> bool:
        """Above SHED_FRACTION of the unary budget normal-priority decisions are shed, so that
        PRIORITY_HIGH ones still get through; beyond the budget every RPC is refused."""
        return self.unary_active > max(1, int(self.max_unary * SHED_FRACTION))

    def streams_overloaded(self) -> bool:
        """The same line for streams (Envoy ext_proc): above SHED_FRACTION of the stream budget
        normal-priority decisions are shed."""
        return self.streams_active > max(1, int(self.max_streams * SHED_FRACTION))


@functools.lru_cache(maxsize=64)
def loopback_only(listen: str) -> bool:
    """True only when every address `listen` can bind is a loopback address: decided on parsed
    and resolved addresses, never on how the host is spelled. Unix sockets are local; a
    wildcard, an unresolvable host or any non-loopback address is not."""
    if listen.startswith("unix:"):
        return True
    host = listen.rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addresses = {str(info[4][0]) for info in infos}
    try:
        return bool(addresses) and all(
            ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses
        )
    except ValueError:
        return False
