"""The grpc.aio server: its options, every service behind the gate (plus health and
reflection), binding the listen address (plaintext or `[server.tls]`), a taken port said
plainly, and the warning when admin RPCs are open to no one."""

from __future__ import annotations

import errno
import logging
import socket

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nexus_grpc._gen.nexus.v1 import (
    admin_pb2_grpc,
    budget_pb2_grpc,
    decision_pb2_grpc,
    registry_pb2_grpc,
)
from nexus_grpc.config.schema import Config, TlsConfig
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.servicers.admin import AdminServicer
from nexus_grpc.servicers.budget import BudgetServicer
from nexus_grpc.servicers.decision import DecisionServicer
from nexus_grpc.servicers.envoy import add_envoy_servicers
from nexus_grpc.servicers.gate import Gate, register
from nexus_grpc.servicers.registry import RegistryServicer
from nexus_grpc.state.server import ServerState
from nexus_grpc.telemetry.tracing import Tracing

log = logging.getLogger("nexus_grpc")
OPEN_RPCS = 64  # beyond the unary and stream budgets: health checks and reflection


def build_server(config: Config, *, reuse_port: bool) -> grpc.aio.Server:
    server_cfg = config.server
    return grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", config.limits.max_message_bytes),
            ("grpc.max_send_message_length", config.limits.max_message_bytes),
        ],
        # the gate enforces the unary and stream budgets apart; this is the hard ceiling
        maximum_concurrent_rpcs=server_cfg.max_concurrent_rpcs
        + server_cfg.max_concurrent_streams
        + OPEN_RPCS,
    )


def add_services(
    server: grpc.aio.Server,
    gate: Gate,
    engine: DecisionEngine,
    state: ServerState,
    *,
    tracing: Tracing | None,
    registry: RegistryServicer,
    admin: AdminServicer,
    health: health_aio.HealthServicer,
) -> list[str]:
    """Every nexus.v1 and Envoy service behind the gate, then health and reflection; returns the
    full names of the services."""
    names = [
        register(
            server,
            decision_pb2_grpc.add_DecisionServiceServicer_to_server,
            DecisionServicer(engine, state.overloaded, tracing),
            gate,
        ),
        register(server, registry_pb2_grpc.add_RegistryServiceServicer_to_server, registry, gate),
        register(server, budget_pb2_grpc.add_BudgetServiceServicer_to_server, BudgetServicer(engine), gate),
        register(server, admin_pb2_grpc.add_AdminServiceServicer_to_server, admin, gate),
        *add_envoy_servicers(engine, server, gate),
    ]
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    return names


def bind(server: grpc.aio.Server, listen: str, tls: TlsConfig | None) -> tuple[int, str]:
    """Listen on `listen`; returns the port and the address with a `:0` port made the real one."""
    try:
        port = _add_port(server, listen, tls)
    except OSError:
        raise
    except RuntimeError as exc:  # grpcio reports a failed bind this way
        raise OSError(f"cannot listen on {listen} (address in use?)") from exc
    if port == 0:
        raise OSError(f"cannot listen on {listen} (address in use?)")
    if listen.endswith(":0"):
        listen = listen[: -len("0")] + str(port)
    return port, listen


def _add_port(server: grpc.aio.Server, listen: str, tls: TlsConfig | None) -> int:
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        files = {"cert": tls.cert, "key": tls.key, "client_ca": tls.client_ca}
        loaded: dict[str, bytes | None] = {}
        for key, path in files.items():
            try:
                loaded[key] = path.read_bytes() if path is not None else None
            except OSError as exc:
                raise OSError(f"[server.tls] {key}: cannot read {path}: {exc.strerror or exc}") from None
        cert, key_pem, ca = loaded["cert"], loaded["key"], loaded["client_ca"]
        assert cert is not None and key_pem is not None
        creds = grpc.ssl_server_credentials(
            [(key_pem, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
        port = server.add_secure_port(listen, creds)
    return port


def refuse_a_taken_port(listen: str) -> None:
    """A port another process listens on, said plainly before grpc logs its own bind error."""
    host, sep, port = listen.rpartition(":")
    if not sep or listen.startswith("unix:") or not port.isdigit() or int(port) == 0:
        return
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # grpc reports anything else in its own words
            raise OSError(
                f"cannot listen on {listen}: the port is in use (another nexus-grpc? "
                f"`nexus-grpc health --target {listen}` asks it)"
            ) from None


def warn_if_open(state: ServerState) -> None:
    """Listening beyond loopback with no admin token: say what that means, at once."""
    if state.loopback_only or state.admin_token():
        return
    log.warning(
        "listening on %s beyond loopback with no admin token: admin RPCs (RegistryService "
        "mutations, ReloadConfig) are refused; set the environment variable %s to allow them with "
        "'authorization: Bearer <token>'%s",
        state.listen,
        state.admin_token_env or "named by [server] admin_token_env",
        ""
        if state.client_token()
        else "; data-plane RPCs are open to anyone who can reach the port "
        "(set [server] client_token_env to require a token)",
    )
