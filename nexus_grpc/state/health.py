"""Active health checks: one background task probes every backend
over HTTP on its interval; decisions only ever read the statuses it leaves behind.

- Path: `health_path` if set, else `/api/tags` (ollama), `/health` (llamacpp), `/v1/models`;
  appended to the backend URL. Open-zone backends (cloud APIs) are probed only with a
  `health_path`. `health_headers_env` names an environment variable with "Header: value" lines.
- Verdict: a 2xx answer is reachable, and so are 401 and 403 (the server is up; the probe is not
  authorised); anything else, a connection error or the timeout is a failure.
- Status: a backend of UNKNOWN health takes its first probe's verdict; after that
  `failure_threshold` consecutive failures make it UNHEALTHY and `recovery_threshold` consecutive
  successes make it HEALTHY again. An admin-set DRAINING/UNHEALTHY sticks (the probe still runs).
- The probe round trip of a reachable answer feeds the latency EMA. Models a 200 answer lists
  (ollama `models[].name`, OpenAI-style `data[].id`) are merged into the registry.

The HTTP client is `state/probe_http.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nexus_grpc.config.schema import HealthCheckConfig
from nexus_grpc.domain.backend import BackendConfig, probe_path
from nexus_grpc.domain.enums import BackendStatus
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.state.probe_http import ProbeError, http_get

if TYPE_CHECKING:
    from nexus_grpc.state.registry import Registry

log = logging.getLogger("nexus_grpc.health")

REACHABLE_STATUSES = frozenset({401, 403})  # besides 2xx: up, but the probe is not authorised
MAX_DISCOVERED = 1000  # models taken from one answer
MAX_CONCURRENT_PROBES = 128
TICK_SECONDS = 0.5  # how often the loop looks for new backends between rounds
_PARSE_IN_THREAD = 64 * 1024
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def probe_headers(env_name: str) -> list[tuple[str, str]]:
    """Headers from the environment variable `env_name`: one "Name: value" per line. Malformed
    lines are skipped (and logged without their value: they may hold secrets)."""
    if not env_name:
        return []
    headers: list[tuple[str, str]] = []
    for number, raw in enumerate(os.environ.get(env_name, "").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.fullmatch(name) or any(ord(c) < 0x20 and c != "\t" for c in value):
            log.warning("health_headers_env %s: line %d is not 'Name: value'; skipped", env_name, number)
            continue
        headers.append((name, value))
    return headers


def parse_models(body: bytes, max_len: int) -> tuple[str, ...] | None:
    """Model ids an answer lists: ollama `{"models": [{"name"}]}` or OpenAI-style
    `{"data": [{"id"}]}`; None when the body lists none of either (the last list is kept)."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("models"), list):
        items, key = doc["models"], "name"
    elif isinstance(doc.get("data"), list):
        items, key = doc["data"], "id"
    else:
        return None
    found: set[str] = set()
    for item in items:
        name = item.get(key) if isinstance(item, dict) else None
        if isinstance(name, str) and name and len(name.encode()) <= max_len and not name.isspace():
            found.add(name)
            if len(found) >= MAX_DISCOVERED:
                break
    return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class ProbeResult:
    reachable: bool
    detail: str  # "HTTP 200", "HTTP 500", "timed out after 5 s", "connection refused", ...
    latency_ms: float
    models: tuple[str, ...] | None = None  # None: nothing discovered (keep what is known)


