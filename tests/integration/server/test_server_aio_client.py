"""`nexus_grpc.aio_client.AsyncClient` against a real server (the demo fleet): Route with its
outcome reported, Queue, Reject, Explain, GetBudget, health, and an RPC error as `ClientError`."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from nexus_grpc import api
from nexus_grpc.aio_client import AsyncClient, ClientError, verdict
from nexus_grpc.testing.server import TestServer


def test_async_client_route_queue_reject(demo: TestServer) -> None:
    async def scenario() -> None:
        async with AsyncClient(demo.target) as nexus:
            assert await nexus.health() == "SERVING"

            route = await nexus.decide("gpt-4", estimated_input_tokens=1200, tenant="team-a")
            assert verdict(route) == "route"
            assert (route.route.backend_id, route.route.model) == ("gpu-1", "llama3:70b")
            outcome = await nexus.report_outcome(route, http_status=200, input_tokens=1180, output_tokens=412)
            assert outcome.recorded

            queue = await nexus.decide(api.DecideRequest(model="reasoning"))
            assert verdict(queue) == "queue"
            assert queue.queue.model == "deepseek-r1:70b" and queue.queue.retry_after_ms > 0

            reject = await nexus.decide("gpt-4-turbo", privacy=api.PrivacyZone.PRIVACY_ZONE_RESTRICTED)
            assert verdict(reject) == "reject"
            assert reject.reject.code == api.RejectCode.REJECT_CODE_NO_ELIGIBLE_BACKEND
            with pytest.raises(ValueError, match="only a Route"):
                await nexus.report_outcome(reject, http_status=200)

            explained = await nexus.explain("gpt-4", estimated_input_tokens=1200)
            assert explained.stages[0].reconciler == "RequestAnalyzer"
            assert verdict(explained.decision) == "route"

            budget = await nexus.get_budget()
            assert budget.scope == "global" and budget.limit_usd == 100

            with pytest.raises(ClientError) as info:
                await nexus.decide("")
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "model" in info.value.details

    asyncio.run(scenario())
    assert demo.runtime.registry.live["gpu-1"].in_flight == {}  # the reported Route freed its slot


def test_async_client_unreachable_server_is_a_client_error() -> None:
    async def scenario() -> None:
        async with AsyncClient("127.0.0.1:1", timeout=0.5) as nexus:
            with pytest.raises(ClientError) as info:
                await nexus.decide("gpt-4")
            assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    asyncio.run(scenario())
