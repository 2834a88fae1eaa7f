"""Closed enums. Their numbers equal the nexus.v1 proto enum numbers, so adapters convert by int()."""

from __future__ import annotations

from enum import IntEnum


class PrivacyZone(IntEnum):
    UNSPECIFIED = 0
    RESTRICTED = 1
    OPEN = 2


class TierMode(IntEnum):
    UNSPECIFIED = 0
    STRICT = 1
    FLEXIBLE = 2


class Priority(IntEnum):
    UNSPECIFIED = 0
    NORMAL = 1
    HIGH = 2


class RejectCode(IntEnum):
    UNSPECIFIED = 0
    MODEL_NOT_FOUND = 1
    NO_ELIGIBLE_BACKEND = 2
    BUDGET_EXHAUSTED = 3
    FALLBACK_EXHAUSTED = 4


class ExclusionCode(IntEnum):
    UNSPECIFIED = 0
    PRIVACY_ZONE = 1
    BUDGET_HARD_LIMIT = 2
    COST_CAP = 3
    TIER_BELOW_MINIMUM = 4
    ERROR_RATE = 5
    UNHEALTHY = 6
    LOADING = 7
    DRAINING = 8
    SATURATED = 9
    MISSING_CAPABILITY = 10
    CONTEXT_TOO_LONG = 11
    NOT_IN_REGISTRY = 12
    INTERNAL_ERROR = 13
    OUTSIDE_ENDPOINT_SUBSET = 14  # not among the endpoints an endpoint-picking gateway allows


class BudgetStatus(IntEnum):
    UNSPECIFIED = 0  # unknown: the ledger was never readable
    NORMAL = 1
    SOFT_LIMIT = 2
    HARD_LIMIT = 3


class BackendStatus(IntEnum):
    UNSPECIFIED = 0
    HEALTHY = 1
    UNHEALTHY = 2
    LOADING = 3
    DRAINING = 4
    UNKNOWN = 5


# Exclusions that are transient for a policy-compliant backend: only these make a model queueable.
TRANSIENT_EXCLUSIONS = frozenset({ExclusionCode.LOADING, ExclusionCode.SATURATED})
