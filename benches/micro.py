"""Micro-benchmarks behind the findings in benches/README.md (this machine's costs of the building
blocks a Decide uses). Each line: best of 5 repeats, nanoseconds per operation.

    ./dev bench micro [--quick]     # ~30 s either way; writes benches/results/micro.json
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fleet

from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import ExclusionCode
from nexus_grpc.ledger.base import month_of
from nexus_grpc.servicers import wire


@dataclass(frozen=True, slots=True)
class _ExclusionFrozen:
    backend_id: str
    model: str
    reconciler: str
    code: ExclusionCode
    reason: str
    suggested_action: str


class _ExclusionTuple(NamedTuple):
    backend_id: str
    model: str
    reconciler: str
    code: ExclusionCode
    reason: str
    suggested_action: str


class _ExclusionSlots:
    __slots__ = ("backend_id", "code", "model", "reason", "reconciler", "suggested_action")

    def __init__(self, b: str, m: str, r: str, c: ExclusionCode, reason: str, action: str) -> None:
        self.backend_id = b
        self.model = m
        self.reconciler = r
        self.code = c
        self.reason = reason
        self.suggested_action = action


def ns(fn: Callable[[], Any], number: int = 20_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9


def _rank(entry: tuple[int, int, object]) -> tuple[int, int]:
    return entry[0], entry[1]


def wire_rows() -> dict[str, float]:
    """The Decide response encoder's pieces, on a real Route decision of the bench fleet."""
    import pipeline

    async def decision_of(n: int) -> Any:
        engine = await pipeline.build_engine(n)
        return await engine.decide(_fleet.bench_request("micro"))

    rows: dict[str, float] = {}
    encoder = wire.ResponseEncoder()
    for n in (10, 100):
        d = asyncio.run(decision_of(n))
        rows[f"wire.decide_response: Route, {len(d.exclusions)} reasons (fleet of {n})"] = ns(
            lambda d=d: encoder.decide_response(d), 2000
        )
        rows[f"  of which the reasons field ({len(d.exclusions)} cached reasons)"] = ns(
            lambda d=d: encoder.reasons_field(9, d.exclusions), 2000
        )
        if n == 10:
            rows["  of which budget_bytes (encoded per response)"] = ns(
                lambda d=d: wire.budget_bytes(d.budget)
            )
    rows["wire._key(9, 2): a constant tag, computed per field"] = ns(lambda: wire._key(9, 2))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="accepted for ./dev bench; the run is short anyway"
    )
    parser.parse_args()
    watch = _fleet.CpuWatch()
    code = ExclusionCode.PRIVACY_ZONE
    args = ("b1", "bench-model", "PrivacyReconciler", code, "reason", "action")
    rows: dict[str, float] = {
        "nexus_grpc Exclusion(...) as it is now": ns(lambda: Exclusion(*args)),
        "same fields, frozen slots dataclass": ns(lambda: _ExclusionFrozen(*args)),
        "same fields, NamedTuple": ns(lambda: _ExclusionTuple(*args)),
        "same fields, plain __slots__ class": ns(lambda: _ExclusionSlots(*args)),
        "same fields, tuple": ns(lambda: (args[0], args[1], args[2], code, args[4], args[5])),
        "month_of(wall) (datetime + strftime)": ns(lambda: month_of(1.8e9)),
        "ExclusionCode.name.lower()": ns(lambda: code.name.lower()),  # noqa: PLW0108
        "f-string ERROR_RATE reason (:.0% and :g)": ns(
            lambda: (
                f"error rate {8 / 10:.0%} over the last {3600.0:g}s "
                f"(8 of 10 outcomes) is at or above {0.5:.0%}"
            )
        ),
    }
    for n in (12, 117):
        scored: list[tuple[int, int, int]] = [(-((i * 37) % 101), i, i) for i in range(n)]

        def keyed(s: list[tuple[int, int, int]] = scored) -> object:
            return heapq.nsmallest(4, s, key=_rank)

        def plain(s: list[tuple[int, int, int]] = scored) -> object:
            return heapq.nsmallest(4, s)

        def sort(s: list[tuple[int, int, int]] = scored) -> object:
            return sorted(s)[:4]

        rows[f"top-4 of {n}: heapq.nsmallest(key=_rank)"] = ns(keyed, 5000)
        rows[f"top-4 of {n}: heapq.nsmallest (no key)"] = ns(plain, 5000)
        rows[f"top-4 of {n}: sorted()[:4]"] = ns(sort, 5000)
    rows.update(wire_rows())
    print(_fleet.table(["operation", "ns"], [[k, f"{v:.0f}"] for k, v in rows.items()]))
    other = round(watch.other_cores(), 2)
    payload = {"bench": "micro", "machine": _fleet.machine(), "ns": rows, "other_processes_cpu_cores": other}
    path = _fleet.write_result("micro", payload)
    print(f"\nwrote {path}")
    _fleet.noise_note(other)
    return 0


if __name__ == "__main__":
    sys.exit(main())
