"""`nexus-grpc serve` as a real process: SIGTERM stops it gracefully, a port clash and an invalid
config fail loudly (SPEC §3, §7)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc

Serve = Callable[..., subprocess.Popen[str]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.poll() is None, f"serve exited early: {proc.communicate()[1]}"
            try:
                resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "serve did not become SERVING"
            time.sleep(0.05)


@pytest.fixture
def serve(cli_env: dict[str, str]) -> Iterator[Serve]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_grpc.cli", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture
def config_file(write_config: Callable[..., Path], small_toml: str) -> Path:
    return write_config(small_toml)


def test_sigterm_stops_gracefully_with_exit_0(serve: Serve, config_file: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    proc = serve("--config", str(config_file), "--listen", target)
    wait_serving(target, proc)
    with grpc.insecure_channel(target) as channel:
        resp = dgrpc.DecisionServiceStub(channel).Decide(dpb.DecideRequest(model="m"), timeout=5)
        assert resp.route.backend_id == "local"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 10  # drain 0.2 s + grace 0.5 s, plus start-up noise
    assert "Traceback" not in err


def test_port_clash_fails_loudly(serve: Serve, config_file: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    first = serve("--config", str(config_file), "--listen", target)
    wait_serving(target, first)
    second = serve("--config", str(config_file), "--listen", target)
    _, err = second.communicate(timeout=30)
    assert second.returncode != 0
    assert target in err  # says which address
    # the first server is unaffected (no silent SO_REUSEPORT sharing)
    assert first.poll() is None
    wait_serving(target, first, timeout=5)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=15)
    assert first.returncode == 0


def test_port_clash_is_reported_without_a_traceback(serve: Serve, config_file: Path) -> None:
    """cli.py catches OSError to print `nexus-grpc: cannot listen on ...`; a port clash must
    take that path (exit 1, one clear line) rather than crash with a Python traceback."""
    target = f"127.0.0.1:{free_port()}"
    first = serve("--config", str(config_file), "--listen", target)
    wait_serving(target, first)
    second = serve("--config", str(config_file), "--listen", target)
    _, err = second.communicate(timeout=30)
    assert second.returncode == 1
    assert "Traceback" not in err, err
    assert any(line.startswith("nexus-grpc: ") and target in line for line in err.splitlines()), err


def test_invalid_config_exits_2_naming_file_and_key(
    serve: Serve, write_config: Callable[..., Path], small_toml: str
) -> None:
    bad = write_config(small_toml.replace("max_wait_ms = 5000", "max_wait_ms = -5"), "broken.toml")
    proc = serve("--config", str(bad), "--listen", f"127.0.0.1:{free_port()}")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert str(bad) in err
    assert "queue.max_wait_ms" in err
    assert "Traceback" not in err


def test_missing_config_file_exits_2(serve: Serve, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = serve("--config", str(missing), "--listen", f"127.0.0.1:{free_port()}")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert str(missing) in err
