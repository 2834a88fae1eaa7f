"""Hot reload: SIGHUP and AdminService.ReloadConfig under concurrent Decide load with
zero failed RPCs, a bad file that changes nothing and is counted, and `watch_config` picking up
a file change. GetServerInfo.config_version always names the active file; health stays SERVING."""

from __future__ import annotations

import hashlib
import re
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from durability_procs import Launch, Serve
from grpc_health.v1 import health_pb2
from support.net import wait_until
from support.servers import stubs

from nexus_grpc._gen.nexus.v1 import admin_pb2 as apb
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc.testing.server import TestServer

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
CLIENTS = 4

BASE = """\
[server]
drain_seconds = 0
grace_seconds = 1
watch_config = {watch}

[routing]
strategy = "priority_only"

[ledger]
kind = "{ledger}"
path = "ledger.db"
{backends}"""

BACKEND = """
[[backends]]
id = "{id}"
url = "http://127.0.0.1:9"
type = "vllm"
priority = {priority}
[[backends.models]]
id = "m"
"""


def config_text(priorities: dict[str, int], *, watch: bool = False, ledger: str = "sqlite") -> str:
    backends = "".join(BACKEND.format(id=b, priority=p) for b, p in priorities.items())
    return BASE.format(watch=str(watch).lower(), ledger=ledger, backends=backends)


VARIANTS = [
    {"a": 1, "b": 2},
    {"a": 5, "b": 1, "c": 3},
    {"c": 1, "a": 2},
]
BAD = config_text({"a": 1}).replace('strategy = "priority_only"', 'strategy = "fastest"')


def version_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def failures_of(info: apb.GetServerInfoResponse) -> int:
    for reason in info.degraded_reasons:
        found = re.match(r"(\d+) config reloads? failed", reason)
        if found:
            return int(found[1])
    return 0


def test_reload_under_load_sighup_and_rpc(launch: Launch, tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(config_text(VARIANTS[0]))
    server: Serve = launch(path)
    server.wait_serving()
    assert server.info().config_version == version_of(path.read_text())

    decided: list[str] = []
    errors: list[str] = []
    health_seen: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = dgrpc.DecisionServiceStub(channel)
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    resp = stub.Decide(dpb.DecideRequest(request_id=f"r-{k}-{n}", model="m"), timeout=15)
                    assert resp.route.backend_id in ("a", "b", "c"), resp
                    report = dpb.ReportOutcomeRequest(
                        request_id=f"r-{k}-{n}", backend_id=resp.route.backend_id, success=True
                    )
                    stub.ReportOutcome(report, timeout=15)
                except (grpc.RpcError, AssertionError) as exc:
                    with lock:
                        errors.append(str(exc))
                    return
                with lock:
                    decided.append(resp.route.backend_id)

    def watch_health() -> None:
        with grpc.insecure_channel(server.target) as channel:
            health = stubs(channel).health
            while not stop.is_set():
                health_seen.add(health.Check(health_pb2.HealthCheckRequest(), timeout=10).status)
                time.sleep(0.02)  # a sampling pace: health is watched for the whole run

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
    threads.append(threading.Thread(target=watch_health, daemon=True))
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(decided) >= 50, "load is running", timeout=20)
        for i in range(1, 7):
            text = config_text(VARIANTS[i % len(VARIANTS)])
            path.write_text(text)
            if i % 2:
                server.signal(signal.SIGHUP)
                wait_until(
                    lambda t=text: server.info().config_version == version_of(t),
                    f"SIGHUP reload {i}",
                    timeout=20,
                )
            else:
                resp = server.stubs.admin.ReloadConfig(apb.ReloadConfigRequest(), timeout=15)
                assert resp.config_version == version_of(text)
            variant = VARIANTS[i % len(VARIANTS)]
            top = min(variant, key=lambda b: variant[b])
            mark = len(decided)
            wait_until(
                lambda top=top, mark=mark: top in decided[mark:], f"decisions follow reload {i}", timeout=20
            )
            if i == 3:  # a bad file, by signal and by RPC: nothing changes, both are counted
                path.write_text(BAD)
                server.signal(signal.SIGHUP)
                wait_until(
                    lambda: failures_of(server.info()) == 1, "the failed SIGHUP reload counted", timeout=20
                )
                with pytest.raises(grpc.RpcError) as info:
                    server.stubs.admin.ReloadConfig(apb.ReloadConfigRequest(), timeout=15)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "routing.strategy" in (info.value.details() or "")
                current = server.info()
                assert failures_of(current) == 2
                assert current.config_version == version_of(text)  # the old config is kept
        wait_until(lambda: len(decided) >= 300, "a few hundred decisions", timeout=20)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert health_seen == {SERVING}
    final = VARIANTS[6 % len(VARIANTS)]
    resp = server.stubs.decision.Decide(dpb.DecideRequest(model="m"), timeout=10)
    assert resp.route.backend_id == min(final, key=lambda b: final[b])
    print(f"\nreload under load: {len(decided)} decisions, 6 reloads + 2 refused, 0 failed RPCs")


def test_watch_config_reloads_on_a_file_change(tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    first = config_text({"a": 1, "b": 2}, watch=True, ledger="memory")
    path.write_text(first)
    with TestServer(config_path=path) as server:
        s = stubs(server.channel)

        def version() -> str:
            return str(s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5).config_version)

        assert version() == version_of(first)
        second = config_text({"a": 2, "b": 1}, watch=True, ledger="memory")
        path.write_text(second)
        wait_until(lambda: version() == version_of(second), "the watcher applies the change", timeout=20)
        assert s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "b"

        bad = BAD.replace("watch_config = false", "watch_config = true")
        path.write_text(bad)
        wait_until(lambda: server.runtime.state.reload_failures == 1, "the bad file is counted", timeout=20)
        watcher = server.config_watcher
        looked = watcher.polls
        wait_until(lambda: watcher.polls >= looked + 2, "two more looks at the file", timeout=20)
        assert server.runtime.state.reload_failures == 1  # the same bad content is not retried
        assert version() == version_of(second)
        assert s.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING

        third = config_text({"c": 1}, watch=True, ledger="memory")
        path.write_text(third)
        wait_until(lambda: version() == version_of(third), "the next good file applies", timeout=20)
        assert s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "c"
