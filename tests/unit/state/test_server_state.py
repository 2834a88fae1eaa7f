"""ServerState: the loopback rule decided on parsed and resolved addresses, never on spelling."""

from __future__ import annotations

import pytest

from nexus_grpc.state.server import ServerState, loopback_only


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:50051", True),
        ("127.5.6.7:1", True),  # all of 127/8 is loopback
        ("[::1]:50051", True),
        ("localhost:50051", True),  # resolves to loopback addresses only
        ("unix:/run/nexus.sock", True),
        ("0.0.0.0:50051", False),  # every interface
        ("[::]:50051", False),
        ("10.1.2.3:50051", False),
        ("127.example.invalid:50051", False),  # merely starts with "127.": resolves to nothing provable
        ("localhost.example.invalid:50051", False),
        ("[::ffff:127.0.0.1]:1", False),  # v4-mapped: not provably loopback-only on every stack
        (":50051", False),
    ],
)
def test_loopback_rule(listen: str, expected: bool) -> None:
    assert loopback_only(listen) is expected


def test_shedding_starts_above_ninety_percent_of_the_unary_budget() -> None:
    state = ServerState(max_unary=10)
    state.unary_active = 9
    assert not state.overloaded()
    state.unary_active = 10
    assert state.overloaded()


def test_tokens_come_from_the_named_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_ADMIN", "a")
    monkeypatch.delenv("MY_CLIENT", raising=False)
    state = ServerState(admin_token_env="MY_ADMIN", client_token_env="MY_CLIENT")
    assert (state.admin_token(), state.client_token()) == ("a", "")
    assert ServerState(admin_token_env="").admin_token() == ""
