"""A real Go client (a Go module: grpc-go, the committed stubs in clients/go/nexusv1 generated from
protos/) built offline and run against a real server: Route, Queue, Reject, a field error; and the
committed stubs are what clients/go/gen.sh generates now."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nexus_grpc.testing.server import TestServer

GO_CLIENT = Path(__file__).resolve().parents[3] / "clients" / "go"


@pytest.fixture(scope="module")
def decide_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("go-client")
    built = subprocess.run(
        [str(GO_CLIENT / "build.sh"), str(out)], capture_output=True, text=True, timeout=300, check=False
    )
    assert built.returncode == 0, f"building the Go client failed:\n{built.stdout}\n{built.stderr}"
    return out / "decide"


def run(binary: Path, server: TestServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "-target", server.target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_go_client_routes_and_reports_the_outcome(decide_binary: Path) -> None:
    with TestServer() as server:  # the demo fleet
        done = run(decide_binary, server, "-model", "gpt-4", "-tokens", "1200", "-tenant", "team-a")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        route = result["decision"]["route"]
        assert (route["backend_id"], route["model"]) == ("gpu-1", "llama3:70b")
        assert route["privacy_zone"] == "PRIVACY_ZONE_RESTRICTED"
        assert result["outcome"]["recorded"] is True
        assert server.runtime.registry.live["gpu-1"].in_flight == {}  # the outcome freed the slot


def test_go_client_sees_a_queue(decide_binary: Path) -> None:
    with TestServer() as server:
        done = run(decide_binary, server, "-model", "reasoning")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        queue = result["decision"]["queue"]
        assert queue["model"] == "deepseek-r1:70b" and int(queue["retry_after_ms"]) > 0
        assert result["outcome"] is None  # nothing routed, nothing to report


def test_committed_go_stubs_are_generated_from_the_protos(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(GO_CLIENT / "gen.sh"), str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    committed = sorted(p.name for p in (GO_CLIENT / "nexusv1").glob("*.go"))
    assert sorted(p.name for p in tmp_path.glob("*.go")) == committed
    for name in committed:
        fresh = (tmp_path / name).read_text()
        assert (GO_CLIENT / "nexusv1" / name).read_text() == fresh, f"{name}: run clients/go/gen.sh"


def test_go_client_sees_rejections_and_field_errors(decide_binary: Path) -> None:
    with TestServer() as server:
        rejected = run(decide_binary, server, "-model", "gpt-4-turbo-unknown")
        assert rejected.returncode == 0, rejected.stderr
        reject = json.loads(rejected.stdout)["decision"]["reject"]
        assert reject["code"] == "REJECT_CODE_MODEL_NOT_FOUND"
        invalid = run(decide_binary, server, "-model", "")
        assert invalid.returncode == 1
        assert "InvalidArgument model: is required" in invalid.stderr
