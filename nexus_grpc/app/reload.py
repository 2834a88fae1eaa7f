"""Config reload (SIGHUP, `AdminService.ReloadConfig`, the file watch) and the tasks that watch
for changes: active health probes, the config file (`[server] watch_config`), and the other
workers' admin changes (`--workers N`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from nexus_grpc.config.errors import ConfigError, ConfigIssue
from nexus_grpc.config.loader import load_config
from nexus_grpc.config.schema import Config, Settings
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.servicers.registry import RegistryServicer
from nexus_grpc.state.health import HealthProber
from nexus_grpc.state.reload import ConfigWatcher
from nexus_grpc.state.server import ServerState

log = logging.getLogger("nexus_grpc")
ADMIN_SYNC_INTERVAL = 0.2  # seconds between reads of the other workers' admin changes


async def reload_config(path: Path, engine: DecisionEngine, state: ServerState, settings: Settings) -> Config:
    """Validate the file completely, then swap; a bad file changes nothing (it is counted in
    `state.reload_failures`). The process `settings` (`[server]`, `[ledger]`, `[telemetry]`) stay
    as the process started; the policy applies now."""
    registry = engine.registry
    current = registry.config
    try:
        config = await asyncio.to_thread(load_config, path)
        if not config.backends and current.backends and not config.routing.allow_empty_fleet:
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
        state.reload_failures += 1
        raise
    for section in ("server", "ledger", "telemetry"):
        if getattr(settings, section) != getattr(config.settings, section):
            log.warning("config reload: [%s] changed; it applies after a restart", section)
    config = dataclasses.replace(config, settings=settings)
    registry.load(config)
    engine.watch.notify()
    log.info("config reloaded: version %s", config.version)
    return config


def start_watchers(
    prober: HealthProber,
    registry_servicer: RegistryServicer,
    *,
    config_path: Path | None,
    watch_config: bool,
    reload: Callable[[], Awaitable[object]],
    version: Callable[[], str],
) -> tuple[list[asyncio.Task[None]], ConfigWatcher | None]:
    """Active health probes, the config file watch, and the other workers' admin changes; the
    tasks, and the config watcher when there is one."""
    tasks = [asyncio.create_task(prober.run(), name="nexus-health-probes")]
    if registry_servicer.sync is not None:
        tasks.append(asyncio.create_task(replay_admin_changes(registry_servicer), name="nexus-admin-sync"))
    watcher = None
    if config_path is not None and watch_config:
        watcher = ConfigWatcher(config_path, reload, version)
        tasks.append(asyncio.create_task(watcher.run(), name="nexus-config-watch"))
    return tasks, watcher


async def replay_admin_changes(registry_servicer: RegistryServicer) -> None:
    """Apply, here, the admin changes the other workers made (`--workers N`), forever."""
    sync = registry_servicer.sync
    assert sync is not None
    while True:
        try:
            for method, payload, age_ms in await sync.poll():
                try:
                    registry_servicer.replay(method, payload, age_ms)
                except (LookupError, ValueError) as exc:  # e.g. removed here by a reload meanwhile
                    log.warning("admin change %s from another worker not applied: %s", method, exc)
        except Exception:
            log.exception("reading the workers' admin changes failed; retrying")
        await asyncio.sleep(ADMIN_SYNC_INTERVAL)
