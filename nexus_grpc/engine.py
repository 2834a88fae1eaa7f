"""The decision engine: runs the pipeline on a snapshot and applies a decision's side effects
(in-flight slot, reservation, round-robin advance, quality trial) and outcomes (charge, stats).

Protocol-free: the gRPC servicers and the Envoy adapters all call this one object.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from nexus_grpc.config.schema import Config
from nexus_grpc.domain.decision import BudgetView, Decision, Reject
from nexus_grpc.domain.enums import Priority, PrivacyZone, RejectCode
from nexus_grpc.domain.money import usd_to_nano
from nexus_grpc.domain.request import DecisionRequest, Outcome
from nexus_grpc.ledger.base import Ledger, Reservation, SettleResult, month_of, month_start, next_month_start
from nexus_grpc.pipeline.budget import GLOBAL, scope_view, scopes_for
from nexus_grpc.pipeline.executor import Pipeline
from nexus_grpc.pipeline.snapshot import Snapshot
from nexus_grpc.state.registry import Registry
from nexus_grpc.telemetry.decision_log import DecisionLog
from nexus_grpc.telemetry.decision_log import record as log_record
from nexus_grpc.telemetry.metrics import Metrics

MAX_REDECIDE = 3
MAX_EXPIRED_KEPT = 100_000  # decisions without a live slot (expired, ext_authz) kept for late reports


@dataclass(slots=True)
class Flight:
    """A routed request awaiting its outcome."""

    request_id: str
    backend_id: str
    model: str
    scopes: tuple[str, ...]
    estimate_nano: int
    input_tokens: int
    output_tokens: int
    stream: bool
    expires_at: float  # monotonic


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    settle: SettleResult
    budget: BudgetView


class StateWatch:
    """Wakes waiters (ext_proc Queue holds) when in-flight or backend state changes."""

    def __init__(self) -> None:
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def notify(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        waiters.sort(key=lambda w: -w[0])  # HIGH priority first
        for _, fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(
        self,
        timeout: float,  # noqa: ASYNC109 - a hold's remaining time
        priority: Priority = Priority.NORMAL,
    ) -> bool:
        """True when something changed before `timeout` seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (int(priority), fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)


