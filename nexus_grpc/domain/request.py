"""The protocol-free description of a request to route."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from nexus_grpc.domain.endpoints import EndpointSubset
from nexus_grpc.domain.enums import Priority, PrivacyZone, TierMode

_NO_LABELS: Mapping[str, str] = MappingProxyType({})


class DecisionRequest(NamedTuple):
    """A request to route, validated. A named tuple: immutable and the cheapest value to build on
    the decision path."""

    request_id: str
    model: str
    estimated_input_tokens: int = 0
    max_output_tokens: int = 0
    needs_vision: bool = False
    needs_tools: bool = False
    needs_json_mode: bool = False
    stream: bool = False
    tier_mode: TierMode = TierMode.UNSPECIFIED
    privacy: PrivacyZone = PrivacyZone.UNSPECIFIED
    min_tier: int = 0
    priority: Priority = Priority.UNSPECIFIED
    tenant: str = ""
    labels: Mapping[str, str] = _NO_LABELS
    # Set when an endpoint-picking gateway asks: only backends whose ip:port endpoint it admits
    # are candidates (the others are excluded before any other stage judges them).
    endpoint_subset: EndpointSubset | None = None

    @property
    def output_tokens(self) -> int:
        """Output estimate: max_output_tokens, else input // 2."""
        return self.max_output_tokens or self.estimated_input_tokens // 2

    @property
    def total_tokens(self) -> int:
        return self.estimated_input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Outcome:
    """A ReportOutcome, validated. It names its decision by `decision_id` (exact) or by the
    caller's `request_id` (the oldest unsettled decision of that id); at least one is set."""

    request_id: str
    backend_id: str
    model: str = ""
    success: bool | None = None
    http_status: int | None = None
    latency_ms: int | None = None
    ttft_ms: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    tenant: str = ""
    decision_id: str = ""

    @property
    def succeeded(self) -> bool:
        if self.success is not None:
            return self.success
        return self.http_status is not None and 200 <= self.http_status < 300

    @property
    def counts_as_failure(self) -> bool:
        """Quality stats: a failure, except client errors (4xx other than 408 and 429)."""
        if self.succeeded:
            return False
        status = self.http_status
        return not (status is not None and 400 <= status < 500 and status not in (408, 429))
