"""Defaults, normalization, paths, warnings, version and check_config."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from nexus_grpc.config.loader import ConfigError, check_config, load_config, load_config_text
from nexus_grpc.domain.enums import PrivacyZone
from nexus_grpc.domain.money import BUILTIN_PRICES, NANO, Price

FILE = "cfg.toml"
GPU = '[[backends]]\nid = "gpu"\nurl = "http://127.0.0.1:11434"\ntype = "ollama"\n'
NO_FLEET = f"{FILE}: backends: no backends: every request will be rejected"


def test_defaults_of_an_empty_file() -> None:
    c = load_config_text("", source=FILE)
    s = c.server
    assert (s.listen, s.admin_token_env, s.client_token_env) == ("127.0.0.1:50051", "NEXUS_ADMIN_TOKEN", "")
    assert (s.max_concurrent_rpcs, s.max_concurrent_streams, s.drain_seconds, s.grace_seconds) == (
        1024,
        1024,
        5,
        10,
    )
    assert (s.watch_config, s.workers, s.tls) == (False, 1, None)
    r = c.routing
    assert r.strategy == "smart"
    assert (r.weights.priority, r.weights.load, r.weights.latency) == (50, 30, 20)
    assert (r.aliases, r.fallbacks, r.policies, r.budget, r.allow_empty_fleet) == ({}, {}, (), None, False)
    assert c.ledger.kind == "sqlite"
    assert c.ledger.path == Path("nexus-ledger.db")
    assert c.ledger.url == "redis://127.0.0.1:6379/0"
    q = c.quality
    assert (q.error_rate_threshold, q.min_requests, q.window_seconds) == (0.5, 5, 3600)
    assert (q.cooldown_seconds, q.ttft_penalty_threshold_ms) == (30, 3000)
    assert (c.queue.enabled, c.queue.max_wait_ms, c.queue.in_flight_ttl_seconds) == (True, 30000, 300)
    h = c.health_check
    assert (h.enabled, h.interval_seconds, h.timeout_seconds) == (False, 30, 5)
    assert (h.failure_threshold, h.recovery_threshold) == (3, 2)
    assert (c.envoy.read_body, c.envoy.read_response_usage, c.envoy.expose_reasons) == (False, False, "full")
    t = c.telemetry
    assert (t.prometheus_listen, t.otlp_endpoint, t.trace_sample_ratio, t.decision_log) == ("", "", 0.0, "")
    lim = c.limits
    assert (lim.max_message_bytes, lim.max_model_len, lim.max_id_len, lim.max_labels) == (
        4194304,
        256,
        128,
        32,
    )
    assert (lim.max_label_key_len, lim.max_label_value_len, lim.max_tokens) == (64, 256, 10_000_000)
    assert lim.max_charge_usd == 1000.0
    assert c.backends == ()
    assert c.pricing == BUILTIN_PRICES
    assert c.default_price is None
    assert c.warnings == (NO_FLEET,)  # the one warning of an empty file
    assert c.source == FILE


def test_empty_sections_take_defaults() -> None:
    sections = [
        "server",
        "routing",
        "ledger",
        "quality",
        "queue",
        "health_check",
        "envoy",
        "telemetry",
        "limits",
    ]
    text = "\n".join(f"[{name}]" for name in sections)
    assert replace(load_config_text(text), version="") == replace(load_config_text(""), version="")


def test_budget_and_policy_defaults() -> None:
    c = load_config_text('[routing.budget]\n[[routing.policies]]\nmodel_pattern = "x*"', source=FILE)
    budget = c.routing.budget
    assert budget is not None
    assert budget.monthly_limit_nano == 100 * 10**9
    assert budget.soft_limit_percent == 75.0
    assert budget.hard_limit_action == "warn"
    assert budget.reconciliation_interval_secs == 60
    assert budget.require_tenant is False
    assert budget.tenants == {}
    (policy,) = c.routing.policies
    assert policy.model_pattern == "x*"
    assert policy.glob.matches("xyz")
    assert policy.privacy == PrivacyZone.OPEN
    assert policy.min_tier == 0
    assert policy.max_cost_nano is None
    assert policy.fallback_allowed is True


@pytest.mark.parametrize(
    ("backend_type", "zone"),
    [
        ("ollama", PrivacyZone.RESTRICTED),
        ("vllm", PrivacyZone.RESTRICTED),
        ("llamacpp", PrivacyZone.RESTRICTED),
        ("exo", PrivacyZone.RESTRICTED),
        ("lmstudio", PrivacyZone.RESTRICTED),
        ("openai", PrivacyZone.OPEN),
        ("anthropic", PrivacyZone.OPEN),
        ("google", PrivacyZone.OPEN),
    ],
)
def test_backend_defaults_and_zone_by_type(backend_type: str, zone: PrivacyZone) -> None:
    text = (
        f'[[backends]]\nid = "b"\nurl = "http://h:1"\ntype = "{backend_type}"\n[[backends.models]]\nid = "m"'
    )
    (backend,) = load_config_text(text).backends
    assert (backend.id, backend.url, backend.type, backend.zone) == ("b", "http://h:1", backend_type, zone)
    assert (backend.tier, backend.priority, backend.max_concurrency) == (1, 50, 0)
    assert (backend.pricing, backend.health_path, backend.health_headers_env) == (None, "", "")
    (model,) = backend.models
    assert (model.id, model.context_length, model.vision, model.tools, model.json_mode) == (
        "m",
        None,
        False,
        False,
        False,
    )


def test_full_backend() -> None:
    text = """
