"""A real Node client (@grpc/grpc-js on the protos in protos/) against a real server: Route,
Queue, Reject and a field error."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from nexus_grpc.testing.server import TestServer

NODE_CLIENT = Path(__file__).resolve().parents[3] / "clients" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    assert exe is not None, "node is missing: install Node.js (./dev test needs node and npm)"
    assert (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "clients/node is not installed: run `npm ci --prefix clients/node` (./dev test does)"
    )
    return exe


def run(node: str, server: TestServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, str(NODE_CLIENT / "decide.js"), "--target", server.target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_node_client_routes_and_reports_the_outcome(node: str) -> None:
    with TestServer() as server:  # the demo fleet
        done = run(node, server, "--model", "gpt-4", "--tokens", "1200", "--tenant", "team-a")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        decision = result["decision"]
        assert decision["decision"] == "route"
        assert decision["resolved_model"] == "llama3:70b"
        assert decision["route"]["backend_id"] == "gpu-1"
        assert decision["route"]["privacy_zone"] == "PRIVACY_ZONE_RESTRICTED"
        assert result["outcome"]["recorded"] is True
        gpu1 = server.runtime.registry.live["gpu-1"]
        assert server.run(_in_flight(gpu1)) == 0  # the Node client's outcome freed the slot


async def _in_flight(live: object) -> int:
    return len(live.in_flight)  # type: ignore[attr-defined]


def test_node_client_sees_a_queue(node: str) -> None:
    with TestServer() as server:
        done = run(node, server, "--model", "reasoning")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["decision"]["decision"] == "queue"
        assert result["decision"]["queue"]["model"] == "deepseek-r1:70b"
        assert int(result["decision"]["queue"]["retry_after_ms"]) > 0
        assert result["outcome"] is None


def test_node_client_sees_rejections_and_field_errors(node: str) -> None:
    with TestServer() as server:
        rejected = run(node, server, "--model", "claude-3-opus")
        assert rejected.returncode == 0, rejected.stderr
        reject = json.loads(rejected.stdout)["decision"]["reject"]
        assert reject["code"] == "REJECT_CODE_MODEL_NOT_FOUND"
        assert "available models:" in reject["message"]
        invalid = run(node, server, "--model", "")
        assert invalid.returncode == 1
        assert "INVALID_ARGUMENT model: is required" in invalid.stderr
