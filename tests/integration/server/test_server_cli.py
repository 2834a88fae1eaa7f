"""`nexus-grpc decide|explain|check-config` against a real server, and the synchronous
client code against a grpcio-testing scripted channel."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc_testing  # type: ignore[import-untyped]
import pytest

from nexus_grpc import cli
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.testing.server import TestServer

STAGES = [
    "RequestAnalyzer",
    "PrivacyReconciler",
    "BudgetReconciler",
    "TierReconciler",
    "QualityReconciler",
    "SchedulerReconciler",
]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexus_grpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_decide_prints_route_queue_reject(demo: TestServer, cli_env: dict[str, str]) -> None:
    route = run_cli(cli_env, "decide", "gpt-4", "--target", demo.target, "--request-id", "cli-1")
    assert route.returncode == 0, route.stderr
    assert "request cli-1: gpt-4 (resolved llama3:70b)" in route.stdout
    assert "ROUTE  -> gpu-1 (ollama, RESTRICTED)" in route.stdout
    assert "budget [global " in route.stdout and "SOFT_LIMIT" in route.stdout

    queue = run_cli(cli_env, "decide", "reasoning", "--target", demo.target)
    assert queue.returncode == 3, queue.stderr  # the documented exit status of a Queue
    assert "QUEUE  model deepseek-r1:70b" in queue.stdout
    # the exclusion table
    assert "SchedulerReconciler" in queue.stdout and "LOADING" in queue.stdout
    assert "suggested action" in queue.stdout

    reject = run_cli(cli_env, "decide", "claude-3-opus", "--target", demo.target)
    assert reject.returncode == 4, reject.stderr  # and of a Reject
    assert "REJECT MODEL_NOT_FOUND: Request rejected: " in reject.stdout


def test_explain_prints_the_stage_table(demo: TestServer, cli_env: dict[str, str]) -> None:
    out = run_cli(cli_env, "explain", "gpt-4-turbo", "--tokens", "1000", "--target", demo.target)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("REJECT NO_ELIGIBLE_BACKEND") for line in lines)
    header = next(
        i
        for i, line in enumerate(lines)
        if line.split()[:6] == ["model", "stage", "in", "out", "us", "notes"]
    )
    rows = lines[header + 2 : header + 2 + len(STAGES)]
    assert [row.split()[1] for row in rows] == STAGES
    assert all(row.split()[0] == "gpt-4-turbo" for row in rows)
    assert "privacy_constraint=restricted" in out.stdout
    # Explain took no slot
    assert len(demo.runtime.engine.flights) == 0


def test_json_output_parses(demo: TestServer, cli_env: dict[str, str]) -> None:
    out = run_cli(
        cli_env,
        "explain",
        "fast",
        "--json",
        "--target",
        demo.target,
        "--label",
        "team=x",
        "--tenant",
        "team-a",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["decision"]["route"]["backend_id"] == "gpu-1"  # proto field names
    # the worse of global (seeded to its soft limit) and team-a (nothing spent)
    assert doc["decision"]["budget"]["scope"] == "global"
    assert doc["decision"]["budget"]["status"] == "BUDGET_STATUS_SOFT_LIMIT"
    assert [s["reconciler"] for s in doc["stages"]] == STAGES
    assert {s["backend_id"] for s in doc["scores"]} == {"gpu-1", "gpu-2"}

    dec = run_cli(cli_env, "decide", "fast", "--json", "--target", demo.target, "--request-id", "j-1")
    assert dec.returncode == 0, dec.stderr
    doc = json.loads(dec.stdout)
    assert doc["request_id"] == "j-1"
    assert doc["route"]["backend_id"] == "gpu-1"
    assert len(demo.runtime.engine.flights) == 1  # Decide took its slot


def test_cli_errors(demo: TestServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["decide", "x" * 300, "--target", demo.target]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "model" in err
    assert cli.main(["decide", "gpt-4", "--target", "127.0.0.1:1", "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


def test_cli_flags_reach_the_server(demo: TestServer, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["decide", "fast", "--target", demo.target, "--privacy", "restricted", "--min-tier", "3"]
    assert cli.main([*args, "--json", "--request-id", "flags-1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["route"]["backend_id"] == "gpu-1"  # gpu-2 is tier 2
    assert [e["code"] for e in doc.get("exclusions", [])] == ["EXCLUSION_CODE_TIER_BELOW_MINIMUM"]


# -- check-config -----------------------------------------------------------------------------


def test_check_config_good_and_bad(
    cli_env: dict[str, str], write_config: Callable[..., Path], small_toml: str
) -> None:
    good = write_config(small_toml, "good.toml")
    exe = str(Path(sys.executable).parent / "nexus-grpc")
    ok = subprocess.run(
        [exe, "check-config", str(good)], capture_output=True, text=True, env=cli_env, timeout=60, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and str(good) in ok.stdout

    bad_text = small_toml.replace("tier = 2", "tier = 9").replace(
        'kind = "memory"', 'kind = "memory"\nflavour = 1'
    )
    bad = write_config(bad_text, "bad.toml")
    out = run_cli(cli_env, "check-config", str(bad))
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, out.stderr
    assert all(str(bad) in line for line in errors)
    assert any("backends[0].tier" in line for line in errors)
    assert any("ledger.flavour" in line for line in errors)
    assert "Traceback" not in out.stderr


def test_check_config_warns(
    cli_env: dict[str, str], write_config: Callable[..., Path], small_toml: str
) -> None:
    text = small_toml.replace('hard_limit_action = "block_cloud"', 'hard_limit_action = "warn"')
    out = run_cli(cli_env, "check-config", str(write_config(text)))
    assert out.returncode == 0, out.stderr
    assert any(line.startswith("warning: ") and "warn" in line for line in out.stdout.splitlines()), (
        out.stdout
    )


# -- grpcio-testing: the client code against a scripted channel -------------------------------

DECIDE = dpb.DESCRIPTOR.services_by_name["DecisionService"].methods_by_name["Decide"]
EXPLAIN = dpb.DESCRIPTOR.services_by_name["DecisionService"].methods_by_name["Explain"]


def test_client_query_against_a_scripted_channel(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nexus_grpc import client

    channel = grpc_testing.channel(dpb.DESCRIPTOR.services_by_name.values(), grpc_testing.strict_real_time())
    targets: list[str] = []

    def fake_channel(target: str, *args: Any, **kwargs: Any) -> Any:
        targets.append(target)
        return channel

    monkeypatch.setattr("nexus_grpc.client.grpc.insecure_channel", fake_channel)
    args = cli.build_parser().parse_args(
        [
            "explain",
            "gpt-4",
            "--target",
            "scripted:1",
            "--tokens",
            "1200",
            "--label",
            "a=b=c",
            "--flexible",
            "--privacy",
            "restricted",
            "--priority",
            "high",
            "--token",
            "tkn",
            "--vision",
        ]
    )
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(client.query(args, explain=True)))
    worker.start()
    metadata, request, rpc = channel.take_unary_unary(EXPLAIN)
    assert isinstance(request, dpb.ExplainRequest)
    assert request.model == "gpt-4"
    assert request.estimated_input_tokens == 1200
    assert dict(request.labels) == {"a": "b=c"}
    assert request.tier_mode == tpb.TIER_MODE_FLEXIBLE
    assert request.privacy == tpb.PRIVACY_ZONE_RESTRICTED
    assert request.priority == tpb.PRIORITY_HIGH
    assert request.needs_vision and not request.needs_tools
    assert ("authorization", "Bearer tkn") in list(metadata)
    rpc.terminate(
        dpb.ExplainResponse(
            decision=dpb.DecideResponse(
                request_id="scripted-1",
                requested_model="gpt-4",
                resolved_model="llama3:70b",
                queue=dpb.Queue(
                    model="llama3:70b", reason="waiting", estimated_wait_ms=700, retry_after_ms=700
                ),
            ),
            stages=[
                dpb.StageTrace(model="llama3:70b", reconciler=name, candidates_in=1, candidates_out=1)
                for name in STAGES
            ],
        ),
        (),
        grpc.StatusCode.OK,
        "",
    )
    worker.join(10)
    assert result == [0]
    assert targets == ["scripted:1"]
    out = capsys.readouterr().out
    assert "QUEUE  model llama3:70b: waiting; retry in 700 ms" in out
    assert "SchedulerReconciler" in out

    # an error status becomes exit 1 with the code on stderr
    args = cli.build_parser().parse_args(["decide", "", "--target", "scripted:2"])
    worker = threading.Thread(target=lambda: result.append(client.query(args, explain=False)))
    worker.start()
    _, request, rpc = channel.take_unary_unary(DECIDE)
    assert isinstance(request, dpb.DecideRequest)
    rpc.terminate(None, (), grpc.StatusCode.INVALID_ARGUMENT, "model: is required and must not be empty")
    worker.join(10)
    assert result == [0, 1]
    assert "INVALID_ARGUMENT: model: is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--tokens", "-5"], "negative"),
        (["--tokens", "99999999999"], "above the limit of 10000000"),
        (["--max-output", "1.5"], "not an integer"),
        (["--min-tier", "9"], "out of range 0..5"),
    ],
)
def test_out_of_range_arguments_are_clean_usage_errors(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["decide", "m", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert words in err
    assert "Traceback" not in err
