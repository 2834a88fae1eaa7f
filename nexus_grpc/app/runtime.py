"""One serving process: config -> registry/ledger -> pipeline -> engine -> servicers -> grpc.aio
server; start, background upkeep and watchers, reload, graceful stop. The parts live beside it:
`grpc_server`, `health`, `telemetry`, `upkeep`, `reload`, `ledger`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from nexus_grpc.app.grpc_server import add_services, bind, build_server, refuse_a_taken_port, warn_if_open
from nexus_grpc.app.health import HealthStatus, degraded_reasons
from nexus_grpc.app.ledger import make_ledger
from nexus_grpc.app.reload import reload_config, start_watchers
from nexus_grpc.app.telemetry import Telemetry, readings
from nexus_grpc.app.upkeep import seed_demo, upkeep
from nexus_grpc.config.schema import Config
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.pipeline.executor import Pipeline
from nexus_grpc.reconcilers import default_stages
from nexus_grpc.reconcilers.index import RouteIndex
from nexus_grpc.servicers.admin import AdminServicer
from nexus_grpc.servicers.envoy import READINESS
from nexus_grpc.servicers.gate import Gate
from nexus_grpc.servicers.registry import RegistryServicer
from nexus_grpc.state.admin_sync import AdminSync
from nexus_grpc.state.health import HealthProber
from nexus_grpc.state.registry import Registry
from nexus_grpc.state.reload import ConfigWatcher
from nexus_grpc.state.server import ServerState
from nexus_grpc.telemetry.otlp_metrics import OtlpMetrics
from nexus_grpc.telemetry.readings import Readings
from nexus_grpc.telemetry.tracing import Tracing

log = logging.getLogger("nexus_grpc")


@dataclass
class ServeOptions:
    listen: str | None = None  # overrides [server] listen
    reuse_port: bool = False  # --workers > 1
    admin_sync: Path | None = None  # --workers > 1: the log the workers share admin changes through
    on_ready: Callable[[Runtime], None] | None = None  # called once, when health first turns SERVING


class Runtime:
    """One serving process: the engine, its server and its background upkeep."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`clock` (monotonic seconds) and `wall` (epoch seconds) are the time every part reads:
        tests inject fake ones and move them instead of sleeping."""
        self.config_path = config_path
        self.clock, self.wall = clock, wall
        self.settings = config.settings  # process settings: kept for the life of the process
        self.demo = config_path is None and config.source == "<demo>"
        self.registry = Registry(config, clock)
        pipeline = Pipeline(default_stages(), fast=RouteIndex())
        self.engine = DecisionEngine(
            self.registry, pipeline, make_ledger(config, wall), clock=clock, wall=wall
        )
        self.health = HealthStatus()
        self.config_loaded_at = _iso_now()
        server = config.server
        self.state = ServerState(
            max_unary=server.max_concurrent_rpcs,
            max_streams=server.max_concurrent_streams,
            admin_token_env=server.admin_token_env,
            client_token_env=server.client_token_env,
            listen=server.listen,
        )
        self.gate = Gate(self.state)
        self.telemetry = Telemetry()
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.config_watcher: ConfigWatcher | None = None  # `[server] watch_config` with a config file
        self._stopped = asyncio.Event()
        self._hurry = asyncio.Event()  # a second SIGTERM/SIGINT: skip what is left of drain and grace
        self._hurried: asyncio.Future[None] | None = None
        self.prober = HealthProber(self.registry, on_change=self.engine.watch.notify, clock=clock)
        self._reload_lock = asyncio.Lock()  # reloads (SIGHUP, RPC, file watch) apply in order
        self._on_ready: Callable[[Runtime], None] | None = None

    @property
    def config(self) -> Config:
        return self.registry.config

    # the exporters, while telemetry runs
    @property
    def tracing(self) -> Tracing | None:
        return self.telemetry.tracing

    @property
    def otlp_metrics(self) -> OtlpMetrics | None:
        return self.telemetry.otlp_metrics

    @property
    def metrics_server(self) -> Any:
        return self.telemetry.metrics_server

    # the serving state, kept in `state` (read by the gate in front of every RPC)
    @property
    def listen(self) -> str:
        return self.state.listen

    @listen.setter
    def listen(self, value: str) -> None:
        self.state.listen = value

    @property
    def draining(self) -> bool:
        return self.state.draining

    @property
    def refusing(self) -> bool:
        return self.state.refusing

    @refusing.setter
    def refusing(self, value: bool) -> None:
        self.state.refusing = value

    @property
    def ready(self) -> bool:
        return self.state.ready

    @property
    def loopback_only(self) -> bool:
        return self.state.loopback_only

    def degraded_reasons(self) -> list[str]:
        return degraded_reasons(self.engine, self.state)

    def readings(self) -> Readings:
        """The aggregates the metrics exporters publish; called from the exporters' threads."""
        return readings(self.engine, self.tracing)

    async def reload(self) -> Config:
        """Validate the file completely, then swap; a bad file changes nothing."""
        assert self.config_path is not None
        async with self._reload_lock:
            config = await reload_config(self.config_path, self.engine, self.state, self.settings)
            self.config_loaded_at = _iso_now()
            return config

    async def start(self, options: ServeOptions | None = None) -> int:
        options = options or ServeOptions()
        self._on_ready = options.on_ready
        config = self.config
        self.listen = options.listen or config.server.listen
        await self.engine.ledger.start()
        self.telemetry.start(config.telemetry, self.engine, self.gate, self.readings)
        if self.demo:
            seed_demo(self.engine)
        server = build_server(config, reuse_port=options.reuse_port)
        sync = AdminSync(options.admin_sync) if options.admin_sync is not None else None
        self.registry_servicer = RegistryServicer(self.engine, sync)
        admin = AdminServicer(
            self.engine,
            self.state,
            reload=self.reload if self.config_path is not None else None,
            loaded_at=lambda: self.config_loaded_at,
            degraded=self.degraded_reasons,
        )
        names = add_services(
            server,
            self.gate,
            self.engine,
            self.state,
            tracing=self.tracing,
            registry=self.registry_servicer,
            admin=admin,
            health=self.health.servicer,
        )
        self.health.follow = [*names, READINESS]
        if not options.reuse_port:
            refuse_a_taken_port(self.listen)
        self.port, self.listen = bind(server, self.listen, config.server.tls)
        await server.start()
        self.server = server
        warn_if_open(self.state)
        await self.health.starting()
        check_ledger = functools.partial(self.health.check_ledger, self.engine, self.state)
        self._tasks = [
            asyncio.create_task(upkeep(self.engine, check_ledger, demo=self.demo), name="nexus-upkeep")
        ]
        watchers, self.config_watcher = start_watchers(
            self.prober,
            self.registry_servicer,
            config_path=self.config_path,
            watch_config=config.server.watch_config,
            reload=self.reload,
            version=lambda: self.config.version,
        )
        self._tasks += watchers
        if config.health_check.enabled:  # SERVING once the first probe round has finished
            self._tasks.append(asyncio.create_task(self._serve_after_probes(), name="nexus-first-probes"))
        else:
            await self._serving()
        return self.port

    async def _serve_after_probes(self) -> None:
        await self.prober.first_round.wait()
        if not self.draining:
            await self._serving()

    async def _serving(self) -> None:
        self.state.ready = True
        # config, fleet and generated code are long-lived: keep them out of the collector's scans
        gc.freeze()
        await self.health.update(self.state)
        config = self.config
        log.info("serving on %s (config %s, %s ledger)", self.listen, config.version, self.engine.ledger.kind)
        on_ready, self._on_ready = self._on_ready, None
        if on_ready is not None:
            on_ready(self)

    async def stop(self, *, drain_seconds: float | None = None, grace_seconds: float | None = None) -> None:
        """Health NOT_SERVING while still serving for drain_seconds; then refuse new RPCs, let
        in-flight ones finish within grace_seconds, flush the ledger."""
        if self.draining:
            await self._stopped.wait()
            return
        server_cfg = self.config.server
        self.state.draining = True
        await self.health.update(self.state)
        drain = server_cfg.drain_seconds if drain_seconds is None else drain_seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), drain)
        self.refusing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server is not None:
            grace = server_cfg.grace_seconds if grace_seconds is None else grace_seconds
            await self.server.stop(0 if self._hurry.is_set() else grace)
        await self.engine.ledger.close()
        self.telemetry.stop(self.engine)
        self._stopped.set()

    def hurry(self) -> None:
        """Stop now: end the drain at once and give in-flight RPCs no grace."""
        self._hurry.set()
        if self.refusing and self.server is not None:  # already in the grace period: end it
            self._hurried = asyncio.ensure_future(self.server.stop(0))

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _iso_now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")
