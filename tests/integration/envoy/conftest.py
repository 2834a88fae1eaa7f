"""Fixtures for the Envoy tests: see envoy_stack.py for the stack itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from envoy_stack import PoolStack, StackFactory, make_pool_stack_factory, make_stack_factory


@pytest.fixture
def make_stack() -> Iterator[StackFactory]:
    """make_stack("ext_proc" | "ext_authz", read_body=..., nexus_up=True, ...) → a running Stack,
    with three upstreams, nexus-grpc and Envoy, all stopped after the test."""
    closers: list[Callable[[], None]] = []
    yield make_stack_factory(closers)
    errors: list[BaseException] = []
    for close in reversed(closers):
        try:
            close()
        except Exception as exc:  # keep closing the rest
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def make_pool_stack(tmp_path: Path) -> Iterator[Callable[..., PoolStack]]:
    """make_pool_stack(nexus_up=True, subset_filter=True) → a running PoolStack: Envoy on
    inference-pool.yaml, nexus-grpc on TLS as its endpoint picker, the pool's upstreams."""
    closers: list[Callable[[], None]] = []
    yield make_pool_stack_factory(closers, tmp_path)
    errors: list[BaseException] = []
    for close in reversed(closers):
        try:
            close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
