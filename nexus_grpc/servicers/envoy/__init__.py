"""Envoy adapters (SPEC §6): ext_proc and ext_authz on the server and pipeline of nexus.v1."""

from __future__ import annotations

from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from nexus_grpc.engine import DecisionEngine
from nexus_grpc.servicers.envoy import ext_authz, ext_proc
from nexus_grpc.servicers.envoy.mapping import EnvoyStats

if TYPE_CHECKING:
    from nexus_grpc.app import Runtime

__all__ = ["EnvoyStats", "add_envoy_servicers", "envoy_stats"]

_STATS: WeakKeyDictionary[DecisionEngine, EnvoyStats] = WeakKeyDictionary()


def envoy_stats(engine: DecisionEngine) -> EnvoyStats:
    """The adapter counters of the server running `engine`."""
    stats = _STATS.get(engine)
    if stats is None:
        stats = _STATS[engine] = EnvoyStats()
    return stats


def add_envoy_servicers(runtime: Runtime, server: grpc.aio.Server) -> tuple[str, ...]:
    """Register ExternalProcessor and Authorization; returns their full service names."""
    engine = runtime.engine
    stats = envoy_stats(engine)
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
        ext_proc.ExtProcServicer(engine, stats), server
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ext_authz.ExtAuthzServicer(engine), server)
    return (ext_proc.SERVICE_NAME, ext_authz.SERVICE_NAME)
