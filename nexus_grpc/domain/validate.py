"""One validator for every edge: gRPC fields, Envoy headers and bodies, the admin API and the
config loader all call these functions, so a value is either accepted everywhere or refused
everywhere, with the same words.

Each check raises `FieldError(field, problem)`; the edges translate it (gRPC
`INVALID_ARGUMENT`, an HTTP 400 naming the header, a config issue naming the key path).
Nothing here knows about protobuf, Envoy or TOML.
"""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from nexus_grpc.domain.backend import BACKEND_TYPES, BackendConfig
from nexus_grpc.domain.enums import PrivacyZone
from nexus_grpc.domain.money import per_1k_to_nano_per_token
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.errors import FieldError

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_COST_USD",
    "MAX_PRICE_PER_1K",
    "RESERVED_TENANTS",
    "FieldError",
    "HttpUrl",
    "backend_problems",
    "cost_usd",
    "endpoint",
    "env_var_name",
    "http_url",
    "identifier",
    "label_key",
    "label_value",
    "listen_address",
    "model_name",
    "service_url",
    "tenant",
    "text",
    "token_count",
]

# The largest cost a single ReportOutcome may state, USD (a finite, sane bound).
MAX_COST_USD = 1_000_000.0
# Names a tenant may not take (compared lowercased): they would collide with the global scope.
RESERVED_TENANTS = frozenset({GLOBAL})

# Unicode categories refused everywhere: controls, format characters (bidi overrides, zero-width
# joiners), line/paragraph separators, surrogates, private use and unassigned code points.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _bad_char(value: str, *, allow_space: bool) -> str | None:
    """The first character `value` may not hold, described; None when all are fine."""
    for ch in value:
        if ch.isascii():
            code = ord(ch)
            if 0x20 < code < 0x7F or (allow_space and ch == " "):
                continue
            if ch == " ":
                return "a space"
            return f"the control character U+{code:04X}"
        category = unicodedata.category(ch)
        if category in _REFUSED_CATEGORIES:
            return f"the invisible or control character U+{ord(ch):04X}"
        if category == "Zs" and not allow_space:
            return f"the space character U+{ord(ch):04X}"
    return None


def text(value: str, field: str, limit: int, *, required: bool = False, allow_space: bool = True) -> str:
    """Printable text of at most `limit` UTF-8 bytes (no control or invisible characters)."""
    if not value:
        if required:
            raise FieldError(field, "is required and must not be empty")
        return value
    if len(value) * 4 > limit:  # only then can the UTF-8 form exceed the limit
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise FieldError(field, f"is {size} bytes; at most {limit} allowed")
    if value.isprintable() and (allow_space or " " not in value) and value[0] != " " and value[-1] != " ":
        return value  # the common case, checked in C: no control, format or separator character
    bad = _bad_char(value, allow_space=allow_space)
    if bad is not None:
        raise FieldError(field, f"must not contain {bad}")
    if allow_space and value != value.strip():
        raise FieldError(field, "must not start or end with whitespace")
    return value


def identifier(value: str, field: str, limit: int, *, required: bool = False) -> str:
    """An id (backend id, request id, decision id): printable, no whitespace at all."""
    return text(value, field, limit, required=required, allow_space=False)


def model_name(value: str, field: str, limit: int, *, required: bool = False) -> str:
    """A model name: printable, no whitespace (names like `llama3:70b`, `org/model`)."""
    return text(value, field, limit, required=required, allow_space=False)


def tenant(value: str, field: str, limit: int) -> str:
    """A tenant (budget scope) name, or "" for none. Names of the global scope are refused."""
    identifier(value, field, limit)
    if value.lower() in RESERVED_TENANTS:
        raise FieldError(field, f"{value!r} is reserved for the global scope; leave it empty for no tenant")
    return value


def label_key(value: str, field: str, limit: int) -> str:
    return identifier(value, field, limit, required=True)


def label_value(value: str, field: str, limit: int) -> str:
    return text(value, field, limit)


