"""`nexus-grpc serve` as a real process: SIGTERM stops it gracefully, a port clash and an invalid
config fail loudly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from support import servers
from support.net import free_port

from nexus_grpc._gen.nexus.v1 import budget_pb2 as bpb
from nexus_grpc._gen.nexus.v1 import budget_pb2_grpc as bgrpc
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import registry_pb2_grpc as rgrpc
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb

Serve = Callable[..., subprocess.Popen[str]]


def wait_serving(target: str, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """SERVING within `timeout`; an early exit fails with what the process wrote to stderr."""
    servers.wait_serving(
        target, proc, timeout=timeout, log=lambda: proc.communicate()[1] if proc.poll() is not None else ""
    )


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


# --- serve --workers N: N processes on one port sharing the sqlite ledger ---

WORKERS_CONFIG = """\
[server]
drain_seconds = 0.1
grace_seconds = 0.5
workers = 2
[ledger]
kind = "sqlite"
path = "ledger.db"
[[backends]]
id = "a"
url = "http://127.0.0.1:9000"
type = "ollama"
[[backends.models]]
id = "m"
"""


def _children(parent: subprocess.Popen[str]) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def test_workers_share_the_port_and_charge_each_outcome_once(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(WORKERS_CONFIG)
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = serve("--config", str(path), "--listen", target)
    wait_serving(target, proc)
    assert len(_children(proc)) == 2
    # every call on its own connection, so the kernel spreads them over both workers
    total = 0.0
    for i in range(12):
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = dgrpc.DecisionServiceStub(channel)
            assert stub.Decide(dpb.DecideRequest(request_id=f"r{i}", model="m")).route.backend_id == "a"
            report = dpb.ReportOutcomeRequest(request_id=f"r{i}", backend_id="a", success=True, cost_usd=0.5)
            assert stub.ReportOutcome(report).recorded
            total += 0.5
    for i in range(12):  # retries land on either worker: the shared ledger refuses every one
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = dgrpc.DecisionServiceStub(channel)
            report = dpb.ReportOutcomeRequest(request_id=f"r{i}", backend_id="a", success=True, cost_usd=9.0)
            again = stub.ReportOutcome(report)
            assert (again.recorded, again.cost_usd) == (False, 0.5)
    with grpc.insecure_channel(target) as channel:
        budget = bgrpc.BudgetServiceStub(channel).GetBudget(bpb.GetBudgetRequest())
    assert budget.budget.spent_usd == total
    # an admin change made through one worker reaches every worker
    with grpc.insecure_channel(target) as channel:
        rgrpc.RegistryServiceStub(channel).SetBackendState(
            rpb.SetBackendStateRequest(
                backend_id="a", status=tpb.BACKEND_STATUS_DRAINING, reason="maintenance"
            )
        )
    # workers read each other's changes every 0.2 s: wait until 12 calls in a row, each on its own
    # connection (so on either worker), see the drain
    in_a_row, deadline = 0, time.monotonic() + 20
    while in_a_row < 12:
        assert time.monotonic() < deadline, "the admin change never reached every worker"
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            resp = dgrpc.DecisionServiceStub(channel).Decide(dpb.DecideRequest(model="m"))
        drained = (
            resp.WhichOneof("decision") == "reject"
            and resp.reject.reasons[0].code == tpb.EXCLUSION_CODE_DRAINING
        )
        in_a_row = in_a_row + 1 if drained else 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert _children(proc) == []


def test_workers_need_a_shared_ledger(serve: Serve) -> None:
    proc = serve("--workers", "2", "--listen", f"127.0.0.1:{free_port()}")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "--workers > 1 needs --config with a sqlite or redis ledger" in err
