"""Backend configuration values."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_grpc.domain.enums import PrivacyZone
from nexus_grpc.domain.money import Price

# The path a health probe asks, by backend type (others: DEFAULT_PROBE_PATH).
PROBE_PATHS = {"ollama": "/api/tags", "llamacpp": "/health"}
DEFAULT_PROBE_PATH = "/v1/models"

RESTRICTED_TYPES = frozenset({"ollama", "vllm", "llamacpp", "exo", "lmstudio"})
OPEN_TYPES = frozenset({"openai", "anthropic", "google"})
BACKEND_TYPES = RESTRICTED_TYPES | OPEN_TYPES | {"generic"}


def default_zone(backend_type: str) -> PrivacyZone:
    if backend_type in RESTRICTED_TYPES:
        return PrivacyZone.RESTRICTED
    if backend_type in OPEN_TYPES:
        return PrivacyZone.OPEN
    return PrivacyZone.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    context_length: int | None = None  # None = unlimited
    vision: bool = False
    tools: bool = False
    json_mode: bool = False


@dataclass(frozen=True, slots=True)
class BackendConfig:
    id: str
    url: str
    type: str
    zone: PrivacyZone
    tier: int = 1
    priority: int = 50
    max_concurrency: int = 0
    pricing: Price | None = None
    models: tuple[ModelSpec, ...] = ()
    health_path: str = ""
    health_headers_env: str = ""

    def model(self, model_id: str) -> ModelSpec | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None


def probe_path(backend: BackendConfig) -> str | None:
    """The path probed on this backend, or None when it is not probed: `health_path` if set;
    cloud APIs (open zone) only with one; else by type."""
    if backend.health_path:
        return backend.health_path
    if backend.zone == PrivacyZone.OPEN:
        return None
    return PROBE_PATHS.get(backend.type, DEFAULT_PROBE_PATH)
