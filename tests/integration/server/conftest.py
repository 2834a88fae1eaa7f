"""Fixtures for the real-server integration tests: a `TestServer` (nexus_grpc.testing) on a free
loopback port, the gRPC stubs, small config files, and a helper for expected errors. What tests
import (SMALL_TOML, StartServer, the stubs) lives in support.servers; this file has fixtures only."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.servers import SMALL_TOML, TOKEN_VARS, StartServer, Stubs, serve_env, stubs

from nexus_grpc.testing import TestServer

VENV_BIN = Path(sys.executable).parent


# A traceback or a source path in a status message means an internal leak.
LEAK = re.compile(r"Traceback|File \"|\.py\b|(?:/[\w.-]+){2,}")


ErrorOf = Callable[..., tuple[grpc.StatusCode, str]]


@pytest.fixture(autouse=True)
def _no_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without admin/client tokens whatever the environment holds."""
    for name in TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """start_server(config_text=..., config_path=..., listen=...) -> a started TestServer,
    stopped at teardown."""
    servers: list[TestServer] = []

    def start(**kwargs: Any) -> TestServer:
        server = TestServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def demo(start_server: StartServer) -> TestServer:
    """The built-in demo fleet (`nexus-grpc serve` without --config)."""
    return start_server()


@pytest.fixture
def small(start_server: StartServer) -> TestServer:
    return start_server(config_text=SMALL_TOML)


@pytest.fixture
def small_toml() -> str:
    return SMALL_TOML


@pytest.fixture
def stubs_of() -> Callable[[TestServer], Stubs]:
    return lambda server: stubs(server.channel)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(text: str, name: str = "nexus.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def error_of() -> ErrorOf:
    """error_of(stub.Method, request, **kw) -> (status code, details); fails if the call succeeds
    or the details leak a traceback or a source path."""

    def call(method: Callable[..., Any], request: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
        kwargs.setdefault("timeout", 10)
        with pytest.raises(grpc.RpcError) as info:
            method(request, **kwargs)
        err: Any = info.value
        code: grpc.StatusCode = err.code()
        details: str = err.details() or ""
        assert not LEAK.search(details), f"status details leak internals: {details!r}"
        return code, details

    return call


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for subprocesses: this venv first on PATH, the repo importable, no tokens."""
    return serve_env({"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
