"""The redis ledger's local view: the store's last values plus own changes not yet in it."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, replace

from nexus_grpc.ledger.base import Reservation, SettleResult, Totals
from nexus_grpc.ledger.journal import JournalEntry


@dataclass(frozen=True, slots=True)
class KnownCharge:
    """A charge the store confirmed (kept for idempotent answers during an outage)."""

    scopes: tuple[str, ...]
    month: str
    charged_nano: int
    estimated: bool
    provisional: bool

    @staticmethod
    def parse(scopes_json: str, month: str, charged: str, estimated: str, provisional: str) -> KnownCharge:
        scopes = json.loads(scopes_json)
        return KnownCharge(
            tuple(scopes) if isinstance(scopes, list) else (),
            month,
            int(charged),
            estimated == "1",
            provisional == "1",
        )


_Key = tuple[str, str]  # (scope, month)
_KNOWN_CHARGES = 100_000


def _shift(deltas: dict[_Key, int], scopes: tuple[str, ...], month: str, amount: int) -> None:
    for scope in scopes:
        value = deltas.get((scope, month), 0) + amount
        if value:
            deltas[(scope, month)] = value
        else:
            deltas.pop((scope, month), None)


class LocalState:
    """The redis ledger's local view: the last values read from the store (`base`, with the
    store's version so an older snapshot never overwrites newer values) plus own changes the
    store has not seen yet: reservations held locally, releases of stored reservations, and
    journaled settles."""

    def __init__(self) -> None:
        self.base: dict[_Key, Totals] = {}
        self._ver: dict[_Key, int] = {}
        self._months: set[str] = set()
        self._dspent: dict[_Key, int] = {}
        self._dreserved: dict[_Key, int] = {}
        self.stored: dict[str, Reservation] = {}  # own reservations held in the store
        self.local: dict[str, Reservation] = {}  # held locally while the store was down
        self.pending_release: dict[str, Reservation] = {}  # in the store, released while down
        self.journaled: dict[str, JournalEntry] = {}
        self._charges: OrderedDict[str, KnownCharge] = OrderedDict()

    # -- views
    def view(self, scope: str, month: str) -> Totals | None:
        key = (scope, month)
        base = self.base.get(key)
        if base is None and month not in self._months:
            return None
        return self._own(key, base or Totals())

    def view_unknown(self, scope: str, month: str) -> Totals:
        return self._own((scope, month), Totals())

    def _own(self, key: _Key, base: Totals) -> Totals:
        spent = base.spent_nano + self._dspent.get(key, 0)
        return Totals(max(0, spent), max(0, base.reserved_nano + self._dreserved.get(key, 0)))

    def reservation(self, request_id: str) -> Reservation | None:
        return self.stored.get(request_id) or self.local.get(request_id)

    def loaded(self, month: str) -> bool:
        return month in self._months

    def months(self) -> set[str]:
        return self._months | {month for _, month in self.base}

    def synced(self) -> bool:
        return not (self.local or self.pending_release or self.journaled)

    # -- values read from the store
    def store_totals(self, scope: str, month: str, totals: Totals, ver: int) -> None:
        key = (scope, month)
        if ver >= self._ver.get(key, -1):
            self.base[key] = totals
            self._ver[key] = ver

    def store_month(self, month: str, spent: dict[str, str], reserved: dict[str, str], ver: int) -> None:
        scopes = set(spent) | set(reserved) | {scope for scope, m in self.base if m == month}
        for scope in scopes:
            totals = Totals(int(spent.get(scope, 0)), int(reserved.get(scope, 0)))
            self.store_totals(scope, month, totals, ver)
        self._months.add(month)

    def store_restarted(self) -> None:
        self._ver.clear()  # the store may have lost data and restarted its version counter

    def remember(self, request_id: str, charge: KnownCharge) -> None:
        self._charges[request_id] = charge
        self._charges.move_to_end(request_id)
        while len(self._charges) > _KNOWN_CHARGES:
            self._charges.popitem(last=False)

    # -- reservations
    def forget(self, request_id: str) -> None:
        """The store now holds the truth about this id's reservation: drop local traces."""
        self.stored.pop(request_id, None)
        for held, sign in ((self.local, -1), (self.pending_release, 1)):
            r = held.pop(request_id, None)
            if r is not None:
                _shift(self._dreserved, r.scopes, r.month, sign * r.amount_nano)

    def stored_ok(self, r: Reservation) -> None:
        self.stored[r.key] = r

    def hold_locally(self, r: Reservation) -> None:
        self.release_locally(r.key)
        self.local[r.key] = r
        _shift(self._dreserved, r.scopes, r.month, r.amount_nano)

    def release_locally(self, request_id: str) -> bool:
        r = self.local.pop(request_id, None)
        if r is None:
            r = self.stored.pop(request_id, None)
            if r is None:
                return False
            self.pending_release[request_id] = r
        _shift(self._dreserved, r.scopes, r.month, -r.amount_nano)
        return True

    def expire_locally(self, at: float, store_up: bool) -> list[str]:
        released = [rid for rid, r in self.local.items() if r.expires_at <= at]
        for rid in released:
            self.release_locally(rid)
        for rid in [rid for rid, r in self.stored.items() if r.expires_at <= at]:
            if store_up:
                del self.stored[rid]  # already purged from the store by another replica
            elif self.release_locally(rid):
                released.append(rid)
        return released

    def release_done(self, request_id: str, r: Reservation) -> None:
        if self.pending_release.get(request_id) is r:
            del self.pending_release[request_id]
            _shift(self._dreserved, r.scopes, r.month, r.amount_nano)

    def pushed(self, request_id: str, r: Reservation) -> None:
        if self.local.get(request_id) is r:
            del self.local[request_id]
            _shift(self._dreserved, r.scopes, r.month, -r.amount_nano)
            self.stored[request_id] = r

    # -- settles
    def plan_local_settle(self, e: JournalEntry) -> tuple[SettleResult | None, JournalEntry]:
        """The entry to journal for a settle made while the store is down, or the duplicate's answer."""
        prev = self.journaled.get(e.request_id)
        if prev is not None:
            if not prev.provisional:
                return SettleResult(False, prev.charge_nano, prev.estimated), prev
            return None, replace(e, scopes=prev.scopes, month=prev.month, replaces_nano=prev.replaces_nano)
        known = self._charges.get(e.request_id)
        if known is None:
            return None, e
        if not known.provisional:
            return SettleResult(False, known.charged_nano, known.estimated), e
        return None, replace(e, scopes=known.scopes, month=known.month, replaces_nano=known.charged_nano)

    def journal(self, entry: JournalEntry) -> None:
        prev = self.journaled.get(entry.request_id)
        if prev is not None:
            self._unjournal(prev)
        self.journaled[entry.request_id] = entry
        _shift(self._dspent, entry.scopes, entry.month, entry.charge_nano - entry.replaces_nano)
        self.release_locally(entry.request_id)

    def replayed(self, entry: JournalEntry) -> None:
        if self.journaled.get(entry.request_id) is entry:
            self._unjournal(entry)

    def _unjournal(self, entry: JournalEntry) -> None:
        del self.journaled[entry.request_id]
        _shift(self._dspent, entry.scopes, entry.month, entry.replaces_nano - entry.charge_nano)
