"""Redis outage: two `serve` replicas on one real Redis keep deciding while Redis
is stopped (connections refused) and later frozen (a hang: connections open, nothing answers).

Decisions continue with no failed RPC; Decide latency is measured by a real client before and
during each outage and printed (no tight wall-clock assertion, only a generous sanity bound);
outcomes reported during the outages are journaled, and once Redis is back the ledger converges:
every replica reads spend = the sum of every reported cost.

Redis is stopped with `SHUTDOWN SAVE` and restarted on its data directory, as a production Redis
with persistence would be; a Redis that loses its data loses the spend recorded in it."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durability_procs import Launch, Serve, percentile
from support.net import wait_until
from support.redis_server import RedisServer

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc.domain.money import nano_to_usd, usd_to_nano

pytestmark = [pytest.mark.redis, pytest.mark.slow]

REPLICAS = 2
CLIENTS = 3
BASELINE_SECS = 2.5
OUTAGE_SECS = 3.0

CONFIG = """\
[server]
drain_seconds = 0
grace_seconds = 1

[routing.budget]
monthly_limit_usd = 100000
hard_limit_action = "block_cloud"
reconciliation_interval_secs = 0.2

[ledger]
kind = "redis"
url = "{url}"
path = "{journal}"

[[backends]]
id = "cloud"
url = "https://cloud.test"
type = "openai"
priority = 1
[backends.pricing]
input_per_1k = 0.01
output_per_1k = 0.02
[[backends.models]]
id = "m"

[[backends]]
id = "local"
url = "http://127.0.0.1:9"
type = "vllm"
priority = 80
[[backends.models]]
id = "m"
"""


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def shutdown_and_save(redis: RedisServer) -> None:
    """Stop Redis the way an operator restart does: save, exit; start() reloads the data."""
    with contextlib.suppress(OSError):
        redis.command("SHUTDOWN", "SAVE")
    redis.stop()
    assert not redis.ping()


def test_redis_outage_keeps_deciding_and_the_ledger_converges(
    launch: Launch, redis: RedisServer, tmp_path: Path
) -> None:
    replicas: list[Serve] = []
    for i in range(REPLICAS):
        config = tmp_path / f"replica-{i}.toml"
        config.write_text(CONFIG.format(url=redis.url, journal=f"journal-{i}.db"))
        replicas.append(launch(config))
    for r in replicas:
        r.wait_serving()
        assert r.info().ledger_available

    phase = ["before"]
    latencies: dict[str, list[float]] = {}
    reported: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        channels = [grpc.insecure_channel(r.target) for r in replicas]
        try:
            stubs = [dgrpc.DecisionServiceStub(c) for c in channels]
            for n in itertools.count():
                if stop.is_set():
                    return
                rid = f"out-{k}-{n}"
                stub = stubs[(k + n) % REPLICAS]
                current = phase[0]
                request = dpb.DecideRequest(
                    request_id=rid, model="m", estimated_input_tokens=1000, max_output_tokens=500
                )
                started = time.perf_counter()
                try:
                    resp = stub.Decide(request, timeout=15)
                    elapsed = time.perf_counter() - started
                    backend = resp.route.backend_id
                    assert backend, f"no Route: {resp}"
                    cost = round(0.001 * (1 + n % 30), 3) if backend == "cloud" else 0.0
                    outcome = dpb.ReportOutcomeRequest(
                        request_id=rid, backend_id=backend, model="m", success=True, cost_usd=cost
                    )
                    assert stub.ReportOutcome(outcome, timeout=15).recorded
                except (grpc.RpcError, AssertionError) as exc:
                    with lock:
                        errors.append(f"{rid} ({current}): {exc}")
                    return
                with lock:  # a call that spans a phase change counts in the later phase
                    latencies.setdefault(phase[0], []).append(elapsed)
                    reported.append(usd_to_nano(cost))
        finally:
            for c in channels:
                c.close()

    def unavailable_everywhere() -> bool:
        return all(not r.info().ledger_available for r in replicas)

    def available_everywhere() -> bool:
        return all(r.info().ledger_available for r in replicas)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        # the phases' lengths are the scenario (real processes, a real Redis): decisions flow for
        # set times before, during and after each outage while the clients measure them
        time.sleep(BASELINE_SECS)  # the scenario's baseline phase

        phase[0] = "redis stopped"
        shutdown_and_save(redis)
        wait_until(unavailable_everywhere, "both replicas see the store down", timeout=30)
        assert all("unavailable" in " ".join(r.info().degraded_reasons) for r in replicas)
        time.sleep(OUTAGE_SECS)  # the outage lasts this long, traffic on

        phase[0] = "recovering"
        redis.start()
        wait_until(available_everywhere, "both replicas see the store again", timeout=30)
        time.sleep(1.0)  # traffic on the recovered store for a while

        phase[0] = "redis frozen"
        redis.freeze()
        wait_until(unavailable_everywhere, "both replicas see the store hang", timeout=30)
        time.sleep(OUTAGE_SECS)  # the outage lasts this long, traffic on

        phase[0] = "after"
        redis.thaw()
        wait_until(available_everywhere, "both replicas see the store again", timeout=30)
        time.sleep(1.0)  # traffic on the recovered store for a while
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]

    total = sum(reported)
    # the journals are replayed and the totals re-read: every replica converges to the exact sum
    wait_until(lambda: all(r.spent_reserved() == (total, 0) for r in replicas), "the ledger converges", 30)

    def p(name: str, q: float) -> float:
        return percentile(latencies[name], q) * 1000

    lines = [
        f"  {name:<14} n={len(latencies[name]):>5}  p50={p(name, 50):7.2f} ms  p99={p(name, 99):7.2f} ms  "
        f"max={max(latencies[name]) * 1000:7.2f} ms"
        for name in ("before", "redis stopped", "recovering", "redis frozen", "after")
    ]
    print(
        f"\nRedis outage, Decide latency over gRPC ({CLIENTS} clients, {REPLICAS} replicas):\n"
        + "\n".join(lines)
        + f"\n  {len(reported)} outcomes reported, ledger converged to {nano_to_usd(total):.6f} USD"
    )
    before = p("before", 99)
    for name in ("redis stopped", "redis frozen"):
        assert len(latencies[name]) >= 50, name  # decisions kept flowing
        # a sanity bound only: the store's op timeout is 0.2 s and the breaker keeps callers off it
        assert p(name, 99) < max(20 * before, 500.0), name
