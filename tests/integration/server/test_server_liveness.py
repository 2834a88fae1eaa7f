"""The `liveness` health service (Kubernetes' livenessProbe): SERVING from the start and through a
drain, while the server's readiness ("" and every service) is NOT_SERVING."""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.net import wait_until

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
    # within the 2 s drain, so liveness is checked while it lasts
    wait_until(lambda: status("") == NOT_SERVING, "readiness NOT_SERVING while draining", timeout=2)
    assert status(LIVENESS_SERVICE) == SERVING
    assert status("nexus.v1.DecisionService") == NOT_SERVING
    stopping.result(timeout=10)
