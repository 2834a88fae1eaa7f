"""Effective policy (alias chain, strictest-first), fallback tightening, alias chains, budget views."""

from __future__ import annotations

import dataclasses

import pytest

from nexus_grpc.config.schema import Policy
from nexus_grpc.domain.enums import BudgetStatus, PrivacyZone
from nexus_grpc.domain.money import NANO
from nexus_grpc.domain.scopes import GLOBAL, scopes_for
from nexus_grpc.pipeline.budget_views import request_views, scope_view
from nexus_grpc.pipeline.snapshot import EffectivePolicy, Snapshot, combine_policies
from nexus_grpc.testing.builders import backend, budget_config, config, engine, policy

USD = NANO


@pytest.mark.parametrize(
    ("policies", "chain", "expected"),
    [
        ([], ("m",), EffectivePolicy()),
        (
            [policy("gpt-4*", privacy="restricted", min_tier=2, max_cost_usd=1.0)],
            ("gpt-4", "llama3:70b"),
            EffectivePolicy(PrivacyZone.RESTRICTED, 2, USD, True, ("gpt-4*",)),
        ),
        (
            [policy("gpt-4*", privacy="restricted")],
            ("my-gpt", "llama3:70b"),
            EffectivePolicy(),
        ),
        # strictest-first: restricted beats unrestricted, highest tier, lowest cap, all must allow fallback
        (
            [
                policy("a", privacy="unrestricted", min_tier=3, max_cost_usd=2.0),
                policy("b", privacy="restricted", min_tier=1),
                policy("c", privacy="unrestricted", min_tier=2, max_cost_usd=0.5, fallback_allowed=False),
                policy(
                    "zzz", privacy="restricted", min_tier=5, max_cost_usd=0.1, fallback_allowed=False
                ),  # does not match
            ],
            ("a", "b", "c"),
            EffectivePolicy(PrivacyZone.RESTRICTED, 3, USD // 2, False, ("a", "b", "c")),
        ),
    ],
)
def test_combine_policies(policies: list[Policy], chain: tuple[str, ...], expected: EffectivePolicy) -> None:
    assert combine_policies(config(policies=policies), chain) == expected


def test_tightened_keeps_the_primarys_privacy_and_min_tier() -> None:
    primary = EffectivePolicy(PrivacyZone.RESTRICTED, 3, 100, True, ("p",))
    own = EffectivePolicy(PrivacyZone.OPEN, 1, 7, False, ("f",))
    assert own.tightened(primary) == EffectivePolicy(PrivacyZone.RESTRICTED, 3, 7, False, ("f",))
    looser = EffectivePolicy(PrivacyZone.OPEN, 0)
    stricter = EffectivePolicy(PrivacyZone.RESTRICTED, 4, None, True, ("f",))
    assert stricter.tightened(looser) == stricter


def test_fleet_alias_chain() -> None:
    fleet = engine(config([backend("b", models=("c",))], aliases={"x": "y", "y": "c"})).registry.fleet
    assert fleet.chain("x") == ("x", "y", "c")
    assert fleet.chain("c") == ("c",)
    assert fleet.chain("unknown") == ("unknown",)
    assert fleet.served_models == ("c",)


def snapshot_with(totals: dict[str, tuple[int, int] | None], **budget: float) -> Snapshot:
    limit = budget.pop("limit", 0.0)
    cfg = config(budget=budget_config(limit, tenants={k: v for k, v in budget.items()}))
    snap = engine(cfg).snapshot()
    return dataclasses.replace(snap, totals=lambda scope, month: totals.get(scope, (0, 0)))


def test_scope_view_reads_spent_and_reserved() -> None:
    snap = snapshot_with({GLOBAL: (600_000_000, 200_000_000)}, limit=1.0)
    view = scope_view(snap, GLOBAL)
    assert (view.spent_nano, view.reserved_nano, view.limit_nano) == (600_000_000, 200_000_000, USD)
    assert view.status == BudgetStatus.SOFT_LIMIT  # spent + reserved = 80%
    assert view.month == snap.month
    assert view.utilization_percent == pytest.approx(80.0)
    assert view.remaining_nano == 200_000_000


def test_scope_view_of_an_unreadable_ledger_is_unspecified() -> None:
    snap = snapshot_with({GLOBAL: None}, limit=1.0)
    view = scope_view(snap, GLOBAL)
    assert (view.status, view.spent_nano, view.reserved_nano, view.limit_nano) == (
        BudgetStatus.UNSPECIFIED,
        0,
        0,
        USD,
    )


@pytest.mark.parametrize(
    ("global_used", "tenant_used", "tenant", "applied"),
    [
        (0, 0, "acme", "acme"),  # tie, tenant has a limit
        (0, 0, "free", GLOBAL),  # tie, tenant without limit
        (80 * USD, 0, "acme", GLOBAL),
        (0, 8 * USD, "acme", "acme"),
        (100 * USD, 10 * USD, "acme", "acme"),  # both HARD: tenant
        (100 * USD, 9 * USD, "acme", GLOBAL),
    ],
)
def test_request_views(global_used: int, tenant_used: int, tenant: str, applied: str) -> None:
    snap = snapshot_with({GLOBAL: (global_used, 0), tenant: (tenant_used, 0)}, limit=100.0, acme=10.0)
    views, view = request_views(snap, tenant)
    assert [v.scope for v in views] == [GLOBAL, tenant]
    assert view.scope == applied


def test_request_views_without_tenant() -> None:
    views, view = request_views(snapshot_with({}, limit=1.0), "")
    assert [v.scope for v in views] == [GLOBAL]
    assert view.scope == GLOBAL
    assert scopes_for("") == (GLOBAL,)
    assert scopes_for("acme") == (GLOBAL, "acme")
