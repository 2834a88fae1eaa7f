"""kill -9 mid-stream: a `serve` process on the sqlite ledger receives a
stream of ReportOutcome calls, is killed with SIGKILL, and restarts on the same file. Every
acknowledged outcome is charged exactly once; only calls that got no answer may go either way,
and retrying them settles that; retries of acknowledged ids never charge again."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import grpc
import pytest
from durability_procs import Launch
from support.servers import stubs

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc.domain.money import usd_to_nano

pytestmark = pytest.mark.slow

SENDERS = 4
ACKS_BEFORE_KILL = 300

CONFIG = """\
[server]
drain_seconds = 0
grace_seconds = 1

[routing.budget]
monthly_limit_usd = 1000000
hard_limit_action = "warn"

[ledger]
kind = "sqlite"
path = "ledger.db"

[[backends]]
id = "gpu"
url = "http://127.0.0.1:9"
type = "vllm"
[[backends.models]]
id = "m"
"""


def cost_of(sender: int, n: int) -> float:
    """Distinct, exactly representable costs (a millionth of a dollar apart)."""
    return round(0.001 * (1 + n % 97) + 0.000001 * (sender + 1), 6)


def outcome(rid: str, cost: float) -> dpb.ReportOutcomeRequest:
    return dpb.ReportOutcomeRequest(request_id=rid, backend_id="gpu", model="m", success=True, cost_usd=cost)


def test_kill_9_mid_stream_keeps_every_acknowledged_outcome_exactly_once(
    launch: Launch, tmp_path: Path
) -> None:
    config = tmp_path / "nexus.toml"
    config.write_text(CONFIG)
    first = launch(config)
    first.wait_serving()

    acked: dict[str, float] = {}
    unanswered: dict[str, float] = {}  # sent, no answer: charged or not, nobody knows yet
    lock = threading.Lock()
    enough = threading.Event()

    def sender(k: int) -> None:
        with grpc.insecure_channel(first.target) as channel:
            decision = stubs(channel).decision
            for n in itertools.count():
                rid = f"crash-{k}-{n}"
                cost = cost_of(k, n)
                try:
                    resp = decision.ReportOutcome(outcome(rid, cost), timeout=15)
                except grpc.RpcError:
                    with lock:
                        unanswered[rid] = cost
                    return
                assert resp.recorded, rid
                with lock:
                    acked[rid] = cost
                    if len(acked) >= ACKS_BEFORE_KILL:
                        enough.set()

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(SENDERS)]
    for t in threads:
        t.start()
    assert enough.wait(60), "the stream did not get going"
    first.kill9()  # mid-stream: the senders are still sending
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert len(unanswered) == SENDERS  # each sender stopped at its first unanswered call

    second = launch(config)
    second.wait_serving()
    spent, reserved = second.spent_reserved()
    base = sum(usd_to_nano(c) for c in acked.values())
    extra = spent - base
    print(
        f"\ncrash test: {len(acked)} acknowledged outcomes before kill -9, "
        f"{len(unanswered)} unanswered; charged after restart {spent} nano-USD "
        f"(acknowledged {base}, unanswered charged {extra})"
    )
    assert reserved == 0

    # retry the unanswered ones: recorded=false exactly for those the crash had already charged
    charged_before = 0
    for rid, cost in unanswered.items():
        resp = second.stubs.decision.ReportOutcome(outcome(rid, cost), timeout=10)
        if not resp.recorded:
            charged_before += usd_to_nano(cost)
            assert usd_to_nano(resp.cost_usd) == usd_to_nano(cost)
    assert extra == charged_before, "the ledger holds something neither acknowledged nor in flight"
    total = base + sum(usd_to_nano(c) for c in unanswered.values())
    assert second.spent_reserved() == (total, 0)

    # every acknowledged id, retried (even with another cost), is a duplicate: no new charge
    for rid, cost in acked.items():
        resp = second.stubs.decision.ReportOutcome(outcome(rid, cost * 2), timeout=10)
        assert not resp.recorded, rid
        assert usd_to_nano(resp.cost_usd) == usd_to_nano(cost), rid
    assert second.spent_reserved() == (total, 0)

    # and the same holds for a third start on the file
    second.stop()
    third = launch(config)
    third.wait_serving()
    assert third.spent_reserved() == (total, 0)
    third.stop()
