"""The registry: configured backends plus admin changes, and each backend's live state.

Every change builds a new immutable `Fleet` and swaps one reference; live state objects are
kept per backend id across rebuilds and reloads, so stages never see a half-applied change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from nexus_grpc.config.schema import Config
from nexus_grpc.domain.backend import BackendConfig, ModelSpec, probe_path
from nexus_grpc.domain.enums import BackendStatus
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.pipeline.snapshot import Fleet

STICKY = (BackendStatus.DRAINING, BackendStatus.UNHEALTHY)


class Registry:
    def __init__(self, config: Config, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.live: dict[str, LiveBackend] = {}
        self._backends: list[BackendConfig] = []
        self._discovered: dict[str, tuple[str, ...]] = {}  # backend id -> models its probe listed
        self.version = 0
        self.fleet = self._build(config, list(config.backends))

    @property
    def config(self) -> Config:
        return self.fleet.config

    def _initial_status(self, config: Config, backend: BackendConfig) -> BackendStatus:
        probed = config.health_check.enabled and probe_path(backend) is not None
        return BackendStatus.UNKNOWN if probed else BackendStatus.HEALTHY

    def _build(self, config: Config, backends: list[BackendConfig]) -> Fleet:
        for b in backends:
            if b.id not in self.live:
                self.live[b.id] = LiveBackend(self._initial_status(config, b), config.quality.window_seconds)
        self._backends = backends
        self.version += 1
        self.fleet = Fleet(config, tuple(self._with_discovered(b) for b in backends), self.live)
        return self.fleet

    def _with_discovered(self, backend: BackendConfig) -> BackendConfig:
        """Declared models first, as declared (the declaration wins); then the models its probe
        listed that are not declared: unlimited context, no capabilities."""
        found = self._discovered.get(backend.id)
        if not found:
            return backend
        declared = {m.id for m in backend.models}
        extra = tuple(ModelSpec(m) for m in found if m not in declared)
        return replace(backend, models=backend.models + extra) if extra else backend

    def discovered(self, backend_id: str) -> tuple[str, ...]:
        return self._discovered.get(backend_id, ())

    def set_discovered(self, backend_id: str, models: Iterable[str]) -> bool:
        """The models a health probe listed for this backend (replacing the previous list);
        True when the list changed (the fleet is then rebuilt)."""
        if backend_id not in self.fleet.by_id:
            return False
        found = tuple(sorted(set(models)))
        if self._discovered.get(backend_id, ()) == found:
            return False
        if found:
            self._discovered[backend_id] = found
        else:
            del self._discovered[backend_id]
        self._build(self.config, self._backends)
        return True

    def load(self, config: Config) -> None:
        """A new config: backends that remain keep live state; upserted ones are dropped."""
        ids = {b.id for b in config.backends}
        for stale in [i for i in self.live if i not in ids]:
            del self.live[stale]
            self._discovered.pop(stale, None)
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
        self._discovered.pop(backend_id, None)
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
