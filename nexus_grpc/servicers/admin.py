"""nexus.v1.AdminService."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from nexus_grpc import __version__
from nexus_grpc._gen.nexus.v1 import admin_pb2 as apb
from nexus_grpc._gen.nexus.v1 import admin_pb2_grpc as agrpc
from nexus_grpc.config.errors import ConfigError
from nexus_grpc.config.schema import Config
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.errors import FieldError
from nexus_grpc.servicers.common import FailedPrecondition, rpc
from nexus_grpc.state.server import ServerState

Ctx = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(agrpc.AdminServiceServicer):
    """Server information and config reload. `reload` is None when there is no file to reload
    (the built-in demo fleet)."""

    def __init__(
        self,
        engine: DecisionEngine,
        state: ServerState,
        *,
        reload: Callable[[], Awaitable[Config]] | None,
        loaded_at: Callable[[], str],
        degraded: Callable[[], list[str]],
    ) -> None:
        self.engine = engine
        self.state = state
        self._reload = reload
        self._loaded_at = loaded_at
        self._degraded = degraded

    @rpc
    async def GetServerInfo(
        self, request: apb.GetServerInfoRequest, context: Ctx
    ) -> apb.GetServerInfoResponse:
        ledger = self.engine.ledger
        return apb.GetServerInfoResponse(
            version=__version__,
            config_version=self.engine.config.version,
            config_loaded_at=self._loaded_at(),
            ledger_kind=ledger.kind,
            ledger_available=ledger.available and ledger.write_error is None,
            degraded_reasons=self._degraded(),
            draining=self.state.draining,
        )

    @rpc
    async def ReloadConfig(self, request: apb.ReloadConfigRequest, context: Ctx) -> apb.ReloadConfigResponse:
        if self._reload is None:
            raise FailedPrecondition("the server runs the built-in demo fleet; there is no file to reload")
        try:
            config = await self._reload()
        except ConfigError as exc:
            problems = "\n".join(f"{issue.key_path}: {issue.problem}" for issue in exc.issues)
            name = Path(exc.issues[0].file).name if exc.issues else "the file"
            raise FieldError(
                "config", f"invalid configuration in {name}, old one kept:\n{problems}"
            ) from None
        return apb.ReloadConfigResponse(config_version=config.version)
