"""Fixtures for the durability tests: `launch` starts real `nexus-grpc serve` processes (see
durability_procs.py); every process a test starts is killed at teardown, and its log is printed
(pytest shows it when the test failed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from durability_procs import Launch, Serve


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """launch(config_path, port=None) -> a started (not yet SERVING) serve process."""
    started: list[Serve] = []

    def start(config: Path, port: int | None = None) -> Serve:
        server = Serve(config, tmp_path / f"serve-{len(started)}.log", port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.channel.close()
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(timeout=10)
    for server in started:  # pytest shows this captured output only when the test failed
        print(f"---- {server.log.name} ({server.target})\n{server.log_text()}")