class HealthProber:
    """Probes the registry's backends in the background (`run`); `first_round` is set once the
    first round has finished (at once when health checks are off)."""

    def __init__(
        self,
        registry: Registry,
        *,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.on_change = on_change
        self.clock = clock
        self.first_round = asyncio.Event()
        self.rounds = 0
        self._probed: dict[str, tuple[str, str, str]] = {}  # id -> (url, path, headers env) probed
        self._marked: set[str] = set()  # ids whose status this prober set
        self._released_version = -1
        self._ssl: ssl.SSLContext | None = None
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_PROBES)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def run(self) -> None:
        last_round = -1e18
        seen_version = -1
        while True:
            try:
                hc = self.registry.config.health_check
                if not hc.enabled:
                    self._release_all()
                elif self.clock() - last_round >= hc.interval_seconds:
                    last_round = self.clock()
                    await self.probe_round()
                elif self.registry.version != seen_version:
                    await self.probe_round(only_new=True)  # added or changed backends, at once
                seen_version = self.registry.version
            except Exception:  # the loop must outlive a bug
                log.exception("health probe round failed; retrying")
            self.first_round.set()
            hc = self.registry.config.health_check
            wait = min(TICK_SECONDS, max(0.0, last_round + hc.interval_seconds - self.clock()))
            await asyncio.sleep(wait if hc.enabled else TICK_SECONDS)

    async def probe_round(self, *, only_new: bool = False) -> None:
        """Probe every probed backend (or only those not probed yet as configured now)."""
        fleet = self.registry.fleet
        hc = fleet.config.health_check
        targets: list[tuple[BackendConfig, str]] = []
        for backend in fleet.backends:
            path = probe_path(backend)
            if path is None:
                self._release(backend.id)
                continue
            key = (backend.url, path, backend.health_headers_env)
            if only_new and self._probed.get(backend.id) == key:
                continue
            self._probed[backend.id] = key
            targets.append((backend, path))
        for gone in [i for i in self._probed if i not in fleet.by_id]:
            del self._probed[gone]
            self._marked.discard(gone)
        if targets:
            await asyncio.gather(*(self._probe_and_apply(b, path, hc) for b, path in targets))
        if not only_new:
            self.rounds += 1

    async def _probe_and_apply(self, backend: BackendConfig, path: str, hc: HealthCheckConfig) -> None:
        async with self._limit:
            result = await self.probe(backend, path, hc.timeout_seconds)
        found = self.registry.get(backend.id)
        if found is None or (found[0].url, probe_path(found[0])) != (backend.url, path):
            return  # removed or changed meanwhile: the next probe speaks for the new settings
        self.apply(backend.id, found[1], result, hc)

    async def probe(self, backend: BackendConfig, path: str, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        url = backend.url.rstrip("/") + path
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                answer = await http_get(url, probe_headers(backend.health_headers_env), self._ssl_context)
        except TimeoutError:
            return ProbeResult(False, f"timed out after {timeout:g} s", 0.0)
        except (OSError, ProbeError, asyncio.IncompleteReadError, ValueError) as exc:
            return ProbeResult(False, _describe(exc), 0.0)
        latency_ms = (time.perf_counter() - started) * 1000
        reachable = 200 <= answer.status < 300 or answer.status in REACHABLE_STATUSES
        models = None
        if answer.body is not None:
            max_len = self.registry.config.limits.max_model_len
            if len(answer.body) > _PARSE_IN_THREAD:
                models = await asyncio.to_thread(parse_models, answer.body, max_len)
            else:
                models = parse_models(answer.body, max_len)
        return ProbeResult(reachable, f"HTTP {answer.status}", latency_ms, models)

    def apply(self, backend_id: str, live: LiveBackend, result: ProbeResult, hc: HealthCheckConfig) -> None:
        """Count the result and move the status across the thresholds."""
        status = live.status
        target: BackendStatus | None = None
        if result.reachable:
            live.observe_latency(result.latency_ms)
            live.probe_failures = 0
            live.probe_successes += 1
            if status == BackendStatus.UNKNOWN or (
                status == BackendStatus.UNHEALTHY and live.probe_successes >= hc.recovery_threshold
            ):
                target = BackendStatus.HEALTHY
        else:
            live.probe_successes = 0
            live.probe_failures += 1
            if status == BackendStatus.UNKNOWN or (
                status in (BackendStatus.HEALTHY, BackendStatus.LOADING)
                and live.probe_failures >= hc.failure_threshold
            ):
                target = BackendStatus.UNHEALTHY
        changed = False
        if target is not None and live.admin_status is None:
            reason = "" if target == BackendStatus.HEALTHY else f"health probe: {result.detail}"
            self.registry.set_state(backend_id, target, reason=reason, admin=False)
            self._marked.add(backend_id)
            changed = True
            level = logging.INFO if target == BackendStatus.HEALTHY else logging.WARNING
            log.log(level, "backend %s: %s -> %s (%s)", backend_id, status.name, target.name, result.detail)
        if result.reachable and result.models is not None:
            before = self.registry.discovered(backend_id)
            if self.registry.set_discovered(backend_id, result.models):
                changed = True
                added = sorted(set(result.models) - set(before))
                gone = sorted(set(before) - set(result.models))
                log.info(
                    "backend %s: the probe lists %d models; added %s, gone %s",
                    backend_id,
                    len(result.models),
                    _few(added),
                    _few(gone),
                )
        if changed:
            self.on_change()

    def _release(self, backend_id: str) -> None:
        """A backend no longer probed: a status the probes gave it (or UNKNOWN) becomes HEALTHY."""
        self._probed.pop(backend_id, None)
        found = self.registry.get(backend_id)
        if found is None:
            return
        live = found[1]
        probe_set = backend_id in self._marked and live.status == BackendStatus.UNHEALTHY
        if live.admin_status is None and (live.status == BackendStatus.UNKNOWN or probe_set):
            self.registry.set_state(backend_id, BackendStatus.HEALTHY, admin=False)
            log.info("backend %s: %s -> HEALTHY (not probed)", backend_id, live.status.name)
            self.on_change()
        live.probe_failures = live.probe_successes = 0
        self._marked.discard(backend_id)

    def _release_all(self) -> None:
        """Health checks are off (again): nothing stays UNKNOWN or probe-UNHEALTHY."""
        if not (self._probed or self._marked) and self.registry.version == self._released_version:
            return
        for backend in self.registry.fleet.backends:
            self._release(backend.id)
        self._released_version = self.registry.version


def _few(names: list[str], shown: int = 10) -> str:
    text = ", ".join(names[:shown]) or "none"
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed mid-answer"
    text = str(exc) or type(exc).__name__
    return text[:200]
