"""The endpoint subset of an endpoint-picking gateway: only backends whose ip:port endpoint it
admits are candidates, excluded before any other stage with their own code; hostname backends
are never admitted; the route index keys its ranked sets by the subset and decides exactly what
the stages decide."""

from __future__ import annotations

from collections import Counter

import pytest

from nexus_grpc.domain import validate
from nexus_grpc.domain.decision import Decision, Reject, Route
from nexus_grpc.domain.endpoints import EndpointSubset, endpoint_of
from nexus_grpc.domain.enums import ExclusionCode, PrivacyZone, RejectCode
from nexus_grpc.errors import FieldError
from nexus_grpc.testing.builders import backend, config, decide, engine, policy, request

OUTSIDE = ExclusionCode.OUTSIDE_ENDPOINT_SUBSET


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("10.0.0.1:8000", "10.0.0.1:8000"),
        ("10.0.0.1:08000", "10.0.0.1:8000"),
        ("10.0.0.1", "10.0.0.1"),
        ("[::1]:80", "[::1]:80"),
        ("[0:0::1]:80", "[::1]:80"),
        ("[::1]", "::1"),
        ("fe80::1", "fe80::1"),
    ],
)
def test_endpoints_are_read_canonical(value: str, canonical: str) -> None:
    assert validate.endpoint(value, "subset") == canonical


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("gpu-1.local:8000", "host must be an IP"),
        ("10.0.0.1:", "empty port"),
        ("10.0.0.1:0", "outside 1..65535"),
        ("10.0.0.1:65536", "outside 1..65535"),
        ("10.0.0.1:http", "outside 1..65535"),
        ("[10.0.0.1]:80", "only an IPv6 address"),
        ("[::1:80", "not an ip:port"),
        ("[::1]x", "not an ip:port"),
        ("", "required"),
        ("10.0.0.1 :80", "space"),
    ],
)
def test_malformed_endpoints_are_refused(value: str, problem: str) -> None:
    with pytest.raises(FieldError, match=problem):
        validate.endpoint(value, "subset")


def test_endpoint_of_a_url_and_what_a_subset_admits() -> None:
    assert endpoint_of("http://10.0.0.1:8000") == "10.0.0.1:8000"
    assert endpoint_of("https://10.0.0.1") == "10.0.0.1:443"
    assert endpoint_of("http://[::1]:9/v1") == "[::1]:9"
    assert endpoint_of("https://api.openai.com") is None
    subset = EndpointSubset(frozenset({"10.0.0.1:8000", "10.0.0.2", "::1"}))
    assert subset.admits("10.0.0.1:8000")
    assert not subset.admits("10.0.0.1:8001")
    assert subset.admits("10.0.0.2:1") and subset.admits("10.0.0.2:65535")  # a bare IP: any port
    assert subset.admits("[::1]:9")
    assert not subset.admits(None)
    assert EndpointSubset().admits("10.9.9.9:1") and not EndpointSubset().admits(None)
    assert not EndpointSubset(frozenset()).admits("10.0.0.1:8000")


def _fleet(strategy: str = "priority_only") -> object:
    return config(
        [
            backend("gpu-1", url="http://10.0.0.1:8000", priority=1),
            backend("gpu-2", url="http://10.0.0.2:8000", priority=10),
            backend("gpu-3", url="http://10.0.0.3:8000", priority=20),
            backend("open-1", type="openai", url="http://10.0.0.9:8000", priority=5, pricing=(0.001, 0.002)),
            backend(
                "cloud", type="openai", url="https://api.example.com", priority=0, pricing=(0.001, 0.002)
            ),
        ],
        strategy=strategy,
        policies=[policy("secret*")],
    )


def _with(subset: EndpointSubset | None, **kwargs: object) -> object:
    return request("m", **kwargs)._replace(endpoint_subset=subset)


def _outside(decision: Decision) -> list[str]:
    return [e.backend_id for e in decision.exclusions if e.code == OUTSIDE]


