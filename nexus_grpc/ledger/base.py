"""The Ledger protocol. Money is integer nano-USD; months are UTC 'YYYY-MM'.

Every entry is keyed by a **decision key**: the server-issued decision id of a Route, or, for a
report about a decision this server never made, a key derived from the reported id. Keys are
never a caller's request id, so reused request ids cannot merge charges. Reservations and charges
also carry the caller's `request_id` as a label, so that a report naming only a request id finds
the oldest unsettled decision of that id — also one made before a restart or by another replica.

Reads on the decision path (`totals`, `reservation`) are synchronous and served from memory:
a ledger keeps a cache of every scope's totals with its own changes applied at once and other
replicas' changes re-read by `refresh()`. Writes are async and durable before they return; a
write that cannot be stored raises `LedgerError` (and sets `write_error` until a write succeeds
again), never a backend-specific exception.

Amounts are clamped into 0..`MAX_AMOUNT_NANO` before they are stored and totals saturate at
`MAX_TOTAL_NANO`, so no sequence of writes can overflow a 64-bit integer in any store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from nexus_grpc.domain.money import MAX_AMOUNT_NANO, MAX_TOTAL_NANO, clamp_amount, saturate
from nexus_grpc.domain.months import month_of, month_start, next_month_start, previous_month
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.errors import LedgerError

__all__ = [
    "GLOBAL_SCOPE",
    "MAX_AMOUNT_NANO",
    "MAX_TOTAL_NANO",
    "Ledger",
    "LedgerError",
    "Pending",
    "Reservation",
    "SettleResult",
    "Totals",
    "clamp_amount",
    "month_of",
    "month_start",
    "next_month_start",
    "previous_month",
    "saturate",
]

GLOBAL_SCOPE = GLOBAL


class Totals(NamedTuple):
    spent_nano: int = 0
    reserved_nano: int = 0

    @property
    def used_nano(self) -> int:
        return self.spent_nano + self.reserved_nano


class Reservation(NamedTuple):
    """The estimate of a routed, not yet reported decision, held in each of its scopes."""

    key: str  # the decision key
    scopes: tuple[str, ...]
    amount_nano: int
    month: str
    expires_at: float  # wall-clock epoch seconds
    request_id: str = ""  # the caller's label (reports by request id find the decision by it)
    note: str = ""  # opaque to the ledger: what the engine needs to price a later report


class SettleResult(NamedTuple):
    recorded: bool  # False: this key was already charged (a duplicate)
    charged_nano: int  # on a duplicate, what was charged the first time
    estimated: bool


class Pending(NamedTuple):
    """An unsettled decision the ledger holds: reserved, or charged provisionally (ext_authz)."""

    key: str
    scopes: tuple[str, ...]
    amount_nano: int  # the reservation, or the provisional charge
    month: str
    request_id: str
    note: str
    provisional: bool


class Ledger(Protocol):
    kind: str

    @property
    def available(self) -> bool:
        """False while the backing store is unreachable (budget fails open)."""
        ...

    @property
    def write_error(self) -> str | None:
        """None while writes succeed; else why the last one failed ("disk full", ...)."""
        ...

    async def start(self) -> None:
        """Open the store; a store that cannot be opened raises LedgerError naming it."""
        ...

    async def close(self) -> None: ...

    def totals(self, scope: str, month: str) -> Totals | None:
        """Cached totals (own changes included); None when unknown: never read from the store."""
        ...

    def reservation(self, key: str) -> Reservation | None: ...

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        """Hold `amount_nano` in every scope, replacing a reservation with the same key.

        With `limits` (scope -> limit in nano-USD), check-and-reserve atomically: refuse (return
        False, reserve nothing) when spent + reserved + amount would cross a scope's limit. The
        earlier reservation of the same key is dropped either way (it is being replaced).
        """
        ...

    async def release(self, key: str) -> None:
        """Drop a reservation (expired, or the decision failed)."""
        ...

    async def expire(self, now: float) -> list[str]:
        """Release every reservation whose `expires_at` <= `now`; return their keys."""
        ...

    async def settle(
        self,
        key: str,
        scopes: Sequence[str],
        charge_nano: int,
        month: str,
        *,
        estimated: bool,
        provisional: bool = False,
        request_id: str = "",
        note: str = "",
    ) -> SettleResult:
        """Charge once per key, releasing its reservation; durable before returning.

        A provisional charge (ext_authz's at-decision estimate) is replaced once by the next
        settle of the same key; every other repeat returns recorded=False and the first charge.
        A settle that replaces a provisional charge keeps that charge's scopes and month.
        """
        ...

    async def find(self, key: str) -> Pending | SettleResult | None:
        """What the ledger knows of `key`: unsettled (Pending), settled (its SettleResult), or
        nothing (None)."""
        ...

    async def find_request(self, request_id: str) -> Pending | SettleResult | None:
        """The oldest unsettled decision labelled `request_id` (Pending); else the result of the
        latest settled one (a repeated report); None when the ledger knows neither."""
        ...

    async def check_writable(self) -> bool:
        """Try a small durable write; on success `write_error` is cleared. Called while a
        write error is set, so that the ledger recovers without waiting for traffic."""
        ...

    async def get(self, scope: str, month: str) -> Totals:
        """A fresh read (BudgetService); falls back to the cache when the store is down."""
        ...

    async def refresh(self) -> None:
        """Re-read totals changed by other replicas."""
        ...
