"""nexus.v1.RegistryService (mutations are admin RPCs, refused or let through by the gate in
front of every RPC: `servicers/gate.py`)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message

from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import registry_pb2_grpc as rgrpc
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.domain.enums import BackendStatus
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.errors import FieldError
from nexus_grpc.servicers.common import NotFound, rpc
from nexus_grpc.servicers.convert import backend_from_proto, backend_to_proto
from nexus_grpc.state.admin_sync import AdminSync

Ctx = grpc.aio.ServicerContext[Any, Any]


class RegistryServicer(rgrpc.RegistryServiceServicer):
    def __init__(self, engine: DecisionEngine, sync: AdminSync | None = None) -> None:
        self.engine = engine
        self.sync = sync  # set with `serve --workers N`: admin changes reach every worker

    def _proto(self, backend_id: str) -> tpb.Backend:
        found = self.engine.registry.get(backend_id)
        if found is None:
            raise NotFound(f"backend_id: no backend {backend_id!r}")
        return backend_to_proto(found[0], found[1], self.engine.clock())

    @rpc
    async def ListBackends(self, request: rpb.ListBackendsRequest, context: Ctx) -> rpb.ListBackendsResponse:
        fleet = self.engine.registry.fleet
        return rpb.ListBackendsResponse(backends=[self._proto(b.id) for b in fleet.backends])

    @rpc
    async def GetBackend(self, request: rpb.GetBackendRequest, context: Ctx) -> rpb.GetBackendResponse:
        return rpb.GetBackendResponse(backend=self._proto(request.backend_id))

    @rpc
    async def UpsertBackend(
        self, request: rpb.UpsertBackendRequest, context: Ctx
    ) -> rpb.UpsertBackendResponse:
        backend_id = self.upsert(request)
        await self._publish("UpsertBackend", request)
        return rpb.UpsertBackendResponse(backend=self._proto(backend_id))

    @rpc
    async def RemoveBackend(
        self, request: rpb.RemoveBackendRequest, context: Ctx
    ) -> rpb.RemoveBackendResponse:
        self.remove(request)
        await self._publish("RemoveBackend", request)
        return rpb.RemoveBackendResponse()

    @rpc
    async def SetBackendState(
        self, request: rpb.SetBackendStateRequest, context: Ctx
    ) -> rpb.SetBackendStateResponse:
        self.set_state(request)
        await self._publish("SetBackendState", request)
        return rpb.SetBackendStateResponse(backend=self._proto(request.backend_id))

    async def _publish(self, method: str, request: Message) -> None:
        if self.sync is not None:
            await self.sync.publish(method, request.SerializeToString())

    # The mutations themselves, shared by the RPCs and by replay of other workers' changes.

    def upsert(self, request: rpb.UpsertBackendRequest) -> str:
        if not request.HasField("backend"):
            raise FieldError("backend", "is required")
        backend = backend_from_proto(request.backend, self.engine.config)
        self.engine.registry.upsert(backend)
        self.engine.watch.notify()
        return backend.id

    def remove(self, request: rpb.RemoveBackendRequest) -> None:
        if not self.engine.registry.remove(request.backend_id):
            raise NotFound(f"backend_id: no backend {request.backend_id!r}")
        self.engine.watch.notify()

    def set_state(self, request: rpb.SetBackendStateRequest, *, age_ms: int = 0) -> None:
        """`age_ms`: how long ago another worker applied it (its loading ETA has run that long)."""
        try:
            status = BackendStatus(request.status)
        except ValueError:
            raise FieldError("status", f"unknown enum number {request.status}") from None
        if status == BackendStatus.UNSPECIFIED:
            raise FieldError("status", "must be set")
        progress = request.loading_progress_percent if request.HasField("loading_progress_percent") else None
        if progress is not None and progress > 100:
            raise FieldError("loading_progress_percent", f"{progress} is out of range 0..100")
        if len(request.reason) > 1024:
            raise FieldError("reason", "at most 1024 characters")
        eta = request.loading_eta_ms if request.HasField("loading_eta_ms") else None
        live = self.engine.registry.set_state(
            request.backend_id,
            status,
            eta_ms=None if eta is None else max(0, eta - age_ms),
            progress=progress,
            reason=request.reason,
        )
        if live is None:
            raise NotFound(f"backend_id: no backend {request.backend_id!r}")
        self.engine.watch.notify()

    def replay(self, method: str, payload: bytes, age_ms: int) -> None:
        """Apply an admin change another worker made."""
        if method == "UpsertBackend":
            self.upsert(rpb.UpsertBackendRequest.FromString(payload))
        elif method == "RemoveBackend":
            self.remove(rpb.RemoveBackendRequest.FromString(payload))
        elif method == "SetBackendState":
            self.set_state(rpb.SetBackendStateRequest.FromString(payload), age_ms=age_ms)
