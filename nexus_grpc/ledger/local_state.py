"""The redis ledger's local view: the store's last values plus own changes not yet in it."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, replace
from itertools import chain

from nexus_grpc.ledger.base import Pending, Reservation, SettleResult, Totals, saturate
from nexus_grpc.ledger.journal import JournalEntry


def parse_scopes(scopes_json: str | None) -> tuple[str, ...]:
    """Scopes as the store keeps them, a JSON list (Lua's cjson writes an empty one as {})."""
    scopes = json.loads(scopes_json) if scopes_json else []
    return tuple(str(s) for s in scopes) if isinstance(scopes, list) else ()


@dataclass(frozen=True, slots=True)
class KnownCharge:
    """A charge the store confirmed (kept for idempotent answers during an outage)."""

    scopes: tuple[str, ...]
    month: str
    charged_nano: int
    estimated: bool
    provisional: bool
    request_id: str = ""
    note: str = ""

    @staticmethod
    def parse(
        scopes_json: str,
        month: str,
        charged: str,
        estimated: str,
        provisional: str,
        request_id: str | None = "",
        note: str | None = "",
    ) -> KnownCharge:
        return KnownCharge(
            parse_scopes(scopes_json),
            month,
            int(charged),
            estimated == "1",
            provisional == "1",
            request_id or "",
            note or "",
        )

    def answer(self, key: str) -> Pending | SettleResult:
        if self.provisional:
            return Pending(key, self.scopes, self.charged_nano, self.month, self.request_id, self.note, True)
        return SettleResult(False, self.charged_nano, self.estimated)


_Key = tuple[str, str]  # (scope, month)
_KNOWN_CHARGES = 100_000


def _shift(deltas: dict[_Key, int], scopes: tuple[str, ...], month: str, amount: int) -> None:
    for scope in scopes:
        value = deltas.get((scope, month), 0) + amount
        if value:
            deltas[(scope, month)] = value
        else:
            deltas.pop((scope, month), None)


def _pending(r: Reservation) -> Pending:
    return Pending(r.key, r.scopes, r.amount_nano, r.month, r.request_id, r.note, False)


def _journaled(e: JournalEntry) -> Pending | SettleResult:
    if e.provisional:
        return Pending(e.key, e.scopes, e.charge_nano, e.month, e.request_id, e.note, True)
    return SettleResult(False, e.charge_nano, e.estimated)


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
        return Totals(saturate(spent), saturate(base.reserved_nano + self._dreserved.get(key, 0)))

    def reservation(self, key: str) -> Reservation | None:
        return self.stored.get(key) or self.local.get(key)

    def loaded(self, month: str) -> bool:
        return month in self._months

    def months(self) -> set[str]:
        return self._months | {month for _, month in self.base}

    def synced(self) -> bool:
        return not (self.local or self.pending_release or self.journaled)

    def changed_here(self, key: str) -> bool:
        """Whether this key has own changes the store has not seen yet."""
        return key in self.journaled or key in self.local or key in self.pending_release

    def find(self, key: str) -> Pending | SettleResult | None:
        """What this replica knows of `key`: own reservations and journaled settles first, then
        charges the store confirmed."""
        r = self.reservation(key)
        if r is not None:
            return _pending(r)
        e = self.journaled.get(key)
        if e is not None:
            return _journaled(e)
        c = self._charges.get(key)
        return c.answer(key) if c is not None else None

    def find_request(self, request_id: str, *, own_only: bool = False) -> Pending | SettleResult | None:
        """`find_request` from what this replica knows: its oldest unsettled decision labelled
        `request_id` (reservations in the order they were made, then provisional charges), else
        its latest settle of one. `own_only`: only changes the store has not seen yet (local
        reservations, journaled settles). A scan: for outages and the catch-up after one."""
        held = self.local.values() if own_only else chain(self.stored.values(), self.local.values())
        for r in held:
            if r.request_id == request_id:
                return _pending(r)
        latest: SettleResult | None = None
        for e in self.journaled.values():
            if e.request_id == request_id:
                if e.provisional:
                    return _journaled(e)
                latest = SettleResult(False, e.charge_nano, e.estimated)
        if own_only:
            return latest
        known: SettleResult | None = None
        for key, c in self._charges.items():
            if c.request_id == request_id and key not in self.journaled:
                answer = c.answer(key)
                if isinstance(answer, Pending):
                    return answer
                known = answer
        return latest or known

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

    def remember(self, key: str, charge: KnownCharge) -> None:
        self._charges[key] = charge
        self._charges.move_to_end(key)
        while len(self._charges) > _KNOWN_CHARGES:
            self._charges.popitem(last=False)

    # -- reservations
    def forget(self, key: str) -> None:
        """The store now holds the truth about this key's reservation: drop local traces."""
        self.stored.pop(key, None)
        for held, sign in ((self.local, -1), (self.pending_release, 1)):
            r = held.pop(key, None)
            if r is not None:
                _shift(self._dreserved, r.scopes, r.month, sign * r.amount_nano)

    def stored_ok(self, r: Reservation) -> None:
        self.stored[r.key] = r

    def hold_locally(self, r: Reservation) -> None:
        self.release_locally(r.key)
        self.local[r.key] = r
        _shift(self._dreserved, r.scopes, r.month, r.amount_nano)

    def release_locally(self, key: str) -> bool:
        r = self.local.pop(key, None)
        if r is None:
            r = self.stored.pop(key, None)
            if r is None:
                return False
            self.pending_release[key] = r
        _shift(self._dreserved, r.scopes, r.month, -r.amount_nano)
        return True

    def expire_locally(self, at: float, store_up: bool) -> list[str]:
        released = [key for key, r in self.local.items() if r.expires_at <= at]
        for key in released:
            self.release_locally(key)
        for key in [key for key, r in self.stored.items() if r.expires_at <= at]:
            if store_up:
                del self.stored[key]  # already purged from the store by another replica
            elif self.release_locally(key):
                released.append(key)
        return released

    def release_done(self, key: str, r: Reservation) -> None:
        if self.pending_release.get(key) is r:
            del self.pending_release[key]
            _shift(self._dreserved, r.scopes, r.month, r.amount_nano)

    def pushed(self, key: str, r: Reservation) -> None:
        if self.local.get(key) is r:
            del self.local[key]
            _shift(self._dreserved, r.scopes, r.month, -r.amount_nano)
            self.stored[key] = r

    def drop_local(self, key: str, r: Reservation) -> None:
        """A local reservation the store refused when it was pushed: no longer held anywhere."""
        if self.local.get(key) is r:
            self.release_locally(key)

    # -- settles
    def plan_local_settle(self, e: JournalEntry) -> tuple[SettleResult | None, JournalEntry]:
        """The entry to journal for a settle made while the store is down, or the duplicate's
        answer. Like the store, it keeps the request id and note of what it settles when the
        call passes none."""
        prev = self.journaled.get(e.key)
        if prev is not None:
            if not prev.provisional:
                return SettleResult(False, prev.charge_nano, prev.estimated), prev
            return None, replace(
                e,
                scopes=prev.scopes,
                month=prev.month,
                replaces_nano=prev.replaces_nano,
                request_id=e.request_id or prev.request_id,
                note=e.note or prev.note,
            )
        known = self._charges.get(e.key)
        if known is not None:
            if not known.provisional:
                return SettleResult(False, known.charged_nano, known.estimated), e
            return None, replace(
                e,
                scopes=known.scopes,
                month=known.month,
                replaces_nano=known.charged_nano,
                request_id=e.request_id or known.request_id,
                note=e.note or known.note,
            )
        held = self.reservation(e.key)
        if held is not None:
            return None, replace(e, request_id=e.request_id or held.request_id, note=e.note or held.note)
        return None, e

    def journal(self, entry: JournalEntry) -> None:
        prev = self.journaled.get(entry.key)
        if prev is not None:
            self._unjournal(prev)
        self.journaled[entry.key] = entry
        _shift(self._dspent, entry.scopes, entry.month, entry.charge_nano - entry.replaces_nano)
        self.release_locally(entry.key)

    def replayed(self, entry: JournalEntry) -> None:
        if self.journaled.get(entry.key) is entry:
            self._unjournal(entry)

    def _unjournal(self, entry: JournalEntry) -> None:
        del self.journaled[entry.key]
        _shift(self._dspent, entry.scopes, entry.month, entry.replaces_nano - entry.charge_nano)
