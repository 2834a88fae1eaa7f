"""Micro-benchmarks behind the hot-path suggestions in benches/README.md (this machine's costs of
the building blocks a Decide uses). Each line: best of 5 repeats, nanoseconds per operation.

    .venv/bin/python benches/micro.py               # ~20 s; writes benches/results/micro.json
"""

from __future__ import annotations

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


def main() -> int:
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
    print(_fleet.table(["operation", "ns"], [[k, f"{v:.0f}"] for k, v in rows.items()]))
    path = _fleet.write_result("micro", {"bench": "micro", "machine": _fleet.machine(), "ns": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
