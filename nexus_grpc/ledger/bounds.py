"""What a durable ledger stores of a reservation: amounts clamped (`clamp_amount`), scopes once
each, and an expiry no store can refuse.

An expiry comes from the clock plus a configured TTL; an absurd one (1e300, inf, NaN, a TTL of
10**12 s) would make Redis refuse PEXPIREAT/ZADD on every retry. It is clamped to at most
`MAX_HOLD_SECS` from now: a reservation never holds money longer than that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nexus_grpc.ledger.base import Reservation, clamp_amount

MAX_HOLD_SECS = 400 * 86400.0


def clamp_expiry(expires_at: float, now: float) -> float:
    """`expires_at` within 0..now + MAX_HOLD_SECS (NaN counts as too far)."""
    latest = now + MAX_HOLD_SECS
    if math.isnan(expires_at) or expires_at > latest:
        return latest
    return max(0.0, float(expires_at))


def unique(scopes: Sequence[str]) -> tuple[str, ...]:
    """Each scope once, in order: a decision is charged once per scope."""
    return tuple(dict.fromkeys(scopes))


def bounded(r: Reservation, now: float) -> Reservation:
    """The reservation as a durable ledger stores it."""
    scopes, amount, expires_at = (
        unique(r.scopes),
        clamp_amount(r.amount_nano),
        clamp_expiry(r.expires_at, now),
    )
    if (scopes, amount, expires_at) == (r.scopes, r.amount_nano, r.expires_at):
        return r
    return r._replace(scopes=scopes, amount_nano=amount, expires_at=expires_at)