def token_count(value: object, field: str, limit: int) -> int:
    """A token count: an integer in 0..limit (booleans and floats are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"{_show(value)} is not a non-negative integer")
    if value < 0:
        raise FieldError(field, f"{value} is negative; a token count is 0 or more")
    if value > limit:
        raise FieldError(field, f"{value} is above the limit of {limit}")
    return value


def cost_usd(value: float, field: str, limit: float = MAX_COST_USD) -> float:
    """A cost in USD: finite, within 0..limit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(field, f"{_show(value)} is not a number")
    if not math.isfinite(value) or not 0 <= value <= limit:
        raise FieldError(field, f"{value!r} must be finite and within 0..{limit:g}")
    return float(value)


@dataclass(frozen=True, slots=True)
class HttpUrl:
    """A parsed backend URL."""

    scheme: str  # "http" | "https"
    host: str  # a hostname, or an IP literal without brackets
    port: int  # explicit, or 80 / 443 by scheme
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None  # set when `host` is an IP literal

    @property
    def endpoint(self) -> str | None:
        """`ip:port` (`[ip]:port` for IPv6) when the host is an IP literal."""
        if self.ip is None:
            return None
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


def http_url(value: str, field: str, limit: int = 2048) -> HttpUrl:
    """An `http://` or `https://` URL with a host and a valid port; nothing after the authority
    but an optional path (no credentials, query or fragment)."""
    text(value, field, limit, required=True, allow_space=False)
    try:
        parts: SplitResult = urlsplit(value)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise FieldError(field, f"{value!r} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FieldError(field, f"{value!r} must start with http:// or https://")
    if not host:
        raise FieldError(field, f"{value!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise FieldError(field, f"{value!r} must not carry credentials (use health_headers_env)")
    if parts.query or parts.fragment:
        raise FieldError(field, f"{value!r} must not have a query or a fragment")
    if port == 0:
        raise FieldError(field, f"{value!r} has port 0")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
        if "[" in parts.netloc or not _hostname_ok(host):
            raise FieldError(field, f"{value!r} has an invalid host {host!r}") from None
    return HttpUrl(scheme, host, port if port is not None else (443 if scheme == "https" else 80), ip)


def _hostname_ok(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(ch.isalnum() or ch in "-_" for ch in label)
        for label in labels
    )


def listen_address(value: str, field: str) -> tuple[str, int]:
    """A `host:port` listen address (`[v6]:port` for IPv6; port 0..65535, 0 = any free port),
    or `unix:PATH`. Returns (host, port); for unix sockets ("unix:PATH", 0)."""
    text(value, field, 4096, required=True, allow_space=False)
    if value.startswith("unix:"):
        if len(value) == len("unix:"):
            raise FieldError(field, f"{value!r} names no socket path")
        return value, 0
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise FieldError(field, f"{value!r} is not a host:port address with a port in 0..65535")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise FieldError(field, f"{value!r} has an unbalanced '[' or ']'")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise FieldError(field, f"{value!r} has an invalid IPv6 address {host[1:-1]!r}") from None
        return host[1:-1], int(port)
    if ":" in host:
        raise FieldError(field, f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:{port}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _hostname_ok(host):
            raise FieldError(field, f"{value!r} has an invalid host {host!r}") from None
    return host, int(port)


def endpoint(value: str, field: str) -> str:
    """An endpoint as an endpoint-picking gateway names one: `ip:port`, `[v6]:port`, or a bare
    IP (any port of that address; an IPv6 address without brackets is always bare). Returns it
    canonical (`10.0.0.1:8000`, `[::1]:8000`, `::1`), so that equal endpoints compare equal."""
    text(value, field, 64, required=True, allow_space=False)
    wrong = f"{_show(value)} is not an ip:port endpoint"
    bracketed = value.startswith("[")
    if bracketed:
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise FieldError(field, wrong)
        port = rest[1:]
        if rest == ":":
            raise FieldError(field, f"{_show(value)} has an empty port")
    elif value.count(":") == 1:
        host, port = value.split(":")
        if not port:
            raise FieldError(field, f"{_show(value)} has an empty port")
    else:
        host, port = value, ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise FieldError(field, f"{wrong} (its host must be an IP address)") from None
    if bracketed and ip.version != 6:
        raise FieldError(field, f"{wrong} (only an IPv6 address goes in brackets)")
    if not port:
        return str(ip)
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535):
        raise FieldError(field, f"{_show(value)} has a port outside 1..65535")
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


_ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_var_name(value: str, field: str, limit: int = 256) -> str:
    """The name of an environment variable (ASCII letters, digits and `_`, not starting with a
    digit), or "" for none."""
    if value and (len(value) > limit or not _ENV_VAR_NAME.fullmatch(value)):
        raise FieldError(field, f"{_show(value)} is not an environment variable name (letters, digits and _)")
    return value


def service_url(value: str, field: str, schemes: tuple[str, ...], limit: int = 2048) -> SplitResult:
    """A URL of one of `schemes` (lower case) that parses, port included; credentials, a path and
    a query are allowed (a redis URL carries its password and database number)."""
    text(value, field, limit, required=True, allow_space=False)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise FieldError(field, f"{_show(value)} is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in schemes:
        listed = ", ".join(f"{scheme}://" for scheme in schemes)
        raise FieldError(field, f"{_show(value)} must start with one of {listed}")
    return parts


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 64 else shown[:61] + "..."


# The most a price may be, USD per 1K tokens: far above any real model, low enough that one
# decision's cost (at the token limits) stays exact in the ledger.
MAX_PRICE_PER_1K = 1000.0
MAX_CONCURRENCY = 1_000_000


def backend_problems(backend: BackendConfig, *, max_id_len: int, max_model_len: int) -> list[FieldError]:
    """Every problem of one backend's configuration, each naming its field relative to the
    backend (`id`, `url`, `models[1].id`, ...). The config loader and `UpsertBackend` both call
    this, so a backend is valid in a file exactly when it is valid over the admin API."""
    problems: list[FieldError] = []

    def check(test: Callable[[], object]) -> None:
        try:
            test()
        except FieldError as exc:
            problems.append(exc)

    check(lambda: identifier(backend.id, "id", max_id_len, required=True))
    check(lambda: http_url(backend.url, "url"))
    if backend.type not in BACKEND_TYPES:
        problems.append(
            FieldError(
                "type", f"unknown backend type {backend.type!r} (known: {', '.join(sorted(BACKEND_TYPES))})"
            )
        )
    elif backend.zone == PrivacyZone.UNSPECIFIED:
        problems.append(FieldError("zone", 'a generic backend needs zone "restricted" or "open"'))
    if not 1 <= backend.tier <= 5:
        problems.append(FieldError("tier", f"{backend.tier} is out of range (must be 1..5)"))
    if not 0 <= backend.priority <= 100:
        problems.append(FieldError("priority", f"{backend.priority} is out of range (must be 0..100)"))
    if not 0 <= backend.max_concurrency <= MAX_CONCURRENCY:
        problems.append(
            FieldError(
                "max_concurrency", f"{backend.max_concurrency} is out of range (must be 0..{MAX_CONCURRENCY})"
            )
        )
    if backend.pricing is not None:
        limit = per_1k_to_nano_per_token(MAX_PRICE_PER_1K)
        for name, nano in (
            ("input_per_1k", backend.pricing.input_nano),
            ("output_per_1k", backend.pricing.output_nano),
        ):
            if not 0 <= nano <= limit:
                problems.append(
                    FieldError(f"pricing.{name}", f"must be within 0..{MAX_PRICE_PER_1K:g} USD per 1K tokens")
                )
    if not backend.models:
        problems.append(FieldError("models", "at least one model is required"))
    seen: dict[str, int] = {}
    for index, model in enumerate(backend.models):
        try:
            model_name(model.id, f"models[{index}].id", max_model_len, required=True)
        except FieldError as exc:
            problems.append(exc)
        if model.id in seen:
            problems.append(
                FieldError(
                    f"models[{index}].id", f"duplicate model {model.id!r} (first at models[{seen[model.id]}])"
                )
            )
        else:
            seen[model.id] = index
        if model.context_length is not None and model.context_length < 1:
            problems.append(
                FieldError(
                    f"models[{index}].context_length", "must be at least 1 (leave it out for unlimited)"
                )
            )
    return problems
