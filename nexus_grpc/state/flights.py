"""Decisions awaiting their outcome: server-issued decision ids, in-flight slots, and the index
that lets a report naming only a request id find the oldest unsettled decision of that id.

Every Route is its own decision, whatever request id the caller sent: concurrent or repeated
Decides that share a request id each hold their own slot and their own reservation.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import re
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import NamedTuple

from nexus_grpc.domain.live import LiveBackend

# <16 hex: process prefix>-<hex counter>. Unique across replicas and restarts (a random 64-bit
# prefix per process), cheap to make (no uuid per request).
DECISION_ID = re.compile(r"[0-9a-f]{16}-[0-9a-f]{1,16}")
SLOTLESS_KEPT = 100_000  # decisions without a slot (expired, ext_authz) remembered for a late report
SETTLED_KEPT = 100_000  # request ids whose latest decision was settled here


class DecisionIds:
    """Issues decision ids: one random prefix per process, then a counter."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else secrets.token_hex(8)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self._counter):x}"


def is_decision_id(value: str) -> bool:
    return DECISION_ID.fullmatch(value) is not None


class Basis(NamedTuple):
    """What a report is priced and counted by: the decision as the engine made it."""

    backend_id: str  # the routed backend
    model: str  # the routed (upstream) model
    alternates: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    estimate_nano: int

    def note(self) -> str:
        """The basis as the ledger keeps it (ids and model names hold no whitespace)."""
        return "\t".join(
            (self.backend_id, self.model, str(self.input_tokens), str(self.output_tokens), *self.alternates)
        )

    @staticmethod
    def from_note(note: str, estimate_nano: int) -> Basis | None:
        parts = note.split("\t")
        if len(parts) < 4 or not parts[0] or not parts[2].isdigit() or not parts[3].isdigit():
            return None
        return Basis(parts[0], parts[1], tuple(parts[4:]), int(parts[2]), int(parts[3]), estimate_nano)

    def prices_at(self, backend_id: str) -> str:
        """The backend a report naming `backend_id` is priced at: that one when the gateway
        retried on one of the decision's alternates, else the routed backend."""
        return backend_id if backend_id in self.alternates else self.backend_id

    def served_by(self, backend_id: str) -> bool:
        return backend_id == self.backend_id or backend_id in self.alternates


@dataclass(slots=True)
class Flight:
    """A Route that awaits its outcome."""

    decision_id: str
    request_id: str
    basis: Basis
    scopes: tuple[str, ...]
    stream: bool
    expires_at: float  # monotonic: the slot and the reservation are released then
    live: LiveBackend | None  # the routed backend's live state, while the flight holds a slot
    reserved: bool = False  # holds a ledger reservation


class FlightBook:
    """Open flights (holding an in-flight slot), slotless ones (no slot: expired, or ext_authz
    decisions that never take one) kept for their report, and the request-id index over both."""

    def __init__(self, *, slotless_kept: int = SLOTLESS_KEPT, settled_kept: int = SETTLED_KEPT) -> None:
        self.open: dict[str, Flight] = {}
        self.slotless: OrderedDict[str, Flight] = OrderedDict()
        self._by_request: dict[str, deque[str]] = {}
        self._settled: OrderedDict[str, str] = OrderedDict()
        self._expiry: list[tuple[float, str]] = []
        self._slotless_kept = slotless_kept
        self._settled_kept = settled_kept

    def __len__(self) -> int:
        return len(self.open) + len(self.slotless)

    def get(self, decision_id: str) -> Flight | None:
        return self.open.get(decision_id) or self.slotless.get(decision_id)

    def take(self, flight: Flight) -> None:
        """A Route takes its slot on `flight.live` until it is reported or expires."""
        self.open[flight.decision_id] = flight
        if flight.live is not None:
            flight.live.in_flight[flight.decision_id] = flight.expires_at
        heapq.heappush(self._expiry, (flight.expires_at, flight.decision_id))
        self._index(flight)

    def keep(self, flight: Flight) -> None:
        """A decision without a slot (ext_authz), remembered for its report."""
        flight.live = None
        self._remember_slotless(flight)
        self._index(flight)

    def _index(self, flight: Flight) -> None:
        if flight.request_id:
            self._by_request.setdefault(flight.request_id, deque()).append(flight.decision_id)

    def _unindex(self, flight: Flight) -> None:
        ids = self._by_request.get(flight.request_id)
        if ids is None:
            return
        with contextlib.suppress(ValueError):
            ids.remove(flight.decision_id)
        if not ids:
            del self._by_request[flight.request_id]

    def _remember_slotless(self, flight: Flight) -> None:
        self.slotless[flight.decision_id] = flight
        while len(self.slotless) > self._slotless_kept:
            _, evicted = self.slotless.popitem(last=False)
            self._unindex(evicted)

    def claim_oldest(self, request_id: str) -> Flight | None:
        """The oldest unsettled decision of `request_id`, taken out of the index so that a
        concurrent report of the same id finds the next one (`unclaim` puts it back)."""
        ids = self._by_request.get(request_id)
        while ids:
            flight = self.get(ids.popleft())
            if not ids:
                del self._by_request[request_id]
            if flight is not None:
                return flight
            ids = self._by_request.get(request_id)
        return None

    def claim(self, flight: Flight) -> None:
        self._unindex(flight)

    def unclaim(self, flight: Flight) -> None:
        """A claimed flight whose settle failed: it is the oldest again."""
        if self.get(flight.decision_id) is flight and flight.request_id:
            ids = self._by_request.setdefault(flight.request_id, deque())
            if flight.decision_id not in ids:
                ids.appendleft(flight.decision_id)

    def free_slot(self, flight: Flight) -> bool:
        """Give the slot back (the request ended or expired); the flight stays until settled."""
        if self.open.pop(flight.decision_id, None) is None:
            return False
        if flight.live is not None:
            flight.live.in_flight.pop(flight.decision_id, None)
            flight.live = None
        self._remember_slotless(flight)
        return True

    def settled(self, flight: Flight) -> None:
        self.free_slot(flight)
        self.slotless.pop(flight.decision_id, None)
        self._unindex(flight)
        if flight.request_id:
            self._settled[flight.request_id] = flight.decision_id
            self._settled.move_to_end(flight.request_id)
            while len(self._settled) > self._settled_kept:
                self._settled.popitem(last=False)

    def drop(self, flight: Flight) -> None:
        """Forget a decision that never reached its caller (the reservation failed)."""
        self.free_slot(flight)
        self.slotless.pop(flight.decision_id, None)
        self._unindex(flight)

    def last_settled(self, request_id: str) -> str | None:
        return self._settled.get(request_id)

    def has_due(self, now: float) -> bool:
        return bool(self._expiry) and self._expiry[0][0] <= now

    def due(self, now: float) -> list[Flight]:
        """Flights whose TTL ran out, their slots freed (they stay for a late report)."""
        expired: list[Flight] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, decision_id = heapq.heappop(heap)
            flight = self.open.get(decision_id)
            if flight is not None and flight.expires_at <= now:
                self.free_slot(flight)
                expired.append(flight)
        return expired
