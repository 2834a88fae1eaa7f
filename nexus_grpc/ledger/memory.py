"""In-process ledger for tests, the demo and a single replica that may forget on restart."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nexus_grpc.ledger.base import (
    Pending,
    Reservation,
    SettleResult,
    Totals,
    clamp_amount,
    saturate,
)


@dataclass(slots=True)
class _Charge:
    scopes: tuple[str, ...]
    month: str
    charged_nano: int
    estimated: bool
    provisional: bool
    request_id: str
    note: str


class MemoryLedger:
    kind = "memory"

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], int] = defaultdict(int)
        self._reserved: dict[tuple[str, str], int] = defaultdict(int)
        self._reservations: dict[str, Reservation] = {}
        self._charges: dict[str, _Charge] = {}
        # request id -> decision keys labelled with it, oldest first (reserved or charged)
        self._by_request: dict[str, list[str]] = {}

    @property
    def available(self) -> bool:
        return True

    @property
    def write_error(self) -> str | None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check_writable(self) -> bool:
        return True

    def totals(self, scope: str, month: str) -> Totals:
        key = (scope, month)
        return Totals(self._spent.get(key, 0), self._reserved.get(key, 0))

    def reservation(self, key: str) -> Reservation | None:
        return self._reservations.get(key)

    def seed_spend(self, scope: str, month: str, nano: int) -> None:
        """Demo and test helper: set a scope's spend directly."""
        self._spent[(scope, month)] = saturate(nano)

    def _label(self, request_id: str, key: str) -> None:
        if request_id:
            keys = self._by_request.setdefault(request_id, [])
            if key not in keys:
                keys.append(key)

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        r = reservation._replace(amount_nano=clamp_amount(reservation.amount_nano))
        self._drop(r.key)
        if limits:
            for scope in r.scopes:
                limit = limits.get(scope, 0)
                used = self.totals(scope, r.month).used_nano
                if limit > 0 and used + r.amount_nano > limit:
                    return False
        self._reservations[r.key] = r
        for scope in dict.fromkeys(r.scopes):
            k = (scope, r.month)
            self._reserved[k] = saturate(self._reserved[k] + r.amount_nano)
        self._label(r.request_id, r.key)
        return True

    async def release(self, key: str) -> None:
        self._drop(key)

    async def expire(self, now: float) -> list[str]:
        expired = [key for key, r in self._reservations.items() if r.expires_at <= now]
        for key in expired:
            self._drop(key)
        return expired

    def _drop(self, key: str) -> None:
        old = self._reservations.pop(key, None)
        if old is None:
            return
        for scope in dict.fromkeys(old.scopes):
            k = (scope, old.month)
            self._reserved[k] = max(0, self._reserved[k] - old.amount_nano)

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
        charge_nano = clamp_amount(charge_nano)
        previous = self._charges.get(key)
        if previous is not None and not previous.provisional:
            return SettleResult(False, previous.charged_nano, previous.estimated)
        held = self._reservations.get(key)
        self._drop(key)
        scope_list = tuple(dict.fromkeys(scopes))
        if previous is not None:  # replace the provisional charge with the actual one
            for scope in previous.scopes:
                k = (scope, previous.month)
                self._spent[k] = max(0, self._spent[k] - previous.charged_nano)
            scope_list, month = previous.scopes, previous.month
            request_id = request_id or previous.request_id
            note = note or previous.note
        elif held is not None:
            request_id = request_id or held.request_id
            note = note or held.note
        for scope in scope_list:
            k = (scope, month)
            self._spent[k] = saturate(self._spent[k] + charge_nano)
        self._charges[key] = _Charge(scope_list, month, charge_nano, estimated, provisional, request_id, note)
        self._label(request_id, key)
        return SettleResult(True, charge_nano, estimated)

    def _pending(self, key: str) -> Pending | None:
        r = self._reservations.get(key)
        if r is not None:
            return Pending(key, r.scopes, r.amount_nano, r.month, r.request_id, r.note, False)
        c = self._charges.get(key)
        if c is not None and c.provisional:
            return Pending(key, c.scopes, c.charged_nano, c.month, c.request_id, c.note, True)
        return None

    async def find(self, key: str) -> Pending | SettleResult | None:
        pending = self._pending(key)
        if pending is not None:
            return pending
        c = self._charges.get(key)
        return SettleResult(False, c.charged_nano, c.estimated) if c is not None else None

    async def find_request(self, request_id: str) -> Pending | SettleResult | None:
        keys = self._by_request.get(request_id, ())
        latest: SettleResult | None = None
        for key in keys:
            pending = self._pending(key)
            if pending is not None:
                return pending
            c = self._charges.get(key)
            if c is not None:
                latest = SettleResult(False, c.charged_nano, c.estimated)
        return latest

    async def get(self, scope: str, month: str) -> Totals:
        return self.totals(scope, month)

    async def refresh(self) -> None:
        return None
