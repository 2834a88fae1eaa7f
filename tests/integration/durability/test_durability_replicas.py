"""Scale-out: three `serve` replicas share one real Redis and one
`block_cloud` budget. Concurrent Decides and ReportOutcomes spread over the replicas (each outcome
reported to another replica than the one that decided) drive spend past the hard limit.

Afterwards: every replica reads spend = the sum of the reported costs exactly, nothing stays
reserved, the overshoot is bounded by the reservations in flight (their estimation error), and no
decision started after the limit was visible (plus one refresh interval) went to a cloud backend."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from durability_procs import Launch, Serve
from support.net import wait_until
from support.redis_server import RedisServer

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc.domain.money import nano_to_usd, usd_to_nano

pytestmark = [pytest.mark.redis, pytest.mark.slow]

REPLICAS = 3
WORKERS_PER_REPLICA = 3
LIMIT_USD = 1.2
REFRESH_SECS = 0.2
ESTIMATE_NANO = usd_to_nano(0.02)  # 1000 in x 0.01 + 500 out x 0.02 per 1K
AFTER_LIMIT_DECISIONS = 50  # keep deciding after the limit was seen, for this many decisions

CONFIG = """\
[server]
drain_seconds = 0
grace_seconds = 1

[routing]
strategy = "priority_only"

[routing.budget]
monthly_limit_usd = {limit}
hard_limit_action = "block_cloud"
reconciliation_interval_secs = {refresh}

[ledger]
kind = "redis"
url = "{url}"
path = "{journal}"

[queue]
in_flight_ttl_seconds = 120

[[backends]]
id = "cloud-a"
url = "https://a.cloud.test"
type = "openai"
priority = 1
[backends.pricing]
input_per_1k = 0.01
output_per_1k = 0.02
[[backends.models]]
id = "m"

[[backends]]
id = "cloud-b"
url = "https://b.cloud.test"
type = "anthropic"
priority = 2
[backends.pricing]
input_per_1k = 0.01
output_per_1k = 0.02
[[backends.models]]
id = "m"

[[backends]]
id = "local"
url = "http://127.0.0.1:9"
type = "vllm"
priority = 90
[[backends.models]]
id = "m"
"""

CLOUD = ("cloud-a", "cloud-b")


def replica_config(tmp_path: Path, redis: RedisServer, index: int) -> Path:
    path = tmp_path / f"replica-{index}.toml"
    path.write_text(
        CONFIG.format(limit=LIMIT_USD, refresh=REFRESH_SECS, url=redis.url, journal=f"journal-{index}.db")
    )
    return path


def decide_request(rid: str) -> dpb.DecideRequest:
    return dpb.DecideRequest(request_id=rid, model="m", estimated_input_tokens=1000, max_output_tokens=500)


def actual_cost(n: int) -> float:
    """The 0.02 USD estimate, or two or three times it: in-flight requests that cost more than
    reserved are what overshoots. Multiples of the estimate (and a limit that is one) make sure
    spend ends at or past the limit: once the reservations block the cloud, spent + reserved is
    at the limit, and every settle replaces a reservation with at least as much."""
    return (0.02, 0.02, 0.04, 0.02, 0.06)[n % 5]


@dataclass(frozen=True)
class Record:
    started: float  # monotonic, at the client
    replica: int
    backend: str
    cost_nano: int


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_replicas_share_one_hard_limit(launch: Launch, redis: RedisServer, tmp_path: Path) -> None:
    replicas: list[Serve] = [launch(replica_config(tmp_path, redis, i)) for i in range(REPLICAS)]
    for r in replicas:
        r.wait_serving()
    limit = usd_to_nano(LIMIT_USD)
    records: list[Record] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(k: int) -> None:
        channels = [grpc.insecure_channel(r.target) for r in replicas]
        try:
            decision = [dgrpc.DecisionServiceStub(c) for c in channels]
            for n in itertools.count():
                if stop.is_set():
                    return
                rid = f"rep-{k}-{n}"
                i, j = (k + n) % REPLICAS, (k + n + 1) % REPLICAS  # decide on one, report on another
                started = time.monotonic()
                try:
                    resp = decision[i].Decide(decide_request(rid), timeout=15)
                    backend = resp.route.backend_id
                    assert backend, f"{rid}: no Route: {resp}"
                    cost = actual_cost(n) if backend in CLOUD else 0.0
                    report = dpb.ReportOutcomeRequest(
                        request_id=rid, backend_id=backend, model="m", success=True, cost_usd=cost
                    )
                    assert decision[j].ReportOutcome(report, timeout=15).recorded
                except (grpc.RpcError, AssertionError) as exc:
                    with lock:
                        errors.append(f"{rid}: {exc}")
                    return
                with lock:
                    records.append(Record(started, i, backend, usd_to_nano(cost)))
        finally:
            for c in channels:
                c.close()

    threads = [
        threading.Thread(target=worker, args=(k,), daemon=True) for k in range(REPLICAS * WORKERS_PER_REPLICA)
    ]
    for t in threads:
        t.start()

    def limit_reached() -> bool:
        assert not errors, errors[:3]
        return replicas[0].spent_reserved()[0] >= limit

    try:
        wait_until(limit_reached, "spend reaches the limit", timeout=60, interval=0.05)
        seen_at = time.monotonic()
        visible_at = seen_at + REFRESH_SECS  # every replica has re-read the totals by then
        wait_until(
            lambda: sum(1 for r in list(records) if r.started >= visible_at) >= AFTER_LIMIT_DECISIONS,
            "decisions go on after the limit was visible everywhere",
            timeout=30,
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)

    reported = sum(r.cost_nano for r in records)
    cloud = [r for r in records if r.backend in CLOUD]
    for r in replicas:  # every replica converges to the exact sum (within its refresh interval)
        wait_until(
            lambda r=r: r.spent_reserved() == (reported, 0),
            lambda r=r: f"{r.target} converges: {r.spent_reserved()} != {(reported, 0)}",
            timeout=10 * REFRESH_SECS + 10,
        )

    overshoot = reported - limit
    in_flight_bound = len(threads) * max(r.cost_nano - ESTIMATE_NANO for r in cloud)
    estimation_error = sum(max(0, r.cost_nano - ESTIMATE_NANO) for r in cloud)
    late = [r for r in cloud if r.started >= seen_at + REFRESH_SECS]
    per_replica = [sum(1 for r in records if r.replica == i) for i in range(REPLICAS)]
    print(
        f"\nreplicas: {len(records)} decisions ({per_replica} per replica), {len(cloud)} to cloud; "
        f"spent {nano_to_usd(reported):.6f} USD of {LIMIT_USD} (overshoot {nano_to_usd(overshoot):.6f} USD, "
        f"bound {nano_to_usd(min(in_flight_bound, estimation_error)):.6f}); cloud routes after the limit "
        f"was visible: {len(late)}"
    )
    assert overshoot >= 0
    assert overshoot <= min(in_flight_bound, estimation_error)
    assert not late, late[:3]
    after = [r for r in records if r.started >= seen_at + REFRESH_SECS]
    assert after and all(r.backend == "local" for r in after)  # decisions went on, locally

    # a fresh round on every replica: only the restricted backend is eligible now
    for index, r in enumerate(replicas):
        for n in range(5):
            resp = r.stubs.decision.Decide(decide_request(f"after-{index}-{n}"), timeout=10)
            assert resp.route.backend_id == "local"
