"""Decision log: JSON lines, one per decision, written by a background thread from a bounded
queue. A full queue drops the line (counted); it never blocks a decision. Never prompt text."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import IO, Any

from nexus_grpc.domain.decision import Decision, Queue, Reject, Route
from nexus_grpc.domain.money import NANO

QUEUE_SIZE = 10_000


def record(
    decision: Decision, config_version: str, *, explain: bool, elapsed_ns: int, labels: Any
) -> dict[str, Any]:
    v = decision.verdict
    entry: dict[str, Any] = {
        "ts": round(time.time(), 6),
        "request_id": decision.request_id,
        "config_version": config_version,
        "requested_model": decision.requested_model,
        "resolved_model": decision.resolved_model,
        "decision": "route" if isinstance(v, Route) else "queue" if isinstance(v, Queue) else "reject",
        "explain": explain,
        "pipeline_us": elapsed_ns // 1000,
        "stage_us": {name: ns // 1000 for name, ns in decision.stage_durations_ns},
        "exclusion_codes": sorted(
            {code.name.lower() for (_, code), _ in decision.exclusion_counts}
            or {e.code.name.lower() for e in decision.exclusions}
        ),
        "excluded_backends": decision.exclusion_count
        if decision.exclusion_counts
        else len({e.backend_id for e in decision.exclusions}),
        "cost_estimate_usd": decision.cost_estimate.cost_nano / NANO,
    }
    if isinstance(v, Route):
        entry.update(backend=v.backend_id, model=v.model, reason=v.reason, fallback_used=v.fallback_used)
    elif isinstance(v, Reject):
        entry.update(reject_code=v.code.name.lower())
    elif isinstance(v, Queue):
        entry.update(model=v.model, wait_ms=v.estimated_wait_ms)
    if decision.budget is not None:
        entry["budget_status"] = decision.budget.status.name.lower()
    if labels:
        entry["labels"] = dict(labels)
    return entry


class DecisionLog:
    def __init__(self, target: str) -> None:
        self.target = target
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._stream: IO[str] = sys.stdout if target == "-" else open(target, "a", encoding="utf-8")  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, name="nexus-decision-log", daemon=True)
        self._thread.start()

    def put(self, entry: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                break
            self._stream.write(json.dumps(entry, separators=(",", ":")) + "\n")
            if self._queue.empty():
                self._stream.flush()
        self._stream.flush()

    def close(self) -> None:
        """Flush everything queued, then stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout=10)
        if self._stream is not sys.stdout:
            self._stream.close()
