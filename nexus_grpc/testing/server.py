"""A real nexus-grpc server for tests: a `Runtime` on 127.0.0.1 (port 0 by default), served by
its own asyncio loop in a background thread, with a synchronous channel to it.

    with TestServer() as server:                      # the built-in demo fleet
        stub = DecisionServiceStub(server.channel)
        stub.Decide(DecideRequest(model="gpt-4"))

    server = TestServer(config_text=TOML)             # or config=Config, or config_path=FILE
    server.start()
    server.port, server.target, server.runtime        # 54321, "127.0.0.1:54321", the Runtime
    server.run(server.runtime.reload())               # run a coroutine on the server's loop
    server.config_watcher.polls                       # with config_path and watch_config
    stopping = server.begin_stop(drain_seconds=1.0)   # drain in the background; check health...
    stopping.result(timeout=5)
    server.stop()                                     # idempotent; closes the channel too

Only `config_path` gives the runtime a file to reload (AdminService.ReloadConfig, SIGHUP).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from nexus_grpc.app import Runtime, ServeOptions
from nexus_grpc.config.demo import demo_config
from nexus_grpc.config.loader import load_config, load_config_text
from nexus_grpc.config.schema import Config
from nexus_grpc.state.reload import ConfigWatcher

T = TypeVar("T")

DEFAULT_LISTEN = "127.0.0.1:0"


class TestServerError(RuntimeError):
    """The server could not be started (or was used before it was)."""


class TestServer:
    """One `Runtime` on its own loop thread. Not a pytest test class despite its name."""

    __test__ = False  # keep pytest from collecting it

    def __init__(
        self,
        config: Config | None = None,
        *,
        config_text: str | None = None,
        config_path: str | Path | None = None,
        listen: str = DEFAULT_LISTEN,
        start_timeout: float = 15.0,
        channel_options: list[tuple[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`clock` and `wall`: the server's time (e.g. a `FakeClock` the test moves)."""
        given = sum(x is not None for x in (config, config_text, config_path))
        if given > 1:
            raise ValueError("pass at most one of config, config_text, config_path")
        self._config = config
        self._clock, self._wall = clock, wall
        self._config_text = config_text
        self._config_path = Path(config_path) if config_path is not None else None
        self.listen = listen
        self.start_timeout = start_timeout
        self._channel_options = channel_options or []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runtime: Runtime | None = None
        self._channel: grpc.Channel | None = None
        self._stopping: concurrent.futures.Future[None] | None = None
        self._stopped = False

    # -- properties -------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise TestServerError("the server is not started")
        return self._runtime

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise TestServerError("the server is not started")
        return self._loop

    @property
    def port(self) -> int:
        return self.runtime.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def channel(self) -> grpc.Channel:
        """A synchronous insecure channel to the server, opened on first use."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target, options=self._channel_options)
        return self._channel

    @property
    def config_watcher(self) -> ConfigWatcher:
        """The runtime's `[server] watch_config` watcher (its `polls` count its looks at the file)."""
        watcher = self.runtime.config_watcher
        if watcher is None:
            raise TestServerError("the server watches no config file ([server] watch_config, config_path)")
        return watcher

    @property
    def running(self) -> bool:
        return self._runtime is not None and not self._stopped

    # -- lifecycle --------------------------------------------------------------------------

    def _load(self) -> Config:
        if self._config is not None:
            return self._config
        if self._config_text is not None:
            return load_config_text(self._config_text, source="<test>")
        if self._config_path is not None:
            return load_config(self._config_path)
        return demo_config()

    def start(self) -> TestServer:
        if self._loop is not None:
            raise TestServerError("the server was already started")
        config = self._load()  # config errors surface here, in the caller's thread
        loop = asyncio.new_event_loop()
        self._loop = loop
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="nexus-test-server", daemon=True)
        self._thread = thread
        thread.start()

        async def boot() -> Runtime:
            runtime = Runtime(config, config_path=self._config_path, clock=self._clock, wall=self._wall)
            await runtime.start(ServeOptions(listen=self.listen))
            return runtime

        try:
            self._runtime = asyncio.run_coroutine_threadsafe(boot(), loop).result(self.start_timeout)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 10.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the server's loop; returns at once."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def begin_stop(
        self, *, drain_seconds: float | None = 0.0, grace_seconds: float | None = 1.0
    ) -> concurrent.futures.Future[None]:
        """Start the graceful stop (health NOT_SERVING, drain, refuse, grace) on the loop thread.
        `None` takes the configured `[server] drain_seconds`/`grace_seconds`."""
        if self._stopping is None:
            self._stopping = self.submit(
                self.runtime.stop(drain_seconds=drain_seconds, grace_seconds=grace_seconds)
            )
        return self._stopping

    def stop(self, *, drain_seconds: float | None = 0.0, grace_seconds: float | None = 1.0) -> None:
        """Stop gracefully (if not already), close the channel, end the loop thread. Idempotent."""
        if self._stopped:
            return
        try:
            if self._runtime is not None and self._loop is not None:
                timeout = (drain_seconds or 0.0) + (grace_seconds or 0.0) + self.start_timeout
                if self._stopping is not None:
                    timeout += 30.0  # a stop begun elsewhere may use the configured durations
                self.begin_stop(drain_seconds=drain_seconds, grace_seconds=grace_seconds).result(timeout)
        finally:
            self._stopped = True
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return

        async def cancel_rest() -> None:
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            await loop.shutdown_asyncgens()

        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(10.0)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10.0)
        if not loop.is_running():
            loop.close()
        self._thread = None

    def __enter__(self) -> TestServer:
        if self._loop is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["DEFAULT_LISTEN", "TestServer", "TestServerError"]
