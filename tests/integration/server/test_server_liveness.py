"""The `liveness` health service (Kubernetes' livenessProbe): SERVING from the start and through a
drain, while the server's readiness ("" and every service) is NOT_SERVING."""

from __future__ import annotations

import time

from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc.servicers.envoy import LIVENESS as LIVENESS_SERVICE
from nexus_grpc.testing.server import TestServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_liveness_stays_serving_while_draining(demo: TestServer) -> None:
    health = health_pb2_grpc.HealthStub(demo.channel)

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    assert (status(""), status(LIVENESS_SERVICE)) == (SERVING, SERVING)
    stopping = demo.begin_stop(drain_seconds=2.0, grace_seconds=0.5)
    deadline = time.monotonic() + 2
    while status("") != NOT_SERVING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert status(LIVENESS_SERVICE) == SERVING
    assert status("nexus.v1.DecisionService") == NOT_SERVING
    stopping.result(timeout=10)