[[backends]]
id = "g"
url = "https://llm.internal"
type = "generic"
zone = "open"
tier = 4
priority = 0
max_concurrency = 8
health_path = "/healthz"
health_headers_env = "PROBE_HEADERS"
[[backends.models]]
id = "m"
context_length = 4096
vision = true
tools = true
json_mode = true
[backends.pricing]
input_per_1k = 0.002
output_per_1k = 0
"""
    (b,) = load_config_text(text).backends
    assert (b.type, b.zone, b.tier, b.priority, b.max_concurrency) == ("generic", PrivacyZone.OPEN, 4, 0, 8)
    assert (b.health_path, b.health_headers_env) == ("/healthz", "PROBE_HEADERS")
    assert b.pricing == Price(2000, 0)
    assert b.models[0].context_length == 4096
    assert b.models[0].vision and b.models[0].tools and b.models[0].json_mode


def test_zone_overrides_the_type() -> None:
    text = '[[backends]]\nid = "b"\nurl = "http://h"\ntype = "ollama"\nzone = "open"'
    assert load_config_text(text).backends[0].zone == PrivacyZone.OPEN


def test_enums_and_zones_are_case_insensitive() -> None:
    text = """
[routing]
strategy = "Round_Robin"
[[routing.policies]]
model_pattern = "a"
privacy = "RESTRICTED"
[[routing.policies]]
model_pattern = "b"
privacy = "Unrestricted"
[routing.budget]
hard_limit_action = "Block_Cloud"
[ledger]
kind = "MEMORY"
[envoy]
expose_reasons = "Summary"
[[backends]]
id = "b"
url = "http://h"
type = "Generic"
zone = "Restricted"
"""
    c = load_config_text(text)
    assert c.routing.strategy == "round_robin"
    assert [p.privacy for p in c.routing.policies] == [PrivacyZone.RESTRICTED, PrivacyZone.OPEN]
    assert c.routing.budget is not None
    assert c.routing.budget.hard_limit_action == "block_cloud"
    assert c.ledger.kind == "memory"
    assert c.envoy.expose_reasons == "summary"
    assert (c.backends[0].type, c.backends[0].zone) == ("generic", PrivacyZone.RESTRICTED)


def test_integers_where_floats_are_expected_and_fractional_durations() -> None:
    text = """
