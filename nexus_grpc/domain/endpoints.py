"""Endpoints as an endpoint-picking gateway names them (`ip:port`, `[v6]:port`), and the subset
of them such a gateway lets one request go to."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from nexus_grpc.domain import validate
from nexus_grpc.errors import FieldError

__all__ = ["EndpointSubset", "endpoint_of"]


@functools.lru_cache(maxsize=4096)
def endpoint_of(url: str) -> str | None:
    """The `ip:port` endpoint of a backend URL whose host is an IP literal (the port defaults to
    80 for http, 443 for https); None when the host is a name, which a gateway that routes by
    endpoint cannot be told."""
    try:
        return validate.http_url(url, "url").endpoint
    except FieldError:
        return None


def _address(endpoint: str) -> str:
    """The IP of a canonical endpoint, as a bare subset entry spells it."""
    host = endpoint.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class EndpointSubset:
    """The endpoints an endpoint-picking gateway lets one request go to.

    `entries` holds canonical `ip:port` endpoints and bare IPs (any port of that address), as
    `validate.endpoint` returns them; None means every `ip:port` endpoint (the gateway picks by
    endpoint but sent no subset). A backend without an IP endpoint is never admitted."""

    entries: frozenset[str] | None = None

    def admits(self, endpoint: str | None) -> bool:
        if endpoint is None:
            return False
        entries = self.entries
        return entries is None or endpoint in entries or _address(endpoint) in entries

    def __str__(self) -> str:
        if self.entries is None:
            return "any ip:port endpoint"
        return ",".join(sorted(self.entries)) or "no endpoint"
