"""The demo fleet validates and holds what the README's Route / Queue / Reject calls need."""

from __future__ import annotations

from pathlib import Path

from nexus_grpc.config.demo import DEMO_LOADING_BACKEND, DEMO_SEED_SPEND_USD, DEMO_TOML, demo_config
from nexus_grpc.config.loader import check_config
from nexus_grpc.config.schema import Config, Policy
from nexus_grpc.domain.backend import BackendConfig
from nexus_grpc.domain.enums import PrivacyZone
from nexus_grpc.domain.money import usd_to_nano


def resolve_chain(config: Config, model: str) -> list[str]:
    chain = [model]
    while chain[-1] in config.routing.aliases:
        chain.append(config.routing.aliases[chain[-1]])
    return chain


def matching_policies(config: Config, chain: list[str]) -> list[Policy]:
    return [p for p in config.routing.policies if any(p.glob.matches(name) for name in chain)]


def serving(config: Config, model: str) -> list[BackendConfig]:
    return [b for b in config.backends if b.model(model) is not None]


def test_demo_validates_cleanly() -> None:
    config = demo_config()
    assert config.source == "<demo>"
    assert config.warnings == ()
    assert len(config.version) == 12
    assert config.ledger.kind == "memory"


def test_demo_toml_is_a_valid_config_file(tmp_path: Path) -> None:
    path = tmp_path / "demo.toml"
    path.write_text(DEMO_TOML)
    config, errors, warnings = check_config(path)
    assert (errors, warnings) == ([], [])
    assert config is not None
    assert config.backends == demo_config().backends


def test_demo_fleet() -> None:
    config = demo_config()
    by_id = {b.id: b for b in config.backends}
    assert list(by_id) == ["gpu-1", "gpu-2", "gpu-loading", "openai", "anthropic"]
    gpu1 = by_id["gpu-1"]
    assert (gpu1.type, gpu1.url, gpu1.zone, gpu1.tier, gpu1.priority) == (
        "ollama",
        "http://127.0.0.1:11434",
        PrivacyZone.RESTRICTED,
        3,
        1,
    )
    big = gpu1.model("llama3:70b")
    assert big is not None
    assert (big.context_length, big.tools, big.json_mode) == (8192, True, True)
    assert gpu1.model("llama3:8b") is not None
    gpu2 = by_id["gpu-2"]
    assert (gpu2.type, gpu2.url, gpu2.tier, gpu2.priority) == ("vllm", "http://127.0.0.1:8000", 2, 10)
    assert [m.id for m in gpu2.models] == ["llama3:8b", "mixtral:8x7b", "qwen2:72b"]
    openai = by_id["openai"]
    assert openai.zone == PrivacyZone.OPEN
    turbo = openai.model("gpt-4-turbo")
    assert turbo is not None
    assert turbo.vision and turbo.tools and turbo.json_mode
    assert openai.model("gpt-3.5-turbo") is not None
    anthropic = by_id["anthropic"]
    assert anthropic.zone == PrivacyZone.OPEN
    assert [m.id for m in anthropic.models] == ["claude-3-haiku-20240307", "claude-3-sonnet-20240229"]
    # tiers vary across the fleet
    assert len({b.tier for b in config.backends}) >= 3


def test_demo_routing_and_budget() -> None:
    config = demo_config()
    assert config.routing.aliases == {
        "gpt-4": "llama3:70b",
        "fast": "llama3:8b",
        "reasoning": "deepseek-r1:70b",
    }
    assert config.routing.fallbacks == {"llama3:70b": ("qwen2:72b",)}
    budget = config.routing.budget
    assert budget is not None
    assert budget.monthly_limit_nano == usd_to_nano(100.0)
    assert budget.soft_limit_percent == 75.0
    assert budget.hard_limit_action == "block_cloud"
    assert budget.tenants == {"team-a": usd_to_nano(20.0)}
    # the seeded spend sits at the soft limit, below the hard limit
    seeded = usd_to_nano(DEMO_SEED_SPEND_USD)
    assert budget.monthly_limit_nano * budget.soft_limit_percent / 100 <= seeded < budget.monthly_limit_nano
    # every open-zone model has a price, so cloud spend is counted
    for backend in config.backends:
        if backend.zone == PrivacyZone.OPEN:
            for model in backend.models:
                assert config.price_for(backend, model.id).input_nano > 0


def test_demo_route_call_gpt_4_goes_to_gpu_1() -> None:
    config = demo_config()
    chain = resolve_chain(config, "gpt-4")
    assert chain == ["gpt-4", "llama3:70b"]
    policies = matching_policies(config, chain)
    assert {p.model_pattern for p in policies} == {"gpt-4*", "llama3:*"}
    min_tier = max(p.min_tier for p in policies)
    assert min_tier == 3
    assert all(p.privacy == PrivacyZone.RESTRICTED for p in policies)
    eligible = [
        b.id for b in serving(config, chain[-1]) if b.zone == PrivacyZone.RESTRICTED and b.tier >= min_tier
    ]
    assert eligible == ["gpu-1"]


def test_demo_queue_call_reasoning_waits_for_the_loading_backend() -> None:
    config = demo_config()
    chain = resolve_chain(config, "reasoning")
    assert chain == ["reasoning", "deepseek-r1:70b"]
    assert [b.id for b in serving(config, "deepseek-r1:70b")] == [DEMO_LOADING_BACKEND]
    assert DEMO_LOADING_BACKEND == "gpu-loading"
    loading = serving(config, "deepseek-r1:70b")[0]
    assert [m.id for m in loading.models] == ["deepseek-r1:70b"]
    assert (loading.type, loading.url, loading.tier) == ("vllm", "http://127.0.0.1:8001", 4)
    assert "deepseek-r1:70b" not in config.routing.fallbacks  # nothing to fall back to: it must Queue
    assert config.queue.enabled


def test_demo_reject_calls() -> None:
    config = demo_config()
    # unknown model -> MODEL_NOT_FOUND
    assert resolve_chain(config, "claude-3-opus") == ["claude-3-opus"]
    assert serving(config, "claude-3-opus") == []
    # gpt-4-turbo is only served in the open zone, but the gpt-4* policy restricts it
    policies = matching_policies(config, resolve_chain(config, "gpt-4-turbo"))
    assert [p.privacy for p in policies] == [PrivacyZone.RESTRICTED]
    assert {b.zone for b in serving(config, "gpt-4-turbo")} == {PrivacyZone.OPEN}