[server]
drain_seconds = 0.25
grace_seconds = 1
[routing.budget]
monthly_limit_usd = 50
soft_limit_percent = 80
reconciliation_interval_secs = 0.5
[routing.budget.tenants]
"team-a" = 20
"team-b" = 2.5
[[routing.policies]]
model_pattern = "x"
max_cost_per_request = 1
[quality]
error_rate_threshold = 1
window_seconds = 0.5
cooldown_seconds = 0
[queue]
in_flight_ttl_seconds = 1.5
[health_check]
interval_seconds = 0.05
timeout_seconds = 0.02
[telemetry]
trace_sample_ratio = 0
[pricing."m"]
input_per_1k = 1
output_per_1k = 2
"""
    c = load_config_text(text)
    assert (c.server.drain_seconds, c.server.grace_seconds) == (0.25, 1.0)
    assert isinstance(c.server.grace_seconds, float)
    budget = c.routing.budget
    assert budget is not None
    assert budget.monthly_limit_nano == 50_000_000_000
    assert budget.soft_limit_percent == 80.0
    assert budget.reconciliation_interval_secs == 0.5
    assert budget.tenants == {"team-a": 20_000_000_000, "team-b": 2_500_000_000}
    assert c.routing.policies[0].max_cost_nano == NANO
    assert (c.quality.error_rate_threshold, c.quality.window_seconds, c.quality.cooldown_seconds) == (
        1.0,
        0.5,
        0.0,
    )
    assert c.queue.in_flight_ttl_seconds == 1.5
    assert (c.health_check.interval_seconds, c.health_check.timeout_seconds) == (0.05, 0.02)
    assert c.telemetry.trace_sample_ratio == 0.0
    assert isinstance(c.telemetry.trace_sample_ratio, float)
    assert c.pricing["m"] == Price(1_000_000, 2_000_000)


def test_money_is_exact_nano_usd() -> None:
    text = """
[routing.budget]
monthly_limit_usd = 0.1
[routing.budget.tenants]
"t" = 0.3
[[routing.policies]]
model_pattern = "x"
max_cost_per_request = 0.05
[pricing."gpt-4-turbo"]
input_per_1k = 0.02
output_per_1k = 0.04
[pricing.default]
input_per_1k = 0.005
output_per_1k = 0.015
"""
    c = load_config_text(text)
    assert c.routing.budget is not None
    assert c.routing.budget.monthly_limit_nano == 100_000_000
    assert c.routing.budget.tenants == {"t": 300_000_000}
    assert c.routing.policies[0].max_cost_nano == 50_000_000
    assert c.pricing["gpt-4-turbo"] == Price(20_000, 40_000)  # overrides the built-in price
    assert c.pricing["gpt-4"] == BUILTIN_PRICES["gpt-4"]  # the rest of the built-ins stay
    assert c.default_price == Price(5_000, 15_000)


def test_aliases_fallbacks_weights() -> None:
    text = """
[routing.weights]
priority = 100
load = 0
latency = 0
[routing.aliases]
"gpt-4" = "llama3:70b"
[routing.fallbacks]
"llama3:70b" = ["qwen2:72b", "mixtral:8x7b"]
"""
    r = load_config_text(text).routing
    assert (r.weights.priority, r.weights.load, r.weights.latency) == (100, 0, 0)
    assert r.aliases == {"gpt-4": "llama3:70b"}
    assert r.fallbacks == {"llama3:70b": ("qwen2:72b", "mixtral:8x7b")}


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, files: Path) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "tls").mkdir(parents=True)
    for name, source in (
        ("server.pem", "server.pem"),
        ("server.key", "server.key"),
        ("ca.pem", "server.pem"),
    ):
        (conf_dir / "tls" / name).write_bytes((files / source).read_bytes())
    absolute = tmp_path / "abs.db"
    path = conf_dir / "nexus.toml"
    path.write_text(
        """
