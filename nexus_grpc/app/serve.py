"""`nexus-grpc serve`: a Runtime from the config file (or the demo fleet), run until
SIGTERM/SIGINT (a graceful stop; a second signal stops at once); SIGHUP reloads the file."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from pathlib import Path

from nexus_grpc.app.runtime import Runtime, ServeOptions
from nexus_grpc.config.demo import demo_config
from nexus_grpc.config.loader import load_config

log = logging.getLogger("nexus_grpc")


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
