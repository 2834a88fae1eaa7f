"""Composition root: config -> registry/ledger -> pipeline -> servicers -> grpc.aio server;
start, background upkeep, reload, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nexus_grpc._gen.nexus.v1 import (
    admin_pb2_grpc,
    budget_pb2_grpc,
    decision_pb2_grpc,
    registry_pb2_grpc,
)
from nexus_grpc.config.demo import DEMO_LOADING_BACKEND, DEMO_SEED_SPEND_USD, demo_config
from nexus_grpc.config.errors import ConfigError, ConfigIssue
from nexus_grpc.config.loader import load_config
from nexus_grpc.config.schema import Config, TlsConfig
from nexus_grpc.domain.decision import budget_status
from nexus_grpc.domain.enums import BackendStatus
from nexus_grpc.domain.money import NANO, usd_to_nano
from nexus_grpc.domain.months import month_of
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.ledger.base import Ledger
from nexus_grpc.ledger.memory import MemoryLedger
from nexus_grpc.pipeline.budget import GLOBAL
from nexus_grpc.pipeline.executor import Pipeline
from nexus_grpc.reconcilers import default_stages
from nexus_grpc.reconcilers.index import RouteIndex
from nexus_grpc.servicers.admin import AdminServicer
from nexus_grpc.servicers.budget import BudgetServicer
from nexus_grpc.servicers.decision import DecisionServicer
from nexus_grpc.servicers.envoy import LIVENESS, READINESS, add_envoy_servicers
from nexus_grpc.servicers.gate import Gate, register
from nexus_grpc.servicers.registry import RegistryServicer
from nexus_grpc.state.admin_sync import AdminSync
from nexus_grpc.state.health import HealthProber
from nexus_grpc.state.registry import Registry
from nexus_grpc.state.reload import ConfigWatcher
from nexus_grpc.state.server import ServerState
from nexus_grpc.telemetry.decision_log import DecisionLog
from nexus_grpc.telemetry.otlp_metrics import OtlpMetrics
from nexus_grpc.telemetry.prometheus import serve_metrics
from nexus_grpc.telemetry.readings import Readings
from nexus_grpc.telemetry.tracing import Tracing, otlp_base
from nexus_grpc.text import plural

log = logging.getLogger("nexus_grpc")
OPEN_RPCS = 64  # beyond the unary and stream budgets: health checks and reflection
ADMIN_SYNC_INTERVAL = 0.2  # seconds between reads of the other workers' admin changes


def make_ledger(config: Config, wall: Callable[[], float] = time.time) -> Ledger:
    kind = config.ledger.kind
    if kind == "memory":
        return MemoryLedger()
    from nexus_grpc.ledger.factory import make_ledger as factory

    return factory(kind, path=config.ledger.path, url=config.ledger.url, wall=wall)


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
        self.health = health_aio.HealthServicer()
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
        self.tracing: Tracing | None = None
        self.otlp_metrics: OtlpMetrics | None = None
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.metrics_server: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._hurry = asyncio.Event()  # a second SIGTERM/SIGINT: skip what is left of drain and grace
        self._hurried: asyncio.Future[None] | None = None
        self._serving_health = False
        self._ledger_unwritable = False
        self.prober = HealthProber(self.registry, on_change=self.engine.watch.notify, clock=clock)
        self._reload_lock = asyncio.Lock()  # reloads (SIGHUP, RPC, file watch) apply in order
        self._on_ready: Callable[[Runtime], None] | None = None

    @property
    def config(self) -> Config:
        return self.registry.config

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
        reasons = []
        ledger = self.engine.ledger
        if not ledger.available:
            reasons.append(f"ledger {ledger.kind} unavailable: budget fails open")
        if ledger.write_error is not None:
            reasons.append(
                f"ledger {ledger.kind} cannot store changes ({ledger.write_error}): priced decisions fail"
            )
        if self.engine.reports_waiting:
            reasons.append(f"{plural(self.engine.reports_waiting, 'outcome')} waiting for the ledger")
        if self.state.reload_failures:
            reasons.append(
                f"{plural(self.state.reload_failures, 'config reload')} failed; running {self.config.version}"
            )
        return reasons

    async def reload(self) -> Config:
        """Validate the file completely, then swap; a bad file changes nothing."""
        assert self.config_path is not None
        async with self._reload_lock:
            return await self._reload(self.config_path)

    async def _reload(self, path: Path) -> Config:
        try:
            config = await asyncio.to_thread(load_config, path)
            if not config.backends and self.config.backends and not config.routing.allow_empty_fleet:
                raise ConfigError(
                    [
                        ConfigIssue(
                            str(path),
                            "backends",
                            "the file defines no backend: reloading it would drop every backend; "
                            "set [routing] allow_empty_fleet = true if that is what you want",
                        )
                    ]
                )
        except Exception:
            self.state.reload_failures += 1
            raise
        for section in ("server", "ledger", "telemetry"):
            if getattr(self.settings, section) != getattr(config.settings, section):
                log.warning("config reload: [%s] changed; it applies after a restart", section)
        # the process settings stay as the process started; the policy applies now
        config = dataclasses.replace(config, settings=self.settings)
        self.registry.load(config)
        self.config_loaded_at = _iso_now()
        self.engine.watch.notify()
        log.info("config reloaded: version %s", config.version)
        return config

    async def start(self, options: ServeOptions | None = None) -> int:
        options = options or ServeOptions()
        self._on_ready = options.on_ready
        config = self.config
        self.listen = options.listen or config.server.listen
        await self.engine.ledger.start()
        self._start_telemetry()
        if self.demo:
            self._seed_demo()
        server_cfg = config.server
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if options.reuse_port else 0),
                ("grpc.max_receive_message_length", config.limits.max_message_bytes),
                ("grpc.max_send_message_length", config.limits.max_message_bytes),
            ],
            # the gate enforces the unary and stream budgets apart; this is the hard ceiling
            maximum_concurrent_rpcs=server_cfg.max_concurrent_rpcs
            + server_cfg.max_concurrent_streams
            + OPEN_RPCS,
        )
        gate = self.gate
        names = [
            register(
                server,
                decision_pb2_grpc.add_DecisionServiceServicer_to_server,
                DecisionServicer(self.engine, self.state.overloaded, self.tracing),
                gate,
            )
        ]
        sync = AdminSync(options.admin_sync) if options.admin_sync is not None else None
        self.registry_servicer = RegistryServicer(self.engine, sync)
        admin = AdminServicer(
            self.engine,
            self.state,
            reload=self.reload if self.config_path is not None else None,
            loaded_at=lambda: self.config_loaded_at,
            degraded=self.degraded_reasons,
        )
        names += [
            register(
                server, registry_pb2_grpc.add_RegistryServiceServicer_to_server, self.registry_servicer, gate
            ),
            register(
                server, budget_pb2_grpc.add_BudgetServiceServicer_to_server, BudgetServicer(self.engine), gate
            ),
            register(server, admin_pb2_grpc.add_AdminServiceServicer_to_server, admin, gate),
            *add_envoy_servicers(self.engine, server, gate),
        ]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
        self._names = [*names, READINESS]  # health names that follow readiness
        if not options.reuse_port:
            _refuse_a_taken_port(self.listen)
        self.port = self._bind(server, self.listen)
        await server.start()
        self.server = server
        self._warn_if_open()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [asyncio.create_task(self._upkeep(), name="nexus-upkeep"), *self._start_watchers()]
        if config.health_check.enabled:  # SERVING once the first probe round has finished
            self._tasks.append(asyncio.create_task(self._serve_after_probes(), name="nexus-first-probes"))
        else:
            await self._serving()
        return self.port

    def _start_watchers(self) -> list[asyncio.Task[None]]:
        """Active health probes, the config file watch (`[server] watch_config`), and the other
        workers' admin changes (`--workers N`)."""
        tasks = [asyncio.create_task(self.prober.run(), name="nexus-health-probes")]
        if self.registry_servicer.sync is not None:
            tasks.append(asyncio.create_task(self._replay_admin_changes(), name="nexus-admin-sync"))
        if self.config_path is not None and self.config.server.watch_config:
            watcher = ConfigWatcher(self.config_path, self.reload, lambda: self.config.version)
            tasks.append(asyncio.create_task(watcher.run(), name="nexus-config-watch"))
        return tasks

    async def _replay_admin_changes(self) -> None:
        sync = self.registry_servicer.sync
        assert sync is not None
        while True:
            try:
                for method, payload, age_ms in await sync.poll():
                    try:
                        self.registry_servicer.replay(method, payload, age_ms)
                    except (LookupError, ValueError) as exc:  # e.g. removed here by a reload meanwhile
                        log.warning("admin change %s from another worker not applied: %s", method, exc)
            except Exception:
                log.exception("reading the workers' admin changes failed; retrying")
            await asyncio.sleep(ADMIN_SYNC_INTERVAL)

    async def _serve_after_probes(self) -> None:
        await self.prober.first_round.wait()
        if not self.draining:
            await self._serving()

    async def _serving(self) -> None:
        self.state.ready = True
        # config, fleet and generated code are long-lived: keep them out of the collector's scans
        gc.freeze()
        await self._update_health()
        config = self.config
        log.info("serving on %s (config %s, %s ledger)", self.listen, config.version, self.engine.ledger.kind)
        on_ready, self._on_ready = self._on_ready, None
        if on_ready is not None:
            on_ready(self)

    def _start_telemetry(self) -> None:
        telemetry = self.config.telemetry
        if Tracing.enabled(telemetry):
            self.tracing = Tracing(telemetry)
            self.gate.tracing = self.tracing
            log.info(
                "tracing: spans to %s (sample ratio %g, parent-based)",
                self.tracing.endpoint,
                telemetry.trace_sample_ratio,
            )
        if telemetry.decision_log:
            self.engine.decision_log = DecisionLog(telemetry.decision_log)
        if telemetry.prometheus_listen:
            self.metrics_server = serve_metrics(telemetry.prometheus_listen, self.readings)
        if Tracing.enabled(telemetry):
            self.otlp_metrics = OtlpMetrics(otlp_base(telemetry), self.readings)

    def _stop_telemetry(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        if self.engine.decision_log is not None:
            self.engine.decision_log.close()
            self.engine.decision_log = None
        if self.tracing is not None:
            self.tracing.shutdown()  # spans still queued are exported first
            self.tracing = None
        if self.otlp_metrics is not None:
            self.otlp_metrics.shutdown()
            self.otlp_metrics = None

    def readings(self) -> Readings:
        """The aggregates the metrics exporters publish, read (never written) from the engine;
        called from the exporters' threads."""
        engine = self.engine
        m = engine.metrics
        config = engine.config
        month = month_of(self.wall())
        budget: dict[str, tuple[float, int]] = {}
        limits = config.routing.budget
        for scope in [GLOBAL, *(limits.tenants if limits is not None else ())]:
            totals = engine.ledger.totals(scope, month)
            if totals is None:
                budget[scope] = (0.0, 0)
                continue
            limit = (
                (limits.monthly_limit_nano if scope == GLOBAL else limits.tenants.get(scope, 0))
                if limits
                else 0
            )
            soft = limits.soft_limit_percent if limits else 100.0
            budget[scope] = (totals.spent_nano / NANO, int(budget_status(totals.used_nano, limit, soft)))
        decision_log = engine.decision_log
        return Readings(
            decisions=dict(m.decisions),
            stage_ns=dict(engine.pipeline.stage_ns),
            stage_runs=dict(engine.pipeline.stage_runs),
            exclusions=dict(m.exclusions),
            pipeline_buckets=list(m.pipeline_buckets),
            pipeline_sum_ns=m.pipeline_sum_ns,
            budget=budget,
            in_flight={
                b.id: len(live.in_flight)
                for b in self.registry.fleet.backends
                if (live := self.registry.live.get(b.id))
            },
            ledger_available=engine.ledger.available,
            ledger_writable=engine.ledger.write_error is None,
            config_version=config.version,
            outcomes_estimated=engine.outcomes_estimated,
            outcomes_unknown=engine.outcomes_unknown,
            outcomes_clamped=engine.outcomes_clamped,
            decision_log_dropped=decision_log.dropped if decision_log is not None else 0,
            spans_dropped=self.tracing.processor.dropped if self.tracing is not None else 0,
        )

    def _warn_if_open(self) -> None:
        """Listening beyond loopback with no admin token: say what that means, at once."""
        st = self.state
        if st.loopback_only or st.admin_token():
            return
        log.warning(
            "listening on %s beyond loopback with no admin token: admin RPCs (RegistryService "
            "mutations, ReloadConfig) are refused; set the environment variable %s to allow them with "
            "'authorization: Bearer <token>'%s",
            st.listen,
            st.admin_token_env or "named by [server] admin_token_env",
            ""
            if st.client_token()
            else "; data-plane RPCs are open to anyone who can reach the port "
            "(set [server] client_token_env to require a token)",
        )

    def _bind(self, server: grpc.aio.Server, listen: str) -> int:
        tls = self.config.server.tls
        try:
            port = self._add_port(server, listen, tls)
        except OSError:
            raise
        except RuntimeError as exc:  # grpcio reports a failed bind this way
            raise OSError(f"cannot listen on {listen} (address in use?)") from exc
        if port == 0:
            raise OSError(f"cannot listen on {listen} (address in use?)")
        if listen.endswith(":0"):
            self.listen = listen[: -len("0")] + str(port)
        return port

    @staticmethod
    def _add_port(server: grpc.aio.Server, listen: str, tls: TlsConfig | None) -> int:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            files = {"cert": tls.cert, "key": tls.key, "client_ca": tls.client_ca}
            loaded: dict[str, bytes | None] = {}
            for key, path in files.items():
                try:
                    loaded[key] = path.read_bytes() if path is not None else None
                except OSError as exc:
                    raise OSError(f"[server.tls] {key}: cannot read {path}: {exc.strerror or exc}") from None
            cert, key_pem, ca = loaded["cert"], loaded["key"], loaded["client_ca"]
            assert cert is not None and key_pem is not None
            creds = grpc.ssl_server_credentials(
                [(key_pem, cert)], root_certificates=ca, require_client_auth=ca is not None
            )
            port = server.add_secure_port(listen, creds)
        return port

    async def _set_health(self, status: Any) -> None:
        await self.health.set("", status)
        for name in self._names:
            await self.health.set(name, status)

    async def _update_health(self) -> None:
        """SERVING while ready, not draining, and the ledger can store changes (a replica that
        cannot record money is taken out of rotation until its ledger recovers)."""
        serving = self.state.ready and not self.state.draining and not self._ledger_unwritable
        if serving != self._serving_health:
            self._serving_health = serving
            status = health_pb2.HealthCheckResponse
            await self._set_health(status.SERVING if serving else status.NOT_SERVING)

    async def _check_ledger(self) -> None:
        ledger = self.engine.ledger
        if ledger.write_error is not None:
            await ledger.check_writable()
        unwritable = ledger.write_error is not None
        if unwritable != self._ledger_unwritable:
            self._ledger_unwritable = unwritable
            if unwritable:
                log.error(
                    "ledger cannot store changes (%s): health NOT_SERVING until it can", ledger.write_error
                )
            else:
                log.info("ledger stores changes again: health SERVING")
            await self._update_health()
        if not unwritable and self.engine.reports_waiting:
            await self.engine.retry_reports()

    def _seed_demo(self) -> None:
        ledger = self.engine.ledger
        if isinstance(ledger, MemoryLedger):
            ledger.seed_spend(GLOBAL, month_of(self.wall()), usd_to_nano(DEMO_SEED_SPEND_USD))
        self._roll_demo_loading()

    def _roll_demo_loading(self) -> None:
        found = self.registry.get(DEMO_LOADING_BACKEND)
        if found is None:
            return
        live = found[1]
        if live.status != BackendStatus.LOADING or live.loading_eta_ms(self.clock()) < 5000:
            progress = ((live.loading_progress or 0) + 17) % 90 + 5
            self.registry.set_state(
                DEMO_LOADING_BACKEND, BackendStatus.LOADING, eta_ms=20000, progress=progress, admin=False
            )

    async def _upkeep(self) -> None:
        """Once a second: expire in-flight entries; on its interval, refresh the ledger."""
        last_refresh = self.clock()
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.engine.expire_flights()
                await self._check_ledger()
                budget = self.config.routing.budget
                interval = budget.reconciliation_interval_secs if budget else 60.0
                if self.clock() - last_refresh >= interval:
                    last_refresh = self.clock()
                    # reservations whose holder never settled them (e.g. a replica that died)
                    await self.engine.ledger.expire(self.wall())
                    await self.engine.ledger.refresh()
                if self.demo:
                    self._roll_demo_loading()
            except Exception:
                log.exception("upkeep failed; retrying in a second")

    async def stop(self, *, drain_seconds: float | None = None, grace_seconds: float | None = None) -> None:
        """Health NOT_SERVING while still serving for drain_seconds; then refuse new RPCs, let
        in-flight ones finish within grace_seconds, flush the ledger."""
        if self.draining:
            await self._stopped.wait()
            return
        server_cfg = self.config.server
        self.state.draining = True
        await self._update_health()
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
        self._stop_telemetry()
        self._stopped.set()

    def hurry(self) -> None:
        """Stop now: end the drain at once and give in-flight RPCs no grace."""
        self._hurry.set()
        if self.refusing and self.server is not None:  # already in the grace period: end it
            self._hurried = asyncio.ensure_future(self.server.stop(0))

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def load_runtime(config_path: str | None) -> Runtime:
    if config_path is None:
        return Runtime(demo_config())
    path = Path(config_path)
    return Runtime(load_config(path), config_path=path)


async def serve(runtime: Runtime, options: ServeOptions | None = None) -> None:
    """Run until SIGTERM/SIGINT (graceful stop); SIGHUP reloads the config file."""
    loop = asyncio.get_running_loop()
    # "serving" is announced only once the signals below are handled: a Ctrl-C right after the
    # announcement must stop gracefully, not kill the process
    announce = options.on_ready if options is not None else None
    handled = False
    early: list[Runtime] = []

    def on_ready(ready: Runtime) -> None:
        if handled and announce is not None:
            announce(ready)
        else:
            early.append(ready)

    if options is not None and announce is not None:
        options = dataclasses.replace(options, on_ready=on_ready)
    await runtime.start(options)
    tasks: set[asyncio.Future[None]] = set()

    def on_stop() -> None:
        if runtime.draining:
            log.info("stopping now: a second signal ends the drain and the grace period")
            runtime.hurry()
            return
        server = runtime.config.server
        log.info(
            "stopping: draining for %ss, then %ss of grace for in-flight RPCs (signal again to stop now)",
            server.drain_seconds,
            server.grace_seconds,
        )
        tasks.add(asyncio.ensure_future(runtime.stop()))

    def on_hup() -> None:
        if runtime.config_path is None:
            log.warning("SIGHUP ignored: the demo fleet has no config file")
            return

        async def go() -> None:
            try:
                await runtime.reload()
            except Exception as exc:
                log.error("config reload refused, old config kept:\n%s", exc)

        tasks.add(asyncio.ensure_future(go()))

    loop.add_signal_handler(signal.SIGTERM, on_stop)
    loop.add_signal_handler(signal.SIGINT, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    handled = True
    if announce is not None:
        for ready in early:
            announce(ready)
    await runtime.wait_stopped()


def _refuse_a_taken_port(listen: str) -> None:
    """A port another process listens on, said plainly before grpc logs its own bind error."""
    host, sep, port = listen.rpartition(":")
    if not sep or listen.startswith("unix:") or not port.isdigit() or int(port) == 0:
        return
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # grpc reports anything else in its own words
            raise OSError(
                f"cannot listen on {listen}: the port is in use (another nexus-grpc? "
                f"`nexus-grpc health --target {listen}` asks it)"
            ) from None


def _iso_now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")
