"""The Ledger protocol (SPEC §5). Money is integer nano-USD; months are UTC 'YYYY-MM'.

Reads on the decision path (`totals`, `reservation`) are synchronous and served from memory:
a ledger keeps a cache of every scope's totals with its own changes applied at once and other
replicas' changes re-read by `refresh()`. Writes are async and durable before they return.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

GLOBAL_SCOPE = "global"


def month_of(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m")


def month_start(epoch_seconds: float) -> float:
    d = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()


def next_month_start(epoch_seconds: float) -> float:
    d = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def previous_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year - 1}-12" if mon == 1 else f"{year}-{mon - 1:02d}"


class Totals(NamedTuple):
    spent_nano: int = 0
    reserved_nano: int = 0

    @property
    def used_nano(self) -> int:
        return self.spent_nano + self.reserved_nano


class Reservation(NamedTuple):
    """The estimate of a routed, not yet reported request, held in each of its scopes."""

    request_id: str
    scopes: tuple[str, ...]
    amount_nano: int
    month: str
    expires_at: float  # wall-clock epoch seconds


class SettleResult(NamedTuple):
    recorded: bool  # False: this request_id was already charged (a duplicate)
    charged_nano: int  # on a duplicate, what was charged the first time
    estimated: bool


class LedgerUnavailable(Exception):
    """The backing store cannot be reached."""


class Ledger(Protocol):
    kind: str

    @property
    def available(self) -> bool:
        """False while the backing store is unreachable (budget fails open)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def totals(self, scope: str, month: str) -> Totals | None:
        """Cached totals (own changes included); None when unknown: never read from the store."""
        ...

    def reservation(self, request_id: str) -> Reservation | None: ...

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        """Hold `amount_nano` in every scope, replacing a reservation with the same request_id.

        With `limits` (scope -> limit in nano-USD), check-and-reserve atomically: refuse (return
        False, reserve nothing) when spent + reserved + amount would cross a scope's limit. The
        earlier reservation of the same request_id is dropped either way (it is being replaced).
        """
        ...

    async def release(self, request_id: str) -> None:
        """Drop a reservation (expired, or replaced by a re-decision)."""
        ...

    async def expire(self, now: float) -> list[str]:
        """Release every reservation whose `expires_at` <= `now`; return their request_ids."""
        ...

    async def settle(
        self,
        request_id: str,
        scopes: Sequence[str],
        charge_nano: int,
        month: str,
        *,
        estimated: bool,
        provisional: bool = False,
    ) -> SettleResult:
        """Charge once per request_id, releasing its reservation; durable before returning.

        A provisional charge (ext_authz's at-decision estimate) is replaced once by the next
        settle of the same id; every other repeat returns recorded=False and the first charge.
        """
        ...

    async def get(self, scope: str, month: str) -> Totals:
        """A fresh read (BudgetService); falls back to the cache when the store is down."""
        ...

    async def refresh(self) -> None:
        """Re-read totals changed by other replicas."""
        ...


def now() -> float:
    return time.time()
