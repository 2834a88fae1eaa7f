"""Envoy adapters: ext_proc and ext_authz on the server and pipeline of nexus.v1."""

from __future__ import annotations

from weakref import WeakKeyDictionary

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from nexus_grpc.engine import DecisionEngine
from nexus_grpc.servicers.envoy import ext_authz, ext_proc
from nexus_grpc.servicers.envoy.mapping import EnvoyStats
from nexus_grpc.servicers.gate import Gate, register
from nexus_grpc.telemetry.tracing import Tracing

__all__ = ["LIVENESS", "READINESS", "EnvoyStats", "add_envoy_servicers", "envoy_stats"]

# gRPC health service names endpoint-picking gateways check besides the ext_proc service's own:
# `liveness` answers SERVING while the process answers at all, `readiness` as the services do
# (SERVING once ready, NOT_SERVING while starting, draining or unable to store money).
LIVENESS = "liveness"
READINESS = "readiness"

_STATS: WeakKeyDictionary[DecisionEngine, EnvoyStats] = WeakKeyDictionary()


def envoy_stats(engine: DecisionEngine) -> EnvoyStats:
    """The adapter counters of the server running `engine`."""
    stats = _STATS.get(engine)
    if stats is None:
        stats = _STATS[engine] = EnvoyStats()
    return stats


def add_envoy_servicers(engine: DecisionEngine, server: grpc.aio.Server, gate: Gate) -> tuple[str, ...]:
    """Register ExternalProcessor and Authorization behind the gate; returns their names. Their
    decisions are traced while the gate traces (its tracer is set once telemetry starts).

    Shed requests get the HTTP 429 of the endpoint-picker protocol, never a gRPC error (which
    Envoy turns into its `status_on_error`): beyond its budget a stream or Check gets it from the
    gate, and near it (as for Decide) a normal-priority decision is shed with it."""
    stats = envoy_stats(engine)
    state = gate.state

    def tracing() -> Tracing | None:
        return gate.tracing

    gate.shed_answers[f"/{ext_proc.SERVICE_NAME}/Process"] = ext_proc.shed_answer(engine, stats)
    gate.shed_answers[f"/{ext_authz.SERVICE_NAME}/Check"] = ext_authz.shed_answer(engine, stats)

    return (
        register(
            server,
            external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server,
            ext_proc.ExtProcServicer(engine, stats, tracing, state.streams_overloaded),
            gate,
        ),
        register(
            server,
            external_auth_pb2_grpc.add_AuthorizationServicer_to_server,
            ext_authz.ExtAuthzServicer(engine, stats, tracing, state.overloaded),
            gate,
        ),
    )
