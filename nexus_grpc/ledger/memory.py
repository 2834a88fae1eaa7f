"""In-process ledger for tests, the demo and a single replica that may forget on restart."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nexus_grpc.ledger.base import Reservation, SettleResult, Totals


@dataclass(slots=True)
class _Charge:
    scopes: tuple[str, ...]
    month: str
    charged_nano: int
    estimated: bool
    provisional: bool


class MemoryLedger:
    kind = "memory"

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], int] = defaultdict(int)
        self._reserved: dict[tuple[str, str], int] = defaultdict(int)
        self._reservations: dict[str, Reservation] = {}
        self._charges: dict[str, _Charge] = {}

    @property
    def available(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def totals(self, scope: str, month: str) -> Totals:
        key = (scope, month)
        return Totals(self._spent.get(key, 0), self._reserved.get(key, 0))

    def reservation(self, request_id: str) -> Reservation | None:
        return self._reservations.get(request_id)

    def seed_spend(self, scope: str, month: str, nano: int) -> None:
        """Demo and test helper: set a scope's spend directly."""
        self._spent[(scope, month)] = nano

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        self._drop(reservation.request_id)
        if limits:
            for scope in reservation.scopes:
                limit = limits.get(scope, 0)
                used = self.totals(scope, reservation.month).used_nano
                if limit > 0 and used + reservation.amount_nano > limit:
                    return False
        self._reservations[reservation.request_id] = reservation
        for scope in reservation.scopes:
            self._reserved[(scope, reservation.month)] += reservation.amount_nano
        return True

    async def release(self, request_id: str) -> None:
        self._drop(request_id)

    async def expire(self, now: float) -> list[str]:
        expired = [rid for rid, r in self._reservations.items() if r.expires_at <= now]
        for rid in expired:
            self._drop(rid)
        return expired

    def _drop(self, request_id: str) -> None:
        old = self._reservations.pop(request_id, None)
        if old is None:
            return
        for scope in old.scopes:
            key = (scope, old.month)
            self._reserved[key] = max(0, self._reserved[key] - old.amount_nano)

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
        previous = self._charges.get(request_id)
        if previous is not None and not previous.provisional:
            return SettleResult(False, previous.charged_nano, previous.estimated)
        self._drop(request_id)
        if previous is not None:  # replace the provisional charge with the actual one
            for scope in previous.scopes:
                self._spent[(scope, previous.month)] -= previous.charged_nano
            scopes, month = previous.scopes, previous.month
        for scope in scopes:
            self._spent[(scope, month)] += charge_nano
        self._charges[request_id] = _Charge(tuple(scopes), month, charge_nano, estimated, provisional)
        return SettleResult(True, charge_nano, estimated)

    async def get(self, scope: str, month: str) -> Totals:
        return self.totals(scope, month)

    async def refresh(self) -> None:
        return None