def test_the_subset_confines_the_route_and_its_alternates() -> None:
    eng = engine(_fleet())
    subset = EndpointSubset(frozenset({"10.0.0.2:8000", "10.0.0.3"}))
    decision = decide(eng, _with(subset))
    route = decision.route
    assert route is not None
    assert (route.backend_id, route.alternates) == ("gpu-2", ("gpu-3",))
    assert dict(decision.exclusion_counts) == {("RequestAnalyzer", OUTSIDE): 3}
    assert set(_outside(eng.explain(_with(subset)))) == {"gpu-1", "open-1", "cloud"}


def test_without_a_subset_list_only_ip_endpoints_are_candidates() -> None:
    eng = engine(_fleet())
    decision = eng.explain(_with(EndpointSubset()))
    assert decision.route is not None and decision.route.backend_id == "gpu-1"  # not cloud (priority 0)
    [cloud] = [e for e in decision.exclusions if e.code == OUTSIDE]
    assert cloud.backend_id == "cloud" and cloud.reconciler == "RequestAnalyzer"
    assert "host name, not an IP" in cloud.reason and "x-nexus-backend" in cloud.suggested_action
    # the same request without the gateway's subset routes as before: the cloud has priority 0
    plain = decide(eng, request("m"))
    assert plain.route is not None and plain.route.backend_id == "cloud"


@pytest.mark.parametrize("entries", [frozenset(), frozenset({"10.0.0.77:8000"})])
def test_an_empty_or_foreign_subset_is_no_eligible_backend(entries: frozenset[str]) -> None:
    eng = engine(_fleet())
    decision = decide(eng, _with(EndpointSubset(entries)))
    assert isinstance(decision.verdict, Reject)
    assert decision.verdict.code == RejectCode.NO_ELIGIBLE_BACKEND
    assert sorted(_outside(decision)) == ["cloud", "gpu-1", "gpu-2", "gpu-3", "open-1"]
    reason = decision.exclusions[0].reason
    assert "outside the endpoint subset" in reason or "host name" in reason


def test_a_restricted_request_never_reaches_an_open_endpoint_in_its_subset() -> None:
    eng = engine(_fleet())
    subset = EndpointSubset(frozenset({"10.0.0.9:8000"}))  # only the open endpoint
    decision = decide(eng, _with(subset, privacy=PrivacyZone.RESTRICTED))
    assert isinstance(decision.verdict, Reject)
    codes = {(e.backend_id, e.code) for e in decision.exclusions}
    assert ("open-1", ExclusionCode.PRIVACY_ZONE) in codes
    assert ("gpu-1", OUTSIDE) in codes


@pytest.mark.parametrize("strategy", ["priority_only", "smart"])
def test_the_index_decides_what_the_stages_decide_for_every_subset(strategy: str) -> None:
    fast, staged = engine(_fleet(strategy)), engine(_fleet(strategy), indexed=False)
    subsets = [
        None,
        EndpointSubset(),
        EndpointSubset(frozenset()),
        EndpointSubset(frozenset({"10.0.0.3:8000"})),
        EndpointSubset(frozenset({"10.0.0.3", "10.0.0.9"})),
        EndpointSubset(frozenset({"10.0.0.2:8000", "10.0.0.1:8000"})),
    ]
    for subset in subsets * 2:  # the second round reuses the index's ranked sets
        for privacy in (PrivacyZone.UNSPECIFIED, PrivacyZone.RESTRICTED):
            req = _with(subset, privacy=privacy, request_id="same")
            a, b = decide(fast, req), decide(staged, req)
            assert a.verdict == b.verdict, (subset, privacy)
            assert dict(a.exclusion_counts or Counter((e.reconciler, e.code) for e in a.exclusions)) == dict(
                Counter((e.reconciler, e.code) for e in b.exclusions)
            )
            assert not Counter(a.exclusions) - Counter(b.exclusions)
            for eng, decision in ((fast, a), (staged, b)):
                if isinstance(decision.verdict, Route):
                    eng.flights.drop(eng.flights.get(decision.decision_id))  # type: ignore[arg-type]