class DecisionEngine:
    def __init__(
        self,
        registry: Registry,
        pipeline: Pipeline,
        ledger: Ledger,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.pipeline = pipeline
        self.ledger = ledger
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.rr: dict[str, int] = {}
        self.flights: dict[str, Flight] = {}
        self.expired: OrderedDict[str, Flight] = OrderedDict()
        self.watch = StateWatch()
        self.outcomes_estimated = 0
        self.metrics = Metrics()
        self._month = ""
        self._month_from = self._month_until = 0.0
        self._snap_month = ""
        self.decision_log: DecisionLog | None = None

    @property
    def config(self) -> Config:
        return self.registry.config

    def month(self, wall: float) -> str:
        """The UTC month of `wall`, recomputed only when a month boundary is crossed."""
        if not self._month_from <= wall < self._month_until:
            self._month = month_of(wall)
            self._month_from = month_start(wall)
            self._month_until = next_month_start(wall)
        return self._month

    def _read_totals(self, scope: str) -> tuple[int, int] | None:
        return self.ledger.totals(scope, self._snap_month)

    def snapshot(self, *, rng: random.Random | None = None) -> Snapshot:
        wall = self.wall()
        month = self._snap_month = self.month(wall)
        fleet = self.registry.fleet
        return Snapshot(fleet, self.clock(), wall, self._read_totals, month, rng or self.rng, self.rr)

    def explain(self, request: DecisionRequest) -> Decision:
        """The same pipeline without side effects: a copy of the RNG, no slot, no reservation."""
        rng = random.Random()
        rng.setstate(self.rng.getstate())
        t0 = time.perf_counter_ns()
        decision = self.pipeline.decide(request, self.snapshot(rng=rng), trace=True)
        if self.decision_log is not None:
            self._log(decision, request, time.perf_counter_ns() - t0, explain=True)
        return decision

    def _observe(self, decision: Decision, request: DecisionRequest, elapsed_ns: int) -> Decision:
        self.metrics.record(decision, elapsed_ns)
        if self.decision_log is not None:
            self._log(decision, request, elapsed_ns, explain=False)
        return decision

    def _log(self, decision: Decision, request: DecisionRequest, elapsed_ns: int, *, explain: bool) -> None:
        assert self.decision_log is not None
        self.decision_log.put(
            log_record(
                decision, self.config.version, explain=explain, elapsed_ns=elapsed_ns, labels=request.labels
            )
        )

    async def decide(self, request: DecisionRequest, *, take_slot: bool = True) -> Decision:
        """Decide and apply the Route's side effects. `take_slot=False` (ext_authz) reserves
        nothing and takes no slot; the caller charges the estimate at once."""
        # a second Decide with the same request_id replaces the first one's slot and reservation
        if take_slot and self._release_flight(request.request_id) is not None:
            await self._release_reservation(request.request_id)
        t0 = time.perf_counter_ns()
        for _ in range(MAX_REDECIDE):
            decision = self.pipeline.decide(request, self.snapshot())
            route = decision.route
            if route is None or not take_slot:
                if route is not None:
                    self._advance(decision)
                return self._observe(decision, request, time.perf_counter_ns() - t0)
            cost = decision.cost_estimate.cost_nano
            flight = Flight(
                request.request_id,
                route.backend_id,
                route.model,
                decision.scopes,
                cost,
                decision.cost_estimate.input_tokens,
                decision.cost_estimate.output_tokens,
                request.stream,
                self.clock() + self.config.queue.in_flight_ttl_seconds,
            )
            self._take(flight)
            reservation = Reservation(
                request.request_id,
                decision.scopes,
                cost,
                self._snap_month,
                self.wall() + self.config.queue.in_flight_ttl_seconds,
            )
            # a free Route (a local backend) holds no money: no ledger write on its decision path
            if cost == 0 or await self.ledger.reserve(
                reservation, self._limits(decision, route.privacy_zone)
            ):
                self._advance(decision)
                return self._observe(decision, request, time.perf_counter_ns() - t0)
            # another replica's spend made this Route cross a blocking limit: decide again
            self._release_flight(request.request_id)
        # the ledger kept refusing: never return a Route that holds no reservation
        refused = decision._replace(
            verdict=Reject(
                RejectCode.BUDGET_EXHAUSTED,
                "Request rejected: the budget ledger refused the reservation "
                f"{MAX_REDECIDE} times (concurrent spend on other replicas)",
                1000,
            ),
        )
        return self._observe(refused, request, time.perf_counter_ns() - t0)

    def _limits(self, decision: Decision, zone: PrivacyZone) -> dict[str, int] | None:
        budget = self.config.routing.budget
        if budget is None or budget.hard_limit_action == "warn" or decision.cost_estimate.cost_nano == 0:
            return None
        if budget.hard_limit_action == "block_cloud" and zone == PrivacyZone.RESTRICTED:
            return None
        limits = {GLOBAL: budget.monthly_limit_nano}
        for scope in decision.scopes[1:]:
            limits[scope] = budget.tenants.get(scope, 0)
        return {k: v for k, v in limits.items() if v > 0} or None

    def _take(self, flight: Flight) -> None:
        self.flights[flight.request_id] = flight
        found = self.registry.get(flight.backend_id)
        if found is not None:
            live = found[1]
            live.in_flight[flight.request_id] = flight.expires_at
            if live.breaker_since is not None:
                live.breaker_since = self.clock()  # this is the half-open trial
        self.watch.notify()

    def _advance(self, decision: Decision) -> None:
        route = decision.route
        if route is not None and self.config.routing.strategy == "round_robin":
            self.rr[route.model] = self.rr.get(route.model, 0) + 1

    def _release_flight(self, request_id: str) -> Flight | None:
        flight = self.flights.pop(request_id, None)
        if flight is not None:
            found = self.registry.get(flight.backend_id)
            if found is not None:
                found[1].in_flight.pop(request_id, None)
            self.watch.notify()
        return flight

    async def report_outcome(self, outcome: Outcome) -> OutcomeResult:
        flight = self._release_flight(outcome.request_id) or self.expired.pop(outcome.request_id, None)
        scopes = flight.scopes if flight is not None else scopes_for(outcome.tenant)
        charge, estimated = self._charge(outcome, flight)
        wall = self.wall()
        result = await self.ledger.settle(
            outcome.request_id, scopes, charge, self.month(wall), estimated=estimated
        )
        if result.recorded:
            if result.estimated:
                self.outcomes_estimated += 1
            self._record_stats(outcome, flight)
        tenant = scopes[1] if len(scopes) > 1 else ""
        snap = self.snapshot()
        view = scope_view(snap, tenant) if tenant else scope_view(snap, GLOBAL)
        return OutcomeResult(result, view)

    async def charge_estimate(self, decision: Decision) -> SettleResult:
        """ext_authz has no response phase: charge the Route's estimate at once under its
        request id, provisionally; a later ReportOutcome with that id settles the actual cost
        (priced with the routed model and decision's token estimates, like any late report)."""
        route = decision.route
        if route is not None:
            est = decision.cost_estimate
            self._remember(
                Flight(
                    decision.request_id,
                    route.backend_id,
                    route.model,
                    decision.scopes,
                    est.cost_nano,
                    est.input_tokens,
                    est.output_tokens,
                    False,
                    self.clock(),
                )
            )
        return await self.ledger.settle(
            decision.request_id,
            decision.scopes,
            decision.cost_estimate.cost_nano,
            self.month(self.wall()),
            estimated=True,
            provisional=True,
        )

    def _charge(self, outcome: Outcome, flight: Flight | None) -> tuple[int, bool]:
        if outcome.cost_usd is not None:
            return usd_to_nano(outcome.cost_usd), False
        if outcome.input_tokens is not None or outcome.output_tokens is not None:
            tokens_in = outcome.input_tokens
            tokens_out = outcome.output_tokens
            if flight is not None:
                tokens_in = flight.input_tokens if tokens_in is None else tokens_in
                tokens_out = flight.output_tokens if tokens_out is None else tokens_out
            model = outcome.model or (flight.model if flight is not None else "")
            found = self.registry.get(outcome.backend_id)
            if found is None and flight is not None:
                found = self.registry.get(flight.backend_id)
            if found is not None:
                price = self.config.price_for(found[0], model)
                return price.cost(tokens_in or 0, tokens_out or 0), False
            table = self.config.pricing.get(model) or self.config.default_price
            return (table.cost(tokens_in or 0, tokens_out or 0) if table is not None else 0), False
        return (flight.estimate_nano if flight is not None else 0), True

    def _record_stats(self, outcome: Outcome, flight: Flight | None) -> None:
        found = self.registry.get(outcome.backend_id)
        if found is None:
            return
        live = found[1]
        now = self.clock()
        success = outcome.succeeded
        streamed = flight.stream if flight is not None else outcome.ttft_ms is not None
        ttft = float(outcome.ttft_ms) if success and streamed and outcome.ttft_ms is not None else None
        live.stats.record(now, failure=outcome.counts_as_failure, ttft_ms=ttft)
        if success and outcome.ttft_ms is not None:
            live.observe_latency(float(outcome.ttft_ms))
        q = self.config.quality
        if live.breaker_since is not None:
            if success:
                live.breaker_since = None
                live.stats.reset()
            elif outcome.counts_as_failure:
                live.breaker_since = now
        else:
            count, failures, _ = live.stats.snapshot(now)
            if count and count >= q.min_requests and failures >= q.error_rate_threshold * count:
                live.breaker_since = now
        self.watch.notify()

    async def expire_flights(self) -> int:
        """Drop in-flight entries past their TTL and release their reservations."""
        now = self.clock()
        expired = [rid for rid, f in self.flights.items() if f.expires_at <= now]
        for rid in expired:
            flight = self._release_flight(rid)
            if flight is not None:
                self._remember(flight)
            await self._release_reservation(rid)
        return len(expired)

    def _remember(self, flight: Flight) -> None:
        """Keep what a decision was (scopes, model, estimate) for a report that comes later."""
        self.expired[flight.request_id] = flight
        if len(self.expired) > MAX_EXPIRED_KEPT:
            self.expired.popitem(last=False)

    async def _release_reservation(self, request_id: str) -> None:
        if self.ledger.reservation(request_id) is not None:  # free Routes reserve nothing
            await self.ledger.release(request_id)
