"""The registry: configured backends plus admin changes, and each backend's live state.

Every change builds a new immutable `Fleet` and swaps one reference; live state objects are
kept per backend id across rebuilds and reloads, so stages never see a half-applied change.
"""

from __future__ import annotations

from collections.abc import Callable

from nexus_grpc.config.schema import Config
from nexus_grpc.domain.backend import BackendConfig
from nexus_grpc.domain.enums import BackendStatus
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.pipeline.snapshot import Fleet

STICKY = (BackendStatus.DRAINING, BackendStatus.UNHEALTHY)


class Registry:
    def __init__(self, config: Config, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.live: dict[str, LiveBackend] = {}
        self._backends: list[BackendConfig] = []
        self.version = 0
        self.fleet = self._build(config, list(config.backends))

    @property
    def config(self) -> Config:
        return self.fleet.config

    def _initial_status(self, config: Config) -> BackendStatus:
        return BackendStatus.UNKNOWN if config.health_check.enabled else BackendStatus.HEALTHY

    def _build(self, config: Config, backends: list[BackendConfig]) -> Fleet:
        for b in backends:
            if b.id not in self.live:
                self.live[b.id] = LiveBackend(self._initial_status(config), config.quality.window_seconds)
        self._backends = backends
        self.version += 1
        self.fleet = Fleet(config, tuple(backends), self.live)
        return self.fleet

    def load(self, config: Config) -> None:
        """A new config: backends that remain keep live state; upserted ones are dropped."""
        ids = {b.id for b in config.backends}
        for stale in [i for i in self.live if i not in ids]:
            del self.live[stale]
        self._build(config, list(config.backends))

    def get(self, backend_id: str) -> tuple[BackendConfig, LiveBackend] | None:
        backend = self.fleet.by_id.get(backend_id)
        if backend is None:
            return None
        return backend, self.live[backend_id]

    def upsert(self, backend: BackendConfig) -> None:
        """An existing id keeps its place in config order; a new id goes last."""
        backends = list(self._backends)
        for i, b in enumerate(backends):
            if b.id == backend.id:
                backends[i] = backend
                break
        else:
            backends.append(backend)
        self._build(self.config, backends)

    def remove(self, backend_id: str) -> bool:
        backends = [b for b in self._backends if b.id != backend_id]
        if len(backends) == len(self._backends):
            return False
        self._build(self.config, backends)
        # the live object stays referenced by in-flight bookkeeping until entries expire
        self.live.pop(backend_id, None)
        return True

    def set_state(
        self,
        backend_id: str,
        status: BackendStatus,
        *,
        eta_ms: int | None = None,
        progress: int | None = None,
        reason: str = "",
        admin: bool = True,
    ) -> LiveBackend | None:
        live = self.live.get(backend_id) if backend_id in self.fleet.by_id else None
        if live is None:
            return None
        if admin:
            live.admin_status = status if status in STICKY else None
        elif live.admin_status is not None:
            return live  # an admin-set DRAINING/UNHEALTHY sticks until an admin clears it
        live.set_status(status, eta_ms=eta_ms, progress=progress, now=self._clock(), reason=reason)
        return live