[server.tls]
cert = "tls/server.pem"
key = "tls/server.key"
client_ca = "tls/ca.pem"
[ledger]
path = "data/ledger.db"
"""
    )
    c = load_config(path)
    assert c.server.tls is not None
    assert c.server.tls.cert == conf_dir / "tls" / "server.pem"
    assert c.server.tls.key == conf_dir / "tls" / "server.key"
    assert c.server.tls.client_ca == conf_dir / "tls" / "ca.pem"
    assert c.ledger.path == conf_dir / "data" / "ledger.db"

    path.write_text(f'[ledger]\npath = "{absolute}"')
    c = load_config(path)
    assert c.ledger.path == absolute
    assert load_config(path.parent / ".." / "etc" / "nexus.toml").ledger.path == absolute

    path.write_text("")
    assert load_config(path).ledger.path == conf_dir / "nexus-ledger.db"  # the default too
    assert load_config(path).server.tls is None


def test_tls_without_client_ca(files: Path) -> None:
    text = '[server.tls]\ncert = "server.pem"\nkey = "server.key"\nclient_ca = ""'
    c = load_config_text(text, base_dir=files)
    assert c.server.tls is not None
    assert c.server.tls.client_ca is None


def test_version_and_source(tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    content = b'[server]\nlisten = "127.0.0.1:0"\n'
    path.write_bytes(content)
    c = load_config(path)
    assert c.version == hashlib.sha256(content).hexdigest()[:12]
    assert c.source == str(path)
    assert load_config(str(path)).source == str(path)
    assert c.server.listen == "127.0.0.1:0"
    assert load_config_text(content.decode()).version == c.version


def test_listen_addresses() -> None:
    for listen in ("0.0.0.0:50051", "[::]:50051", "localhost:1", "127.0.0.1:0"):
        assert load_config_text(f'[server]\nlisten = "{listen}"').server.listen == listen


def test_tracing_settings() -> None:
    loaded = load_config_text(
        '[telemetry]\notlp_endpoint = "http://127.0.0.1:4318"\ntrace_sample_ratio = 0.5'
    )
    assert (loaded.telemetry.otlp_endpoint, loaded.telemetry.trace_sample_ratio) == (
        "http://127.0.0.1:4318",
        0.5,
    )
    for bad in ("127.0.0.1:4318", "http://[::1", "grpc://collector:4317", "http://collector:4318?x=1"):
        with pytest.raises(ConfigError) as info:
            load_config_text(f'[telemetry]\notlp_endpoint = "{bad}"', source="n.toml")
        assert "n.toml: telemetry.otlp_endpoint:" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (issue,) = info.value.issues
    assert issue.file == str(missing)
    assert "cannot read" in issue.problem


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[server]\nlisten = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not UTF-8" in str(info.value)


# ---- warnings ----------------------------------------------------------------------------


def test_warn_action_with_a_limit_is_never_enforced() -> None:
    c = load_config_text(
        GPU + '[routing.budget]\nmonthly_limit_usd = 10\n[routing.budget.tenants]\n"t" = 1', source=FILE
    )
    (warning,) = c.warnings
    assert warning.startswith(f"{FILE}: routing.budget.hard_limit_action: ")
    assert "never enforced" in warning
    assert "routing.budget.monthly_limit_usd" in warning
    assert 'routing.budget.tenants."t"' in warning


def test_warn_action_tenant_limit_only() -> None:
    c = load_config_text(
        GPU + '[routing.budget]\nmonthly_limit_usd = 0\n[routing.budget.tenants]\n"t" = 1', source=FILE
    )
    (warning,) = c.warnings
    assert 'routing.budget.tenants."t"' in warning
    assert "monthly_limit_usd" not in warning


@pytest.mark.parametrize(
    "text",
    [
        "[routing.budget]\nmonthly_limit_usd = 0",  # no limit configured
        '[routing.budget]\nhard_limit_action = "block_all"',  # enforced
        '[routing.budget]\nhard_limit_action = "block_cloud"',
    ],
)
def test_no_budget_warning(text: str) -> None:
    assert load_config_text(GPU + text).warnings == ()


def test_fallback_model_that_no_backend_declares() -> None:
    text = """
