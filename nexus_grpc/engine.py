"""The decision engine: runs the pipeline on a snapshot and applies a decision's side effects
(decision id, in-flight slot, reservation, round-robin advance, quality trial) and outcomes
(charge, statistics).

Protocol-free: the gRPC servicers and the Envoy adapters all call this one object.

The accounting key is always the engine's own decision, never a caller's string: every Route
gets a server-issued `decision_id`; a report settles exactly that decision (by `decision_id`) or
the oldest unsettled decision of its `request_id`. Reports are priced and counted by what the
engine decided (see `charges.py`); only reports of decisions this process made feed statistics.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from nexus_grpc.charges import charge_for
from nexus_grpc.config.schema import Config
from nexus_grpc.domain.decision import BudgetView, Decision, Reject
from nexus_grpc.domain.enums import PrivacyZone, RejectCode
from nexus_grpc.domain.months import MonthClock
from nexus_grpc.domain.request import DecisionRequest, Outcome
from nexus_grpc.domain.scopes import GLOBAL, scopes_for
from nexus_grpc.ledger.base import Ledger, LedgerError, Pending, Reservation, SettleResult
from nexus_grpc.pipeline.budget_views import scope_view
from nexus_grpc.pipeline.executor import Pipeline
from nexus_grpc.pipeline.snapshot import Snapshot
from nexus_grpc.state.flights import Basis, DecisionIds, Flight, FlightBook
from nexus_grpc.state.quality import record_outcome, trial_started
from nexus_grpc.state.registry import Registry
from nexus_grpc.state.watch import StateWatch
from nexus_grpc.telemetry.decision_log import DecisionLog
from nexus_grpc.telemetry.decision_log import record as log_record
from nexus_grpc.telemetry.metrics import Metrics

__all__ = ["DecisionEngine", "OutcomeResult"]

log = logging.getLogger("nexus_grpc")

MAX_REDECIDE = 3
RETRY_KEPT = 10_000  # outcomes kept for a retry while the ledger cannot store them
UNKNOWN_PREFIX = "r:"  # ledger key of a report for a request id no decision is known for


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    settle: SettleResult
    budget: BudgetView
    decision_id: str = ""  # the decision the report settled; "" when no decision was known


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
        ids: Callable[[], str] | None = None,
    ) -> None:
        self.registry = registry
        self.pipeline = pipeline
        self.ledger = ledger
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.ids = ids or DecisionIds()
        self.rr: dict[str, int] = {}
        self.flights = FlightBook()
        self.watch = StateWatch()
        self.metrics = Metrics()
        self.month = MonthClock()
        self.decision_log: DecisionLog | None = None
        self.outcomes_estimated = 0
        self.outcomes_unknown = 0  # reports for decisions this process did not make
        self.outcomes_clamped = 0  # charges cut to [limits] max_charge_usd
        self._background: set[asyncio.Task[None]] = set()
        # outcomes accepted from Envoy whose charge the ledger could not store yet
        self._retry: deque[Outcome] = deque(maxlen=RETRY_KEPT)

    @property
    def config(self) -> Config:
        return self.registry.config

    def snapshot(self, *, rng: random.Random | None = None) -> Snapshot:
        wall = self.wall()
        month = self.month(wall)
        return Snapshot(
            self.registry.fleet, self.clock(), wall, self.ledger.totals, month, rng or self.rng, self.rr
        )

    # -- decisions -----------------------------------------------------------------------------

    def explain(self, request: DecisionRequest) -> Decision:
        """The same pipeline without side effects: a copy of the RNG, no slot, no reservation."""
        rng = random.Random()
        rng.setstate(self.rng.getstate())
        t0 = time.perf_counter_ns()
        decision = self.pipeline.decide(request, self.snapshot(rng=rng), trace=True)
        if self.decision_log is not None:
            self._log(decision, request, time.perf_counter_ns() - t0, explain=True)
        return decision

    async def decide(self, request: DecisionRequest, *, take_slot: bool = True) -> Decision:
        """Decide and apply the Route's side effects. `take_slot=False` (ext_authz) takes no slot
        and reserves nothing; the caller charges the estimate at once (`charge_estimate`).
        A reservation the ledger cannot store raises LedgerError, holding nothing."""
        t0 = time.perf_counter_ns()
        self._expire_due()
        for _ in range(MAX_REDECIDE):
            snap = self.snapshot()
            decision = self.pipeline.decide(request, snap, decision_id=self.ids())
            route = decision.route
            if route is None:
                return self._observe(decision, request, time.perf_counter_ns() - t0)
            flight = self._flight(decision, request, snap)
            if not take_slot:
                self.flights.keep(flight)
                self._advance(decision)
                return self._observe(decision, request, time.perf_counter_ns() - t0)
            found = self.registry.get(route.backend_id)
            flight.live = found[1] if found is not None else None
            self.flights.take(flight)
            if flight.live is not None:
                trial_started(flight.live, snap.monotonic)
            self.watch.notify()
            cost = decision.cost_estimate.cost_nano
            # a free Route (a local backend) holds no money: no ledger write on its decision path
            if cost == 0 or await self._reserve(flight, decision, snap):
                self._advance(decision)
                return self._observe(decision, request, time.perf_counter_ns() - t0)
            # another replica's spend made this Route cross a blocking limit: decide again
            self._forget(flight)
        # the ledger kept refusing: never return a Route that holds no reservation
        refused = decision._replace(
            decision_id="",
            verdict=Reject(
                RejectCode.BUDGET_EXHAUSTED,
                "Request rejected: the budget ledger refused the reservation "
                f"{MAX_REDECIDE} times (concurrent spend on other replicas)",
                1000,
            ),
        )
        return self._observe(refused, request, time.perf_counter_ns() - t0)

    def _flight(self, decision: Decision, request: DecisionRequest, snap: Snapshot) -> Flight:
        route = decision.route
        assert route is not None
        est = decision.cost_estimate
        basis = Basis(
            route.backend_id,
            route.model,
            route.alternates,
            est.input_tokens,
            est.output_tokens,
            est.cost_nano,
        )
        ttl = self.config.queue.in_flight_ttl_seconds
        return Flight(
            decision.decision_id,
            request.request_id,
            basis,
            decision.scopes,
            request.stream,
            snap.monotonic + ttl,
            None,
        )

    async def _reserve(self, flight: Flight, decision: Decision, snap: Snapshot) -> bool:
        route = decision.route
        assert route is not None
        reservation = Reservation(
            flight.decision_id,
            flight.scopes,
            decision.cost_estimate.cost_nano,
            snap.month,
            snap.wall + self.config.queue.in_flight_ttl_seconds,
            request_id=flight.request_id,
            note=flight.basis.note(),
        )
        try:
            ok = await self.ledger.reserve(reservation, self._limits(decision, route.privacy_zone))
        except BaseException:
            # the ledger could not store it, or the caller went away while it did: hold nothing
            self._forget(flight)
            self._release_later(flight.decision_id)
            raise
        flight.reserved = ok
        return ok

    def _forget(self, flight: Flight) -> None:
        self.flights.drop(flight)
        self.watch.notify()

    def _release_later(self, key: str) -> None:
        """Release a reservation that may have been stored, off the caller's path."""

        async def release() -> None:
            try:
                await self.ledger.release(key)
            except LedgerError as exc:
                log.warning("releasing reservation %s failed (it expires on its own): %s", key, exc)

        task = asyncio.ensure_future(release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _limits(self, decision: Decision, zone: PrivacyZone) -> dict[str, int] | None:
        budget = self.config.routing.budget
        if budget is None or budget.hard_limit_action == "warn" or decision.cost_estimate.cost_nano == 0:
            return None
        if budget.hard_limit_action == "block_cloud" and zone == PrivacyZone.RESTRICTED:
            return None
        limits: dict[str, int] = {}
        for scope in decision.scopes:
            limit = budget.monthly_limit_nano if scope == GLOBAL else budget.tenants.get(scope, 0)
            if limit > 0:
                limits[scope] = limit
        return limits or None

    def _advance(self, decision: Decision) -> None:
        route = decision.route
        if route is not None and self.config.routing.strategy == "round_robin":
            self.rr[route.model] = self.rr.get(route.model, 0) + 1

    async def charge_estimate(self, decision: Decision) -> SettleResult:
        """ext_authz has no response phase: charge the Route's estimate at once, provisionally,
        under its decision id; a later report of that decision settles the actual cost."""
        flight = self.flights.get(decision.decision_id)
        est = decision.cost_estimate
        note = flight.basis.note() if flight is not None else ""
        request_id = flight.request_id if flight is not None else decision.request_id
        try:
            return await self.ledger.settle(
                decision.decision_id,
                decision.scopes,
                est.cost_nano,
                self.month(self.wall()),
                estimated=True,
                provisional=True,
                request_id=request_id,
                note=note,
            )
        except BaseException:
            if flight is not None:
                self.flights.drop(flight)
            raise

    # -- outcomes ------------------------------------------------------------------------------

    async def report_outcome(self, outcome: Outcome) -> OutcomeResult:
        """Settle the decision a report names. Raises LedgerError (nothing acknowledged, the
        decision stays unsettled for a retry) when the ledger cannot store the charge."""
        book = self.flights
        flight: Flight | None = None
        pending: Pending | None = None
        if outcome.decision_id:
            key = outcome.decision_id
            flight = book.get(key)
            if flight is None:
                found = await self.ledger.find(key)
                if isinstance(found, SettleResult):
                    return self._result(found, _tenant_of(outcome, None), key)
                pending = found
        else:
            flight = book.claim_oldest(outcome.request_id)
            if flight is None:
                found = await self.ledger.find_request(outcome.request_id)
                if isinstance(found, SettleResult):
                    return self._result(found, outcome.tenant, book.last_settled(outcome.request_id) or "")
                pending = found
            if flight is not None:
                key = flight.decision_id
            elif pending is not None:
                key = pending.key
            else:
                key = book.last_settled(outcome.request_id) or UNKNOWN_PREFIX + outcome.request_id
        if flight is not None:
            book.claim(flight)
            if book.free_slot(flight):
                self.watch.notify()
        try:
            result = await self._settle(outcome, key, flight, pending)
        except BaseException:
            if flight is not None:
                book.unclaim(flight)
            raise
        if flight is not None:
            book.settled(flight)
            if result.recorded and flight.basis.served_by(outcome.backend_id):
                self._record_stats(outcome, flight)
        elif result.recorded:
            self.outcomes_unknown += 1
        if result.recorded and result.estimated:
            self.outcomes_estimated += 1
        scopes = flight.scopes if flight is not None else pending.scopes if pending is not None else ()
        tenant = scopes[1] if len(scopes) > 1 else outcome.tenant if not scopes else ""
        return self._result(result, tenant, key if (flight is not None or pending is not None) else "")

    async def _settle(
        self, outcome: Outcome, key: str, flight: Flight | None, pending: Pending | None
    ) -> SettleResult:
        if flight is not None:
            basis: Basis | None = flight.basis
            scopes = flight.scopes
            request_id = flight.request_id
        elif pending is not None:
            basis = Basis.from_note(pending.note, pending.amount_nano)
            if basis is None:  # a decision whose note is unreadable: priced as reported
                basis = Basis("", outcome.model, (), 0, 0, pending.amount_nano)
            scopes = pending.scopes
            request_id = pending.request_id
        else:
            basis = None
            scopes = scopes_for(outcome.tenant)
            request_id = outcome.request_id
        charge = charge_for(outcome, basis, self.config, self.registry.fleet.by_id)
        if charge.clamped:
            self.outcomes_clamped += 1
            log.warning("outcome for %s charged the ceiling [limits] max_charge_usd", key)
        return await self.ledger.settle(
            key,
            scopes,
            charge.nano,
            self.month(self.wall()),
            estimated=charge.estimated,
            request_id=request_id,
            note=basis.note() if basis is not None and basis.backend_id else "",
        )

    def _result(self, settle: SettleResult, tenant: str, decision_id: str) -> OutcomeResult:
        snap = self.snapshot()
        return OutcomeResult(settle, scope_view(snap, tenant or GLOBAL), decision_id)

    def _record_stats(self, outcome: Outcome, flight: Flight) -> None:
        found = self.registry.get(outcome.backend_id)
        if found is None:
            return
        record_outcome(found[1], outcome, streamed=flight.stream, now=self.clock(), q=self.config.quality)
        self.watch.notify()

    def retry_report(self, outcome: Outcome) -> None:
        """Keep an outcome whose charge could not be stored (no caller is there to retry it);
        `retry_reports` settles it once the ledger accepts writes again."""
        if len(self._retry) == self._retry.maxlen:
            log.error("outcome retry queue full: dropping the oldest unsettled outcome")
        self._retry.append(outcome)

    @property
    def reports_waiting(self) -> int:
        return len(self._retry)

    async def retry_reports(self) -> int:
        """Settle the outcomes kept by `retry_report`, oldest first, until the ledger refuses."""
        done = 0
        while self._retry:
            try:
                await self.report_outcome(self._retry[0])
            except LedgerError:
                break
            self._retry.popleft()
            done += 1
        return done

    def _expire_due(self) -> None:
        """Free the slots whose TTL ran out, a few per decision rather than all in one burst of
        the once-a-second upkeep; their reservations are released off the decision's path."""
        if not self.flights.has_due(self.clock()):
            return
        expired = self.flights.due(self.clock())
        self.watch.notify()
        for flight in expired:
            if flight.reserved:
                flight.reserved = False
                self._release_later(flight.decision_id)

    async def expire_flights(self) -> int:
        """Free the slots of flights past their TTL and release their reservations (a late
        report still charges them)."""
        expired = self.flights.due(self.clock())
        if expired:
            self.watch.notify()
        for flight in expired:
            if flight.reserved:
                flight.reserved = False
                try:
                    await self.ledger.release(flight.decision_id)
                except LedgerError as exc:
                    log.warning("releasing expired reservation %s failed: %s", flight.decision_id, exc)
        return len(expired)

    # -- telemetry -----------------------------------------------------------------------------

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


def _tenant_of(outcome: Outcome, scopes: tuple[str, ...] | None) -> str:
    if scopes:
        return scopes[1] if len(scopes) > 1 else ""
    return outcome.tenant
