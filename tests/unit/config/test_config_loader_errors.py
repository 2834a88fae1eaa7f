"""Every configuration error names the file, the key path and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_grpc.config import _reader
from nexus_grpc.config.errors import ConfigError, ConfigIssue
from nexus_grpc.config.loader import load_config_text

FILE = "cfg.toml"

GPU = """
[[backends]]
id = "gpu"
url = "http://127.0.0.1:11434"
type = "ollama"
[[backends.models]]
id = "llama3:70b"
"""


def with_backend(lines: str) -> str:
    """GPU with `lines` added to the backend (before its model)."""
    return GPU.replace('type = "ollama"', f'type = "ollama"\n{lines}')


OPENAI = """
[[backends]]
id = "cloud"
url = "https://api.openai.com"
type = "openai"
[[backends.models]]
id = "gpt-4-turbo"
"""


def issues_of(text: str, base_dir: Path | None = None) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source=FILE, base_dir=base_dir)
    return info.value.issues


def assert_issue(issues: tuple[ConfigIssue, ...], key_path: str, words: str | tuple[str, ...]) -> None:
    wanted = (words,) if isinstance(words, str) else words
    for issue in issues:
        if issue.key_path == key_path and all(word in issue.problem for word in wanted):
            assert issue.file == FILE
            assert str(issue).startswith(f"{FILE}: {key_path}: ")
            return
    listing = "\n".join(str(i) for i in issues)
    raise AssertionError(f"no issue at {key_path!r} containing {wanted!r}; got:\n{listing}")


# name -> (toml, key path, words the problem contains: one string or a tuple of them).
# Phase 2 (types, ranges, unknown keys) first, then phase 3 (cross-references and files). Relative
# paths are relative to the `files` fixture's directory (see conftest.py).
ERRORS: dict[str, tuple[str, str, str | tuple[str, ...]]] = {
    # unknown keys, at every level
    "unknown top-level": ("colour = 1", "colour", "unknown key"),
    "unknown section key": ("[server]\nport = 1", "server.port", "unknown key"),
    "unknown weight": ("[routing.weights]\nspeed = 0", "routing.weights.speed", "unknown key"),
    "unknown tls key": ('[server.tls]\ncert="a"\nkey="b"\nca="c"', "server.tls.ca", "unknown key"),
    "unknown policy key": (
        '[[routing.policies]]\nmodel_pattern="x"\nzone="restricted"',
        "routing.policies[0].zone",
        "unknown key",
    ),
    "unknown budget key": ("[routing.budget]\nlimit = 5", "routing.budget.limit", "unknown key"),
    "unknown backend key": (
        GPU.replace('type = "ollama"', 'type = "ollama"\nweight = 1'),
        "backends[0].weight",
        "unknown key",
    ),
    "unknown model key": (GPU + "size = 70", "backends[0].models[0].size", "unknown key"),
    "unknown backend pricing key": (
        GPU.replace(
            "[[backends.models]]",
            "[backends.pricing]\ninput_per_1k=0\noutput_per_1k=0\ncurrency='usd'\n[[backends.models]]",
        ),
        "backends[0].pricing.currency",
        "unknown key",
    ),
    "unknown price key": (
        '[pricing."m"]\ninput_per_1k=1\noutput_per_1k=1\nunit=1',
        'pricing."m".unit',
        "unknown key",
    ),
    "unknown ledger key": ("[ledger]\nfile = 'x'", "ledger.file", "unknown key"),
    "unknown quality key": ("[quality]\nx = 1", "quality.x", "unknown key"),
    "unknown queue key": ("[queue]\nx = 1", "queue.x", "unknown key"),
    "unknown health key": ("[health_check]\nx = 1", "health_check.x", "unknown key"),
    "unknown envoy key": ("[envoy]\nx = 1", "envoy.x", "unknown key"),
    "unknown telemetry key": ("[telemetry]\nx = 1", "telemetry.x", "unknown key"),
    "unknown limits key": ("[limits]\nx = 1", "limits.x", "unknown key"),
    "unknown quoted key": ('[server]\n"a b" = 1', 'server."a b"', "unknown key"),
    # wrong types
    "string expected": ("[server]\nlisten = 50051", "server.listen", "expected a string, got an integer"),
    "integer expected": ('[server]\nworkers = "2"', "server.workers", "expected an integer, got a string"),
    "bool is not an integer": (
        "[server]\nworkers = true",
        "server.workers",
        "expected an integer, got a boolean",
    ),
    "float is not an integer": (
        "[routing.weights]\npriority = 50.0",
        "routing.weights.priority",
        "expected an integer",
    ),
    "boolean expected": ("[server]\nwatch_config = 1", "server.watch_config", "expected a boolean"),
    "string is not a boolean": ('[queue]\nenabled = "true"', "queue.enabled", "expected a boolean"),
    "number expected": (
        '[server]\ndrain_seconds = "5s"',
        "server.drain_seconds",
        "expected a number, got a string",
    ),
    "bool is not a number": (
        "[quality]\nerror_rate_threshold = true",
        "quality.error_rate_threshold",
        "expected a number",
    ),
    "nan": ("[telemetry]\ntrace_sample_ratio = nan", "telemetry.trace_sample_ratio", "not a finite number"),
    "inf": (
        "[routing.budget]\nmonthly_limit_usd = inf",
        "routing.budget.monthly_limit_usd",
        "not a finite number",
    ),
    "section not a table": ("server = 1", "server", "expected a table, got an integer"),
    "sub-table not a table": ("[routing]\nbudget = 5", "routing.budget", "expected a table"),
    "policies not an array": ("[routing]\npolicies = 1", "routing.policies", "expected an array of tables"),
    "backends not an array": ("backends = 1", "backends", "expected an array of tables"),
    "models item not a table": (
        '[[backends]]\nid="a"\nurl="http://h"\ntype="vllm"\nmodels = [1]',
        "backends[0].models[0]",
        "expected a table",
    ),
    "alias target type": (
        '[routing.aliases]\n"gpt-4" = 1',
        'routing.aliases."gpt-4"',
        "expected a model name",
    ),
    "fallback not a list": ('[routing.fallbacks]\n"a" = "b"', 'routing.fallbacks."a"', "expected an array"),
    "fallback entry type": (
        '[routing.fallbacks]\n"a" = ["b", 1]',
        'routing.fallbacks."a"[1]',
        "expected a model name",
    ),
    "tenant limit type": (
        '[routing.budget.tenants]\n"team-a" = "20"',
        'routing.budget.tenants."team-a"',
        "expected a monthly limit",
    ),
    "price entry not a table": ('[pricing]\n"m" = 1', 'pricing."m"', "expected a table"),
    "price type": (
        '[pricing.m]\ninput_per_1k="1"\noutput_per_1k=1',
        'pricing."m".input_per_1k',
        "expected a number",
    ),
    "backend type type": (GPU.replace('"ollama"', "1"), "backends[0].type", "expected a string"),
    # required and empty values
    "backend id missing": (GPU.replace('id = "gpu"', ""), "backends[0].id", "required key is missing"),
    "backend url missing": (
        GPU.replace('url = "http://127.0.0.1:11434"', ""),
        "backends[0].url",
        "required key is missing",
    ),
    "backend type missing": (
        GPU.replace('type = "ollama"', ""),
        "backends[0].type",
        "required key is missing",
    ),
    "backend id empty": (GPU.replace('id = "gpu"', 'id = ""'), "backends[0].id", "must not be empty"),
    "backend id whitespace": (
        GPU.replace('id = "gpu"', 'id = "gpu 1"'),
        "backends[0].id",
        "must not contain a space",
    ),
    "model id missing": (
        GPU.replace('id = "llama3:70b"', "vision = true"),
        "backends[0].models[0].id",
        "required key is missing",
    ),
    "policy pattern missing": (
        "[[routing.policies]]\nmin_tier = 2",
        "routing.policies[0].model_pattern",
        "required key is missing",
    ),
    "tls cert missing": ('[server.tls]\nkey = "k"', "server.tls.cert", "required key is missing"),
    "alias target empty": ('[routing.aliases]\n"a" = ""', 'routing.aliases."a"', "must not be empty"),
    "tenant name empty": (
        '[routing.budget.tenants]\n"" = 1',
        'routing.budget.tenants.""',
        "must not be empty",
    ),
    # ranges
    "tier 0": (
        GPU.replace('type = "ollama"', 'type = "ollama"\ntier = 0'),
        "backends[0].tier",
        "out of range (must be 1..5)",
    ),
    "tier 6": (
        GPU.replace('type = "ollama"', 'type = "ollama"\ntier = 6'),
        "backends[0].tier",
        "must be 1..5",
    ),
    "priority 101": (
        GPU.replace('type = "ollama"', 'type = "ollama"\npriority = 101'),
        "backends[0].priority",
        "must be 0..100",
    ),
    "priority -1": (
        GPU.replace('type = "ollama"', 'type = "ollama"\npriority = -1'),
        "backends[0].priority",
        "must be 0..100",
    ),
    "max_concurrency -1": (
        GPU.replace('type = "ollama"', 'type = "ollama"\nmax_concurrency = -1'),
        "backends[0].max_concurrency",
        "must be 0..1000000",
    ),
    "context_length 0": (
        GPU + "context_length = 0",
        "backends[0].models[0].context_length",
        "at least 1; leave it out for unlimited",
    ),
    "policy min_tier 0": (
        '[[routing.policies]]\nmodel_pattern="x"\nmin_tier=0',
        "routing.policies[0].min_tier",
        "must be 1..5",
    ),
    "policy min_tier 6": (
        '[[routing.policies]]\nmodel_pattern="x"\nmin_tier=6',
        "routing.policies[0].min_tier",
        "must be 1..5",
    ),
    "negative cost cap": (
        '[[routing.policies]]\nmodel_pattern="x"\nmax_cost_per_request=-0.1',
        "routing.policies[0].max_cost_per_request",
        "must be 0..1000000",
    ),
    "weight over 100": (
        "[routing.weights]\npriority=0\nload=0\nlatency=101",
        "routing.weights.latency",
        "must be 0..100",
    ),
    "weight negative": ("[routing.weights]\npriority=-10", "routing.weights.priority", "must be 0..100"),
    "weights sum": ("[routing.weights]\npriority = 60", "routing.weights", "must sum to 100, got 110"),
    "soft limit over 100": (
        "[routing.budget]\nsoft_limit_percent = 100.5",
        "routing.budget.soft_limit_percent",
        "0..100",
    ),
    "soft limit negative": (
        "[routing.budget]\nsoft_limit_percent = -1",
        "routing.budget.soft_limit_percent",
        "0..100",
    ),
    "negative monthly limit": (
        "[routing.budget]\nmonthly_limit_usd = -1",
        "routing.budget.monthly_limit_usd",
        "must be 0..1000000000",
    ),
    "negative tenant limit": (
        '[routing.budget.tenants]\n"t" = -5',
        'routing.budget.tenants."t"',
        "out of range",
    ),
    "error rate over 1": (
        "[quality]\nerror_rate_threshold = 1.5",
        "quality.error_rate_threshold",
        "must be 0..1",
    ),
    "error rate negative": ("[quality]\nerror_rate_threshold = -0.1", "quality.error_rate_threshold", "0..1"),
    "sample ratio over 1": ("[telemetry]\ntrace_sample_ratio = 2", "telemetry.trace_sample_ratio", "0..1"),
    "window 0": ("[quality]\nwindow_seconds = 0", "quality.window_seconds", "greater than 0"),
    "cooldown negative": ("[quality]\ncooldown_seconds = -1", "quality.cooldown_seconds", "must be 0..86400"),
    "min_requests 0": ("[quality]\nmin_requests = 0", "quality.min_requests", "must be 1..1000000"),
    "ttft threshold 0": (
        "[quality]\nttft_penalty_threshold_ms = 0",
        "quality.ttft_penalty_threshold_ms",
        "must be 1..3600000",
    ),
    "interval negative": (
        "[health_check]\ninterval_seconds = -1",
        "health_check.interval_seconds",
        "greater than 0",
    ),
    "timeout 0": ("[health_check]\ntimeout_seconds = 0", "health_check.timeout_seconds", "greater than 0"),
    "failure threshold 0": (
        "[health_check]\nfailure_threshold = 0",
        "health_check.failure_threshold",
        "must be 1..1000",
    ),
    "reconciliation 0": (
        "[routing.budget]\nreconciliation_interval_secs = 0",
        "routing.budget.reconciliation_interval_secs",
        "greater than 0",
    ),
    "in-flight ttl 0": (
        "[queue]\nin_flight_ttl_seconds = 0",
        "queue.in_flight_ttl_seconds",
        "must be 1..604800",
    ),
    "max wait 0": ("[queue]\nmax_wait_ms = 0", "queue.max_wait_ms", "must be 1.."),
    "drain negative": ("[server]\ndrain_seconds = -1", "server.drain_seconds", "must be 0..3600"),
    "workers 0": ("[server]\nworkers = 0", "server.workers", "must be 1..1024"),
    "max rpcs 0": ("[server]\nmax_concurrent_rpcs = 0", "server.max_concurrent_rpcs", "must be 1..65536"),
    "limits 0": ("[limits]\nmax_model_len = 0", "limits.max_model_len", "must be 1..1024"),
    "negative price": (
        "[pricing.m]\ninput_per_1k=-1\noutput_per_1k=1",
        'pricing."m".input_per_1k',
        "must be 0..1000",
    ),
    # addresses and URLs
    "port too big": ('[server]\nlisten = "127.0.0.1:70000"', "server.listen", "port in 0..65535"),
    "no port": ('[server]\nlisten = "localhost"', "server.listen", "host:port"),
    "no host": ('[server]\nlisten = ":50051"', "server.listen", "host:port"),
    "bad prometheus port": (
        '[telemetry]\nprometheus_listen = "0.0.0.0:http"',
        "telemetry.prometheus_listen",
        "host:port",
    ),
    "backend url scheme": (
        GPU.replace("http://127.0.0.1:11434", "ftp://host"),
        "backends[0].url",
        "http:// or https://",
    ),
    "backend url host": (
        GPU.replace("http://127.0.0.1:11434", "http://"),
        "backends[0].url",
        "has no host",
    ),
    "health path": (
        GPU.replace('type = "ollama"', 'type = "ollama"\nhealth_path = "health"'),
        "backends[0].health_path",
        "start with '/'",
    ),
    "redis url": (
        '[ledger]\nurl = "http://127.0.0.1:6379"',
        "ledger.url",
        "must start with one of redis://, rediss://, unix://",
    ),
    # enums
    "strategy": (
        '[routing]\nstrategy = "fastest"',
        "routing.strategy",
        "not one of: smart, round_robin, priority_only, random",
    ),
    "hard limit action": (
        '[routing.budget]\nhard_limit_action = "explode"',
        "routing.budget.hard_limit_action",
        "not one of",
    ),
    "ledger kind": ('[ledger]\nkind = "postgres"', "ledger.kind", "not one of: memory, sqlite, redis"),
    "expose reasons": (
        '[envoy]\nexpose_reasons = "none"',
        "envoy.expose_reasons",
        "not one of: full, summary",
    ),
    "policy privacy": (
        '[[routing.policies]]\nmodel_pattern="x"\nprivacy="open"',
        "routing.policies[0].privacy",
        "not one of: restricted, unrestricted",
    ),
    "backend zone": (
        GPU.replace('type = "ollama"', 'type = "ollama"\nzone = "private"'),
        "backends[0].zone",
        "not one of: restricted, open",
    ),
    "enum type": ("[routing]\nstrategy = 1", "routing.strategy", "expected a string"),
    # ---- phase 3 ----
    "duplicate backend id": (
        GPU + GPU,
        "backends[1].id",
        "duplicate backend id 'gpu' (first at backends[0])",
    ),
    "duplicate model": (
        GPU + '[[backends.models]]\nid = "llama3:70b"',
        "backends[0].models[1].id",
        "duplicate model",
    ),
    "unknown type": (GPU.replace('"ollama"', '"tgi"'), "backends[0].type", "unknown backend type 'tgi'"),
    "generic without zone": (
        GPU.replace('"ollama"', '"generic"'),
        "backends[0].zone",
        "generic backend needs zone",
    ),
    "backend pricing input only": (
        GPU.replace("[[backends.models]]", "[backends.pricing]\ninput_per_1k = 0.01\n[[backends.models]]"),
        "backends[0].pricing",
        "needs both input_per_1k and output_per_1k; output_per_1k is missing",
    ),
    "backend pricing output only": (
        GPU.replace("[[backends.models]]", "[backends.pricing]\noutput_per_1k = 0.01\n[[backends.models]]"),
        "backends[0].pricing",
        "input_per_1k is missing",
    ),
    "price table entry one key": (
        '[pricing."gpt-5"]\ninput_per_1k = 0.01',
        'pricing."gpt-5"',
        "output_per_1k is missing",
    ),
    "default price one key": (
        "[pricing.default]\noutput_per_1k = 0.01",
        "pricing.default",
        "input_per_1k is missing",
    ),
    "price finer than nano": (
        '[pricing."m"]\ninput_per_1k = 0.0000001\noutput_per_1k = 0.01',
        'pricing."m".input_per_1k',
        "finer than 1e-9 USD per token",
    ),
    "backend price finer than nano": (
        GPU.replace(
            "[[backends.models]]",
            "[backends.pricing]\ninput_per_1k=0\noutput_per_1k=1.0000001\n[[backends.models]]",
        ),
        "backends[0].pricing.output_per_1k",
        "finer than 1e-9",
    ),
    "unbalanced [": (
        '[[routing.policies]]\nmodel_pattern = "gpt-[4"',
        "routing.policies[0].model_pattern",
        "unbalanced '['",
    ),
    "unbalanced {": (
        '[[routing.policies]]\nmodel_pattern = "{gpt,claude"',
        "routing.policies[0].model_pattern",
        "unbalanced '{'",
    ),
    "nested {": (
        '[[routing.policies]]\nmodel_pattern = "{a,{b,c}}"',
        "routing.policies[0].model_pattern",
        "nested '{'",
    ),
    "alias cycle": (
        '[routing.aliases]\n"a" = "b"\n"b" = "a"',
        'routing.aliases."a"',
        "alias cycle: a -> b -> a",
    ),
    "alias self": ('[routing.aliases]\n"a" = "a"', 'routing.aliases."a"', "alias cycle: a -> a"),
    "alias chain over 3 hops": (
        '[routing.aliases]\n"a" = "b"\n"b" = "c"\n"c" = "d"\n"d" = "e"',
        'routing.aliases."a"',
        "alias chain a -> b -> c -> d -> e has 4 hops; at most 3",
    ),
    "alias shadows served model": (
        GPU + '[routing.aliases]\n"llama3:70b" = "x"',
        'routing.aliases."llama3:70b"',
        "shadows the model 'llama3:70b' served by backend 'gpu'",
    ),
    "fallback entry is alias": (
        '[routing.aliases]\n"fast" = "llama3:8b"\n[routing.fallbacks]\n"llama3:70b" = ["qwen2:72b", "fast"]',
        'routing.fallbacks."llama3:70b"[1]',
        "'fast' is an alias; fallback entries must be concrete model names (use 'llama3:8b')",
    ),
    "fallback keyed by alias": (
        '[routing.aliases]\n"gpt-4" = "llama3:70b"\n[routing.fallbacks]\n"gpt-4" = ["qwen2:72b"]',
        'routing.fallbacks."gpt-4"',
        "is an alias; fallbacks are keyed by the resolved model ('llama3:70b'",
    ),
    "fallback to itself": (
        '[routing.fallbacks]\n"m" = ["m"]',
        'routing.fallbacks."m"[0]',
        "fallback for itself",
    ),
    "tenant named global": (
        '[routing.budget.tenants]\n"global" = 5',
        'routing.budget.tenants."global"',
        "reserved",
    ),
    "memory ledger with workers": (
        '[server]\nworkers = 2\n[ledger]\nkind = "memory"',
        "ledger.kind",
        "memory ledger cannot be shared by server.workers = 2",
    ),
    "open model without price": (
        OPENAI + '[[backends.models]]\nid = "gpt-5"\n[routing.budget]\nmonthly_limit_usd = 10',
        "backends[0].models[1].id",
        "open-zone model 'gpt-5' on backend 'cloud' has no price",
    ),
    "backend id too long": (GPU.replace('id = "gpu"', f'id = "{"g" * 129}"'), "backends[0].id", "max_id_len"),
    "tls file missing": (
        '[server.tls]\ncert = "missing.pem"\nkey = "missing.key"',
        "server.tls.cert",
        "file not found",
    ),
    "reserved tenant in any case": (
        '[routing.budget.tenants]\n"Global" = 5',
        'routing.budget.tenants."Global"',
        "reserved",
    ),
    # ---- rule: every numeric key has a documented range ----
    "rpcs 10**30": (
        "[server]\nmax_concurrent_rpcs = 1000000000000000000000000000000",
        "server.max_concurrent_rpcs",
        ("an integer of", "out of range (must be 1..65536)"),
    ),
    "streams 0": ("[server]\nmax_concurrent_streams = 0", "server.max_concurrent_streams", "1..65536"),
    "streams over": ("[server]\nmax_concurrent_streams = 65537", "server.max_concurrent_streams", "1..65536"),
    "drain 1e300": ("[server]\ndrain_seconds = 1e300", "server.drain_seconds", ("1e+300", "0..3600")),
    "grace over an hour": ("[server]\ngrace_seconds = 3601", "server.grace_seconds", "0..3600"),
    "workers over": ("[server]\nworkers = 1025", "server.workers", "1..1024"),
    "in-flight ttl huge": (
        "[queue]\nin_flight_ttl_seconds = 1e12",
        "queue.in_flight_ttl_seconds",
        "1..604800",
    ),
    "in-flight ttl under 1": (
        "[queue]\nin_flight_ttl_seconds = 0.5",
        "queue.in_flight_ttl_seconds",
        "1..604800",
    ),
    "max wait over an hour": ("[queue]\nmax_wait_ms = 3600001", "queue.max_wait_ms", "1..3600000"),
    "window over a week": (
        "[quality]\nwindow_seconds = 604801",
        "quality.window_seconds",
        "greater than 0 and at most 604800",
    ),
    "cooldown over a day": ("[quality]\ncooldown_seconds = 86401", "quality.cooldown_seconds", "0..86400"),
    "min_requests over": ("[quality]\nmin_requests = 10000000", "quality.min_requests", "1..1000000"),
    "ttft over an hour": (
        "[quality]\nttft_penalty_threshold_ms = 1e3",
        "quality.ttft_penalty_threshold_ms",
        "expected an integer, got a float",
    ),
    "interval over a day": (
        "[health_check]\ninterval_seconds = 86401",
        "health_check.interval_seconds",
        "greater than 0 and at most 86400",
    ),
    "timeout over an hour": (
        "[health_check]\ntimeout_seconds = 3601",
        "health_check.timeout_seconds",
        "3600",
    ),
    "recovery 0": ("[health_check]\nrecovery_threshold = 0", "health_check.recovery_threshold", "1..1000"),
    "failure threshold over": (
        "[health_check]\nfailure_threshold = 1001",
        "health_check.failure_threshold",
        "1..1000",
    ),
    "reconciliation over a day": (
        "[routing.budget]\nreconciliation_interval_secs = 1e9",
        "routing.budget.reconciliation_interval_secs",
        "greater than 0 and at most 86400",
    ),
    "message under 1 KiB": (
        "[limits]\nmax_message_bytes = 1023",
        "limits.max_message_bytes",
        "1024..67108864",
    ),
    "message over 64 MiB": (
        "[limits]\nmax_message_bytes = 67108865",
        "limits.max_message_bytes",
        "1024..67108864",
    ),
    "max_model_len over": ("[limits]\nmax_model_len = 1025", "limits.max_model_len", "1..1024"),
    "max_id_len over": ("[limits]\nmax_id_len = 100000", "limits.max_id_len", "1..1024"),
    "max_labels over": ("[limits]\nmax_labels = 1025", "limits.max_labels", "0..1024"),
    "max_labels negative": ("[limits]\nmax_labels = -1", "limits.max_labels", "0..1024"),
    "label key 0": ("[limits]\nmax_label_key_len = 0", "limits.max_label_key_len", "1..1024"),
    "label value over": ("[limits]\nmax_label_value_len = 65537", "limits.max_label_value_len", "1..65536"),
    "max_tokens 0": ("[limits]\nmax_tokens = 0", "limits.max_tokens", "1..4294967295"),
    "max_tokens over 32 bits": ("[limits]\nmax_tokens = 4294967296", "limits.max_tokens", "1..4294967295"),
    "max charge 0": ("[limits]\nmax_charge_usd = 0", "limits.max_charge_usd", "0.000001..1000000"),
    "max charge over": ("[limits]\nmax_charge_usd = 1e7", "limits.max_charge_usd", "0.000001..1000000"),
    "max charge nan": ("[limits]\nmax_charge_usd = nan", "limits.max_charge_usd", "not a finite number"),
    "weight huge": (
        "[routing.weights]\npriority = 100000000000000000000",
        "routing.weights.priority",
        "0..100",
    ),
    "max_concurrency over": (
        with_backend("max_concurrency = 10000000"),
        "backends[0].max_concurrency",
        "0..1000000",
    ),
    "price over 1000": (
        '[pricing."m"]\ninput_per_1k = 1001\noutput_per_1k = 1',
        'pricing."m".input_per_1k',
        "0..1000",
    ),
    "backend price over 1000": (
        with_backend("[backends.pricing]\ninput_per_1k = 0\noutput_per_1k = 5000"),
        "backends[0].pricing.output_per_1k",
        "0..1000",
    ),
    "monthly limit over": (
        "[routing.budget]\nmonthly_limit_usd = 2e9",
        "routing.budget.monthly_limit_usd",
        "0..1000000000",
    ),
    "tenant limit over": (
        '[routing.budget.tenants]\n"t" = 2e9',
        'routing.budget.tenants."t"',
        "0..1000000000",
    ),
    "tenant limit inf": (
        '[routing.budget.tenants]\n"t" = inf',
        'routing.budget.tenants."t"',
        "not a finite number",
    ),
    "cost cap over": (
        '[[routing.policies]]\nmodel_pattern = "x"\nmax_cost_per_request = 2e6',
        "routing.policies[0].max_cost_per_request",
        "0..1000000",
    ),
    "context_length over": (
        GPU + "context_length = 4294967296",
        "backends[0].models[0].context_length",
        ("1..4294967295", "leave it out for unlimited"),
    ),
    # ---- rule: money that would round to 0 nano-USD ----
    "monthly limit below a nano": (
        "[routing.budget]\nmonthly_limit_usd = 1e-10",
        "routing.budget.monthly_limit_usd",
        ("below 1 nano-USD", "would round to 0"),
    ),
    "tenant limit below a nano": (
        '[routing.budget.tenants]\n"t" = 0.0000000004',
        'routing.budget.tenants."t"',
        "below 1 nano-USD",
    ),
    "cost cap below a nano": (
        '[[routing.policies]]\nmodel_pattern = "x"\nmax_cost_per_request = 1e-12',
        "routing.policies[0].max_cost_per_request",
        "below 1 nano-USD",
    ),
    # ---- rule: URLs and listen addresses parse ----
    "url unbalanced [": (
        GPU.replace("http://127.0.0.1:11434", "http://[::1"),
        "backends[0].url",
        "is not a valid URL",
    ),
    "url credentials": (
        GPU.replace("http://127.0.0.1:11434", "http://user:pw@gpu:8000"),
        "backends[0].url",
        "must not carry credentials",
    ),
    "url port out of range": (
        GPU.replace("http://127.0.0.1:11434", "http://gpu:99999"),
        "backends[0].url",
        "is not a valid URL",
    ),
    "url query": (GPU.replace("http://127.0.0.1:11434", "http://gpu/v1?x=1"), "backends[0].url", "query"),
    "url bad host": (
        GPU.replace("http://127.0.0.1:11434", "http://gpu!:80"),
        "backends[0].url",
        "invalid host",
    ),
    "listen port not a number": ('[server]\nlisten = "localhost:abc"', "server.listen", "host:port"),
    "listen unbalanced [": ('[server]\nlisten = "[::1"', "server.listen", "unbalanced '['"),
    "listen bad v6": ('[server]\nlisten = "[::g]:1"', "server.listen", "invalid IPv6 address"),
    "listen v6 without brackets": ('[server]\nlisten = "::1:50051"', "server.listen", "in brackets"),
    "listen with space": ('[server]\nlisten = "local host:1"', "server.listen", "a space"),
    "prometheus no host": (
        '[telemetry]\nprometheus_listen = ":9464"',
        "telemetry.prometheus_listen",
        "host:port",
    ),
    "prometheus unix": (
        '[telemetry]\nprometheus_listen = "unix:/tmp/m.sock"',
        "telemetry.prometheus_listen",
        "unix socket is not supported",
    ),
    "redis url unbalanced [": ('[ledger]\nurl = "redis://[::1"', "ledger.url", "is not a valid URL"),
    "redis url bad port": ('[ledger]\nurl = "redis://h:70000/0"', "ledger.url", "is not a valid URL"),
    # ---- rule: TLS files load ----
    "tls cert garbage": (
        '[server.tls]\ncert = "garbage.pem"\nkey = "server.key"',
        "server.tls.cert",
        ("garbage.pem", "no PEM certificate found"),
    ),
    "tls cert empty": (
        '[server.tls]\ncert = "empty.pem"\nkey = "server.key"',
        "server.tls.cert",
        "no PEM certificate",
    ),
    "tls cert is a key": (
        '[server.tls]\ncert = "server.key"\nkey = "server.key"',
        "server.tls.cert",
        "no PEM certificate",
    ),
    "tls cert is a directory": (
        '[server.tls]\ncert = "adir"\nkey = "server.key"',
        "server.tls.cert",
        "not a regular file",
    ),
    "tls cert below a file": (
        '[server.tls]\ncert = "afile/c.pem"\nkey = "server.key"',
        "server.tls.cert",
        "not found",
    ),
    "tls key garbage": (
        '[server.tls]\ncert = "server.pem"\nkey = "garbage.pem"',
        "server.tls.key",
        ("garbage.pem", "not a PEM private key"),
    ),
    "tls key mismatch": (
        '[server.tls]\ncert = "server.pem"\nkey = "other.key"',
        "server.tls.key",
        ("other.key", "does not match the certificate"),
    ),
    "tls key encrypted": (
        '[server.tls]\ncert = "server.pem"\nkey = "encrypted.key"',
        "server.tls.key",
        "encrypted",
    ),
    "tls key missing": (
        '[server.tls]\ncert = "server.pem"\nkey = "nope.key"',
        "server.tls.key",
        "file not found",
    ),
    "tls client_ca garbage": (
        '[server.tls]\ncert = "server.pem"\nkey = "server.key"\nclient_ca = "garbage.pem"',
        "server.tls.client_ca",
        ("garbage.pem", "no PEM certificate found"),
    ),
    "tls path control char": ('[server.tls]\ncert = "a\\u0007"\nkey = "k"', "server.tls.cert", "U+0007"),
    # ---- rule: the ledger file and the decision log can be written ----
    "ledger path of no such user": (
        '[ledger]\npath = "~nosuchuser/l.db"',
        "ledger.path",
        "cannot expand '~'",
    ),
    "tls path of no such user": (
        '[server.tls]\ncert = "~nosuchuser/c.pem"\nkey = "server.key"',
        "server.tls.cert",
        "cannot expand '~'",
    ),
    "ledger path is a directory": ('[ledger]\npath = "adir"', "ledger.path", "is a directory"),
    "ledger path not sqlite": ('[ledger]\npath = "notsqlite.db"', "ledger.path", "is not a sqlite database"),
    "ledger path below a file": (
        '[ledger]\npath = "afile/ledger.db"',
        "ledger.path",
        ("cannot create", "afile is not a directory"),
    ),
    "ledger path two below a file": (
        '[ledger]\npath = "afile/sub/ledger.db"',
        "ledger.path",
        ("cannot create", "afile is not a directory"),
    ),
    "ledger path not a regular file": ('[ledger]\npath = "/dev/null"', "ledger.path", "not a regular file"),
    "redis journal is checked too": (
        '[ledger]\nkind = "redis"\npath = "adir"',
        "ledger.path",
        "is a directory",
    ),
    "ledger path control char": ('[ledger]\npath = "led\\u0000ger.db"', "ledger.path", "U+0000"),
    "decision log is a directory": (
        '[telemetry]\ndecision_log = "adir"',
        "telemetry.decision_log",
        "is a directory",
    ),
    "decision log directory missing": (
        '[telemetry]\ndecision_log = "missing/decisions.jsonl"',
        "telemetry.decision_log",
        "directory not found",
    ),
    "decision log below a file": (
        '[telemetry]\ndecision_log = "afile/decisions.jsonl"',
        "telemetry.decision_log",
        "afile is not a directory",
    ),
    # ---- rule: ids and names are printable, without whitespace ----
    "backend id control": (
        GPU.replace('id = "gpu"', 'id = "gpu\\u0007"'),
        "backends[0].id",
        "control character U+0007",
    ),
    "backend id DEL": (GPU.replace('id = "gpu"', 'id = "gpu\\u007f"'), "backends[0].id", "U+007F"),
    "backend id RTL override": (
        GPU.replace('id = "gpu"', 'id = "gpu\\u202e"'),
        "backends[0].id",
        "invisible or control character U+202E",
    ),
    "backend id tab": (GPU.replace('id = "gpu"', 'id = "gpu\\t1"'), "backends[0].id", "U+0009"),
    "model id space": (
        GPU.replace('id = "llama3:70b"', 'id = "llama 3"'),
        "backends[0].models[0].id",
        "a space",
    ),
    "model id zero-width joiner": (
        GPU.replace('id = "llama3:70b"', 'id = "llama\\u200d3"'),
        "backends[0].models[0].id",
        "U+200D",
    ),
    "model id no-break space": (
        GPU.replace('id = "llama3:70b"', 'id = "llama\\u00a03"'),
        "backends[0].models[0].id",
        "space character U+00A0",
    ),
    "model id empty": (
        GPU.replace('id = "llama3:70b"', 'id = ""'),
        "backends[0].models[0].id",
        "must not be empty",
    ),
    "tenant control": (
        '[routing.budget.tenants]\n"team\\u0001" = 1',
        'routing.budget.tenants."team\\u0001"',
        "U+0001",
    ),
    "tenant space": ('[routing.budget.tenants]\n"team a" = 1', 'routing.budget.tenants."team a"', "a space"),
    "tenant bidi mark shown escaped": (
        '[routing.budget.tenants]\n"t\\u200f" = 1',
        'routing.budget.tenants."t\\u200f"',
        "U+200F",
    ),
    "alias name space": ('[routing.aliases]\n"my model" = "x"', 'routing.aliases."my model"', "a space"),
    "alias target control": ('[routing.aliases]\n"a" = "x\\u001b[31m"', 'routing.aliases."a"', "U+001B"),
    "fallback key space": ('[routing.fallbacks]\n"a b" = ["c"]', 'routing.fallbacks."a b"', "a space"),
    "fallback entry bidi": ('[routing.fallbacks]\n"a" = ["b\\u200f"]', 'routing.fallbacks."a"[0]', "U+200F"),
    "policy pattern space": (
        '[[routing.policies]]\nmodel_pattern = "gpt 4*"',
        "routing.policies[0].model_pattern",
        "a space",
    ),
    "policy pattern control": (
        '[[routing.policies]]\nmodel_pattern = "gpt\\u0085*"',
        "routing.policies[0].model_pattern",
        "U+0085",
    ),
    "policy pattern too long": (
        f'[[routing.policies]]\nmodel_pattern = "{"a*" * 257}"',
        "routing.policies[0].model_pattern",
        "514 bytes; at most 512 allowed",
    ),
    "pricing model control": (
        '[pricing."m\\u0007"]\ninput_per_1k = 1\noutput_per_1k = 1',
        'pricing."m\\u0007"',
        "U+0007",
    ),
    "health path space": (with_backend('health_path = "/he alth"'), "backends[0].health_path", "a space"),
    "env var name": (
        with_backend('health_headers_env = "MY-HEADERS"'),
        "backends[0].health_headers_env",
        "not an environment variable name",
    ),
    "admin token env name": (
        '[server]\nadmin_token_env = "1TOKEN"',
        "server.admin_token_env",
        "environment variable",
    ),
    # ---- rule: ids, lengths and prices that serve could not hold ----
    "alias longer than max_model_len": (
        '[limits]\nmax_model_len = 8\n[routing.aliases]\n"a-long-alias" = "x"',
        'routing.aliases."a-long-alias"',
        "longer than limits.max_model_len (8 bytes)",
    ),
    "fallback longer than max_model_len": (
        '[limits]\nmax_model_len = 8\n[routing.fallbacks]\n"m" = ["a-long-model"]',
        'routing.fallbacks."m"[0]',
        "longer than limits.max_model_len",
    ),
    "price key longer than max_model_len": (
        '[limits]\nmax_model_len = 8\n[pricing."a-long-model"]\ninput_per_1k = 1\noutput_per_1k = 1',
        'pricing."a-long-model"',
        "longer than limits.max_model_len (8 bytes)",
    ),
    "model longer than max_model_len": (
        GPU.replace("llama3:70b", "m" * 257),
        "backends[0].models[0].id",
        "max_model_len",
    ),
    "price overflows a ledger entry": (
        '[pricing."m"]\ninput_per_1k = 1000\noutput_per_1k = 1000',
        'pricing."m"',
        ("would cost 20,000,000 USD", "more than a ledger entry holds", "limits.max_tokens"),
    ),
    "backend price overflows with more tokens": (
        "[limits]\nmax_tokens = 4294967295\n"
        + with_backend("[backends.pricing]\ninput_per_1k = 10\noutput_per_1k = 0"),
        "backends[0].pricing",
        "more than a ledger entry holds",
    ),
    # ---- rule: an unknown key names the closest known one ----
    "did you mean max_wait_ms": (
        "[queue]\nmax_wait = 5",
        "queue.max_wait",
        "unknown key; did you mean 'max_wait_ms'?",
    ),
    "did you mean in a backend": (
        with_backend("priorty = 3"),
        "backends[0].priorty",
        "did you mean 'priority'?",
    ),
    "did you mean a section": ('[sever]\nlisten = "x"', "sever", "unknown key; did you mean 'server'?"),
    "did you mean in a model": (GPU + "tool = true", "backends[0].models[0].tool", "did you mean 'tools'?"),
    "did you mean in limits": (
        "[limits]\nmax_charge = 5",
        "limits.max_charge",
        "did you mean 'max_charge_usd'?",
    ),
    # ---- new keys ----
    "allow_empty_fleet type": (
        '[routing]\nallow_empty_fleet = "yes"',
        "routing.allow_empty_fleet",
        "expected a boolean",
    ),
}


@pytest.mark.parametrize(("text", "key_path", "words"), ERRORS.values(), ids=ERRORS.keys())
def test_config_errors(text: str, key_path: str, words: str | tuple[str, ...], files: Path) -> None:
    assert_issue(issues_of(text, base_dir=files), key_path, words)


def test_syntax_error_names_line() -> None:
    issues = issues_of("[server]\nlisten = = 1\n")
    assert len(issues) == 1
    assert issues[0].key_path == "line 2, column 10"
    assert issues[0].problem.startswith("TOML syntax error: ")
    assert str(issues[0]).startswith(f"{FILE}: line 2, column 10: TOML syntax error")


def test_a_phase_reports_every_issue() -> None:
    text = '[server]\nworkers = 0\nbogus = 1\n[quality]\nmin_requests = 0\n[routing]\nstrategy = "x"'
    paths = {issue.key_path for issue in issues_of(text)}
    assert paths == {"server.workers", "server.bogus", "quality.min_requests", "routing.strategy"}


def test_phase3_runs_only_after_a_clean_phase2() -> None:
    # a duplicate id (phase 3) is not reported while a range error (phase 2) remains
    text = GPU.replace('type = "ollama"', 'type = "ollama"\ntier = 9') + GPU
    issues = issues_of(text)
    assert [i.key_path for i in issues] == ["backends[0].tier"]
    fixed = text.replace("tier = 9", "tier = 2")
    assert [i.key_path for i in issues_of(fixed)] == ["backends[1].id"]


def test_phase3_reports_every_issue() -> None:
    text = GPU + GPU + '[routing.aliases]\n"a" = "a"\n[routing.budget.tenants]\n"global" = 1'
    paths = [issue.key_path for issue in issues_of(text)]
    assert paths == ["backends[1].id", 'routing.aliases."a"', 'routing.budget.tenants."global"']


def test_alias_chain_of_three_hops_is_allowed() -> None:
    config = load_config_text('[routing.aliases]\n"a" = "b"\n"b" = "c"\n"c" = "d"', source=FILE)
    assert config.routing.aliases == {"a": "b", "b": "c", "c": "d"}


def test_unpriced_open_model_is_fine_with_default_price_or_without_budget() -> None:
    text = OPENAI + '[[backends.models]]\nid = "gpt-5"\n'
    load_config_text(text, source=FILE)  # no budget: no price needed
    budget = "[routing.budget]\nmonthly_limit_usd = 10\n"
    load_config_text(
        text + budget + "[pricing.default]\ninput_per_1k = 0.001\noutput_per_1k = 0.002", source=FILE
    )
    load_config_text(
        text + budget + '[pricing."gpt-5"]\ninput_per_1k = 0.001\noutput_per_1k = 0.002', source=FILE
    )
    restricted = GPU.replace("llama3:70b", "unpriced")
    load_config_text(restricted + budget, source=FILE)  # restricted backends cost 0


def test_unsupported_keys_and_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_reader, "UNSUPPORTED", frozenset({"server.watch_config", "ledger.kind=redis"}))
    issues = issues_of('[server]\nwatch_config = true\n[ledger]\nkind = "Redis"')
    assert_issue(issues, "server.watch_config", "not supported yet")
    assert_issue(issues, "ledger.kind", "'redis' is not supported yet")


def test_without_sqlite_the_default_ledger_is_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_reader, "UNSUPPORTED", frozenset({"ledger.kind=sqlite"}))
    assert load_config_text("").ledger.kind == "memory"
    assert_issue(issues_of('[ledger]\nkind = "sqlite"'), "ledger.kind", "not supported yet")


def test_a_bad_weight_is_not_also_reported_as_a_bad_sum() -> None:
    issues = issues_of('[routing.weights]\npriority = "x"\nload = 20')
    assert [i.key_path for i in issues] == ["routing.weights.priority"]