[routing.fallbacks]
"llama3:70b" = ["qwen2:72b", "mixtral:8x7b"]
[[backends]]
id = "gpu"
url = "http://127.0.0.1:8000"
type = "vllm"
[[backends.models]]
id = "mixtral:8x7b"
"""
    c = load_config_text(text, source=FILE)
    assert c.warnings == (
        f"{FILE}: routing.fallbacks.\"llama3:70b\"[0]: fallback model 'qwen2:72b' is declared by no backend",
    )


# ---- check_config --------------------------------------------------------------------------


def test_check_config_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(
        '[routing.budget]\nmonthly_limit_usd = 5\n[[backends]]\nid = "a"\nurl = "http://h"\ntype = "exo"'
    )
    config, errors, warnings = check_config(path)
    assert config is not None
    assert errors == []
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: routing.budget.hard_limit_action: ")


def test_check_config_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[routing]\nstrategy = "fastest"\n[queue]\nmax_wait = 1\n')
    config, errors, warnings = check_config(path)
    assert config is None
    assert warnings == []
    assert errors == [
        f"{path}: routing.strategy: 'fastest' is not one of: smart, round_robin, priority_only, random",
        f"{path}: queue.max_wait: unknown key; did you mean 'max_wait_ms'?",
    ]


def test_check_config_missing_file(tmp_path: Path) -> None:
    config, errors, _ = check_config(tmp_path / "none.toml")
    assert config is None
    assert len(errors) == 1
    assert "cannot read" in errors[0]


# ---- ranges, new keys and files that are fine -------------------------------------------------

# Values at the edges of their documented ranges load (the ranges are inclusive).
ACCEPTED = {
    "rpcs and streams at the top": "[server]\nmax_concurrent_rpcs = 65536\nmax_concurrent_streams = 65536",
    "drain and grace at an hour": "[server]\ndrain_seconds = 3600\ngrace_seconds = 3600",
    "drain and grace at 0": "[server]\ndrain_seconds = 0\ngrace_seconds = 0",
    "in-flight ttl bounds": "[queue]\nin_flight_ttl_seconds = 604800",
    "in-flight ttl at 1": "[queue]\nin_flight_ttl_seconds = 1",
    "max wait at an hour": "[queue]\nmax_wait_ms = 3600000",
    "message bytes bounds": "[limits]\nmax_message_bytes = 67108864\nmax_model_len = 1024\nmax_id_len = 1024",
    "limits at the bottom": (
        "[limits]\nmax_message_bytes = 1024\nmax_labels = 0\nmax_tokens = 1\nmax_charge_usd = 0.000001"
    ),
    "limits at the top": "[limits]\nmax_labels = 1024\nmax_label_value_len = 65536\nmax_tokens = 4294967295",
    "max charge at the top": "[limits]\nmax_charge_usd = 1000000",
    "monthly limit at the top": (
        '[routing.budget]\nmonthly_limit_usd = 1e9\n[routing.budget.tenants]\n"t" = 1e9'
    ),
    "one nano-USD": '[routing.budget]\nmonthly_limit_usd = 0.000000001\n[routing.budget.tenants]\n"t" = 1e-9',
    "zero is no limit": '[routing.budget]\nmonthly_limit_usd = 0\n[routing.budget.tenants]\n"t" = 0',
    "built-in prices are not held to max_model_len": "[limits]\nmax_model_len = 16",
    "cost cap 0 means free only": '[[routing.policies]]\nmodel_pattern = "x"\nmax_cost_per_request = 0',
    "cost cap at the top": '[[routing.policies]]\nmodel_pattern = "x"\nmax_cost_per_request = 1000000',
    "price at the top with few tokens": (
        '[limits]\nmax_tokens = 4000000\n[pricing."m"]\ninput_per_1k = 1000\noutput_per_1k = 1000'
    ),
    "durations at the top": (
        "[quality]\nwindow_seconds = 604800\ncooldown_seconds = 86400\nttft_penalty_threshold_ms = 3600000\n"
        "min_requests = 1000000\n[health_check]\ninterval_seconds = 86400\ntimeout_seconds = 3600\n"
        "failure_threshold = 1000\nrecovery_threshold = 1000\n"
        "[routing.budget]\nreconciliation_interval_secs = 86400"
    ),
    "unix socket listen": '[server]\nlisten = "unix:/run/nexus.sock"',
    "ipv6 listen": '[server]\nlisten = "[::1]:50051"\n[telemetry]\nprometheus_listen = "[::]:9464"',
    "hostname listen": '[telemetry]\nprometheus_listen = "metrics.internal:9464"',
    "redis urls": '[ledger]\nkind = "memory"\nurl = "rediss://:secret@redis.internal:6380/2"',
    "unicode model names": (
        '[routing.aliases]\n"modèle" = "llama3:70b"\n[routing.fallbacks]\n"org/m:tag" = ["ölm"]'
    ),
    "backend url with a path": '[[backends]]\nid = "b"\nurl = "https://[2001:db8::1]:8443/v1"\ntype = "vllm"',
}


@pytest.mark.parametrize("text", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_values_at_the_edges_of_their_ranges_load(text: str, tmp_path: Path) -> None:
    load_config_text(text, source=FILE, base_dir=tmp_path)


def test_money_at_one_nano_usd() -> None:
    text = '[routing.budget]\nmonthly_limit_usd = 0.000000001\n[routing.budget.tenants]\n"t" = 2e-9'
    budget = load_config_text(text).routing.budget
    assert budget is not None
    assert (budget.monthly_limit_nano, budget.tenants) == (1, {"t": 2})


def test_new_keys() -> None:
    text = (
        "[server]\nmax_concurrent_streams = 8\n[routing]\nallow_empty_fleet = true\n"
        "[limits]\nmax_charge_usd = 2.5"
    )
    c = load_config_text(text, source=FILE)
    assert (c.server.max_concurrent_streams, c.server.max_concurrent_rpcs) == (8, 1024)
    assert c.routing.allow_empty_fleet is True
    assert c.limits.max_charge_usd == 2.5
    assert c.warnings == (NO_FLEET,)  # allowed, still worth a warning


def test_no_fleet_warning_with_a_backend() -> None:
    assert load_config_text(GPU).warnings == ()


def test_ledger_files_that_are_fine(files: Path, tmp_path: Path) -> None:
    for path in ("ledger.db", "empty.db", str(tmp_path / "new" / "deeper" / "ledger.db"), "fresh.db"):
        assert load_config_text(f'[ledger]\npath = "{path}"', base_dir=files).ledger.path == files / path
    # the memory ledger never opens its path, so it is not checked
    assert (
        load_config_text('[ledger]\nkind = "memory"\npath = "adir"', base_dir=files).ledger.kind == "memory"
    )
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_decision_logs_that_are_fine(files: Path, tmp_path: Path) -> None:
    existing = tmp_path / "decisions.jsonl"
    existing.write_text("")
    for value, expected in (
        ("-", "-"),
        ("", ""),
        (str(existing), str(existing)),
        ("new.jsonl", str(files / "new.jsonl")),
    ):
        assert (
            load_config_text(f'[telemetry]\ndecision_log = "{value}"', base_dir=files).telemetry.decision_log
            == expected
        )


def test_tls_with_a_client_ca(files: Path) -> None:
    text = '[server.tls]\ncert = "server.pem"\nkey = "server.key"\nclient_ca = "server.pem"'
    tls = load_config_text(text, base_dir=files).server.tls
    assert tls is not None
    assert tls.client_ca == files / "server.pem"


def test_key_paths_escape_what_a_terminal_would_not_show() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text('[routing.aliases]\n"a\\u202eb" = "x"', source=FILE)
    assert str(info.value) == (
        f'{FILE}: routing.aliases."a\\u202eb": must not contain the invisible or control character U+202E'
    )
