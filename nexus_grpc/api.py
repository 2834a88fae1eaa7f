"""The public nexus.v1 API for Python: every message, enum and stub of `protos/nexus/v1/`.

    from nexus_grpc import api
    stub = api.DecisionServiceStub(grpc.insecure_channel("127.0.0.1:50051"))
    resp = stub.Decide(api.DecideRequest(model="gpt-4", estimated_input_tokens=1200))

Import from here, never from `nexus_grpc._gen` (generated, its layout may change). For an asyncio
client with typed helpers see `nexus_grpc.aio_client.AsyncClient`.
"""

from __future__ import annotations

from nexus_grpc._gen.nexus.v1.admin_pb2 import (
    GetServerInfoRequest,
    GetServerInfoResponse,
    ReloadConfigRequest,
    ReloadConfigResponse,
)
from nexus_grpc._gen.nexus.v1.admin_pb2_grpc import (
    AdminServiceServicer,
    AdminServiceStub,
    add_AdminServiceServicer_to_server,
)
from nexus_grpc._gen.nexus.v1.budget_pb2 import (
    GetBudgetRequest,
    GetBudgetResponse,
)
from nexus_grpc._gen.nexus.v1.budget_pb2_grpc import (
    BudgetServiceServicer,
    BudgetServiceStub,
    add_BudgetServiceServicer_to_server,
)
from nexus_grpc._gen.nexus.v1.decision_pb2 import (
    CandidateScore,
    DecideRequest,
    DecideResponse,
    ExplainRequest,
    ExplainResponse,
    Queue,
    Reject,
    ReportOutcomeRequest,
    ReportOutcomeResponse,
    Route,
    StageTrace,
)
from nexus_grpc._gen.nexus.v1.decision_pb2_grpc import (
    DecisionServiceServicer,
    DecisionServiceStub,
    add_DecisionServiceServicer_to_server,
)
from nexus_grpc._gen.nexus.v1.registry_pb2 import (
    GetBackendRequest,
    GetBackendResponse,
    ListBackendsRequest,
    ListBackendsResponse,
    RemoveBackendRequest,
    RemoveBackendResponse,
    SetBackendStateRequest,
    SetBackendStateResponse,
    UpsertBackendRequest,
    UpsertBackendResponse,
)
from nexus_grpc._gen.nexus.v1.registry_pb2_grpc import (
    RegistryServiceServicer,
    RegistryServiceStub,
    add_RegistryServiceServicer_to_server,
)
from nexus_grpc._gen.nexus.v1.types_pb2 import (
    Backend,
    BackendStatus,
    BudgetState,
    BudgetStatus,
    CostEstimate,
    ExclusionCode,
    Model,
    Pricing,
    Priority,
    PrivacyZone,
    RejectCode,
    RejectionReason,
    TierMode,
)

__all__ = [
    "AdminServiceServicer",
    "AdminServiceStub",
    "Backend",
    "BackendStatus",
    "BudgetServiceServicer",
    "BudgetServiceStub",
    "BudgetState",
    "BudgetStatus",
    "CandidateScore",
    "CostEstimate",
    "DecideRequest",
    "DecideResponse",
    "DecisionServiceServicer",
    "DecisionServiceStub",
    "ExclusionCode",
    "ExplainRequest",
    "ExplainResponse",
    "GetBackendRequest",
    "GetBackendResponse",
    "GetBudgetRequest",
    "GetBudgetResponse",
    "GetServerInfoRequest",
    "GetServerInfoResponse",
    "ListBackendsRequest",
    "ListBackendsResponse",
    "Model",
    "Pricing",
    "Priority",
    "PrivacyZone",
    "Queue",
    "RegistryServiceServicer",
    "RegistryServiceStub",
    "Reject",
    "RejectCode",
    "RejectionReason",
    "ReloadConfigRequest",
    "ReloadConfigResponse",
    "RemoveBackendRequest",
    "RemoveBackendResponse",
    "ReportOutcomeRequest",
    "ReportOutcomeResponse",
    "Route",
    "SetBackendStateRequest",
    "SetBackendStateResponse",
    "StageTrace",
    "TierMode",
    "UpsertBackendRequest",
    "UpsertBackendResponse",
    "add_AdminServiceServicer_to_server",
    "add_BudgetServiceServicer_to_server",
    "add_DecisionServiceServicer_to_server",
    "add_RegistryServiceServicer_to_server",
]
