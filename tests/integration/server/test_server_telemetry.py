"""Telemetry on a real server: the Prometheus endpoint and the decision log."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from support.net import free_port, wait_until
from support.servers import SMALL_TOML, StartServer, stubs

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb


def _with_telemetry(extra: str) -> str:
    return SMALL_TOML.replace("[routing]\n", f"[telemetry]\n{extra}\n\n[routing]\n", 1)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
        return body.decode()


def test_prometheus_endpoint_counts_decisions_exclusions_and_state(start_server: StartServer) -> None:
    port = free_port()
    server = start_server(config_text=_with_telemetry(f'prometheus_listen = "127.0.0.1:{port}"'))
    s = stubs(server.channel)
    s.decision.Decide(dpb.DecideRequest(request_id="a", model="m"))  # route to local
    s.decision.Decide(dpb.DecideRequest(request_id="b", model="nope"))  # model not found
    s.decision.Decide(
        dpb.DecideRequest(request_id="c", model="gpt-4-turbo", privacy=1)  # restricted: privacy reject
    )
    text = _scrape(port)
    assert 'nexus_decisions_total{decision="route",reject_code=""} 1.0' in text
    assert 'nexus_decisions_total{decision="reject",reject_code="model_not_found"} 1.0' in text
    assert 'nexus_decisions_total{decision="reject",reject_code="no_eligible_backend"} 1.0' in text
    assert 'nexus_reconciler_exclusions_total{code="privacy_zone",reconciler="PrivacyReconciler"} 1.0' in text
    assert 'nexus_backend_in_flight{backend="local"} 1.0' in text
    assert 'nexus_budget_status{scope="global"} 1.0' in text
    assert 'nexus_budget_spent_usd{scope="team-a"} 0.0' in text
    assert "nexus_ledger_available 1.0" in text
    assert "nexus_pipeline_duration_seconds_count 3.0" in text
    assert 'nexus_reconciler_duration_seconds_count{reconciler="SchedulerReconciler"}' in text
    assert 'nexus_config_info{config_version="' in text
    # the outcome frees the slot, and an estimate-only outcome is counted as such
    s.decision.ReportOutcome(dpb.ReportOutcomeRequest(request_id="a", backend_id="local", success=True))
    text = _scrape(port)
    assert 'nexus_backend_in_flight{backend="local"} 0.0' in text
    assert "nexus_outcomes_estimated_total 1.0" in text


def test_decision_log_writes_one_json_line_per_decision(start_server: StartServer, tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    server = start_server(config_text=_with_telemetry(f'decision_log = "{log}"'))
    s = stubs(server.channel)
    s.decision.Decide(dpb.DecideRequest(request_id="r1", model="m", labels={"team": "search"}))
    s.decision.Explain(dpb.ExplainRequest(request_id="r2", model="nope"))
    server.stop()  # flushes the log
    wait_until(lambda: len(log.read_text().splitlines()) >= 2, "two lines in the decision log", timeout=5)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["request_id"], e["decision"], e["explain"]) for e in lines] == [
        ("r1", "route", False),
        ("r2", "reject", True),
    ]
    first, second = lines
    assert first["backend"] == "local" and first["labels"] == {"team": "search"}
    assert set(first["stage_us"]) == {"RouteIndex"}  # a Route the index decided, in one step
    assert set(second["stage_us"]) == {  # Explain runs every stage
        "RequestAnalyzer",
        "PrivacyReconciler",
        "BudgetReconciler",
        "TierReconciler",
        "QualityReconciler",
        "SchedulerReconciler",
    }
    assert second["reject_code"] == "model_not_found"
    assert first["config_version"] == second["config_version"] != ""
