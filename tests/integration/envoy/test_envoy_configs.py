"""The shipped configs in deploy/envoy/: valid for the real Envoy, fail closed, strip forged routing
headers early, hold Queue decisions long enough, and bound time and body size. Checked on Envoy's
own config dump."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
from support.envoy import DEPLOY_DIR, EnvoyProcess, render, validate
from support.net import free_port

from nexus_grpc.config.loader import load_config
from nexus_grpc.config.schema import LimitsConfig, QueueConfig
from nexus_grpc.servicers.envoy.ext_proc import HOLD_MARGIN_S
from nexus_grpc.servicers.envoy.mapping import ROUTING_HEADERS
from nexus_grpc.servicers.envoy.responses import destination_endpoint

pytestmark = pytest.mark.envoy

CONFIGS = ("ext_proc", "ext_authz")
VALUES = {
    "ENVOY_PORT": 10000,
    "ADMIN_PORT": 9901,
    "NEXUS_HOST": "127.0.0.1",
    "NEXUS_PORT": 50051,
    "CLOUD_HOST": "api.openai.com",
    "CLOUD_PORT": 443,
}


def _find(node: Any, key: str) -> list[Any]:
    """Every value under `key`, anywhere in a JSON document."""
    found: list[Any] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found += _find(v, key)
    elif isinstance(node, list):
        for item in node:
            found += _find(item, key)
    return found


def _seconds(duration: str) -> float:
    return float(duration.rstrip("s"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_envoy_validate_and_uses_every_placeholder(name: str) -> None:
    template = DEPLOY_DIR / f"{name}.yaml"
    placeholders = set(re.findall(r"\$\{(\w+)\}", template.read_text()))
    assert placeholders == set(VALUES)
    text = render(template, VALUES)
    assert "${" not in text
    result = validate(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


_DUMPS: dict[str, Any] = {}


def _bootstrap(name: str) -> Any:
    """The bootstrap as the real Envoy parsed it (defaults filled in, enums by name)."""
    if name not in _DUMPS:
        values = {k: v for k, v in VALUES.items() if k not in ("ENVOY_PORT", "ADMIN_PORT")}
        values.update(NEXUS_PORT=free_port(), CLOUD_HOST="127.0.0.1", CLOUD_PORT=free_port())
        with EnvoyProcess(DEPLOY_DIR / f"{name}.yaml", values) as envoy:
            url = f"http://127.0.0.1:{envoy.admin_port}/config_dump"
            with urllib.request.urlopen(url, timeout=10) as r:
                configs = json.loads(r.read())["configs"]
        _DUMPS[name] = next(c["bootstrap"] for c in configs if c["@type"].endswith("BootstrapConfigDump"))
    return _DUMPS[name]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_fails_closed_and_strips_routing_headers_early(name: str) -> None:
    dump = _bootstrap(name)
    managers = _find(dump, "early_header_mutation_extensions")
    assert len(managers) == 1
    removed = set(_find(managers, "remove"))
    assert removed == {*ROUTING_HEADERS, "x-nexus-tenant"}
    assert "x-nexus-model" not in removed  # inputs stay
    filters = [f for f in _find(dump, "http_filters")[0]]
    names = [f["name"] for f in filters]
    assert names[-1] == "envoy.filters.http.router"
    ours = next(f for f in filters if f["name"] == f"envoy.filters.http.{name}")["typed_config"]
    assert not ours.get("failure_mode_allow", False)
    assert ours["status_on_error"]["code"] in ("ServiceUnavailable", 503)
    assert ours["grpc_service"]["envoy_grpc"]["cluster_name"] == "nexus_grpc"
    if name == "ext_proc":
        assert ours["allow_mode_override"] is True
        hold_s = QueueConfig().max_wait_ms / 1000 + HOLD_MARGIN_S
        assert _seconds(ours["max_message_timeout"]) >= hold_s
    else:
        assert ours["clear_route_cache"] is True


@pytest.mark.parametrize("name", CONFIGS)
def test_config_bounds_time_and_bodies(name: str) -> None:
    dump = _bootstrap(name)
    [manager] = [
        f["typed_config"] for f in _find(dump, "filters")[0] if "http_connection_manager" in f["name"]
    ]
    filters = {f["name"]: f["typed_config"] for f in manager["http_filters"]}
    ours = filters[f"envoy.filters.http.{name}"]
    # every phase of a request has a bound: headers, the whole request, silence either way
    headers_s = _seconds(manager["request_headers_timeout"])
    request_s = _seconds(manager["request_timeout"])
    idle_s = _seconds(manager["stream_idle_timeout"])
    assert 0 < headers_s <= 10 and 0 < request_s <= 120 and 0 < idle_s <= 300
    routes = [r for r in _find(dump, "routes")[0] if "route" in r]
    route_s = max(_seconds(r["route"]["timeout"]) for r in routes)
    assert idle_s >= route_s  # a backend may think (send nothing) as long as its route allows
    if name == "ext_proc":
        # a Queue hold sends nothing and keeps the request from going upstream: neither timeout
        # may cut the longest hold (Envoy answers a headers-only request cut short with a 504)
        hold_s = _seconds(ours["max_message_timeout"])
        assert request_s >= hold_s + 20 and idle_s > hold_s
        # bodies are buffered from the start (a per-request switch to BUFFERED hangs on big bodies)
        assert ours["processing_mode"]["request_body_mode"] == "BUFFERED"
    else:
        assert not ours["with_request_body"].get("allow_partial_message", False)  # else 413 is not sent
        assert ours["with_request_body"]["pack_as_bytes"] is True
        assert ours["encode_raw_headers"] is True
    listener = dump["static_resources"]["listeners"][0]
    limit = listener["per_connection_buffer_limit_bytes"]
    assert 1024 * 1024 < limit < LimitsConfig().max_message_bytes  # images fit; the Check/body message too
    if name == "ext_authz":
        assert ours["with_request_body"]["max_request_bytes"] == limit
    options = manager["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] == "DROP_HEADER"
    assert 0 < _seconds(options["idle_timeout"]) <= 3600
    assert 0 < manager["http2_protocol_options"]["max_concurrent_streams"] <= 1000
    clusters = {c["name"]: c for c in dump["static_resources"]["clusters"]}
    assert "http2_protocol_options" in json.dumps(clusters["nexus_grpc"])
    assert clusters["nexus_endpoints"]["original_dst_lb_config"]["http_header_name"] == (
        "x-gateway-destination-endpoint"
    )


def test_example_nexus_config_matches_the_envoy_routes() -> None:
    config = load_config(DEPLOY_DIR / "nexus.toml")
    assert not config.warnings
    assert config.queue.max_wait_ms / 1000 + HOLD_MARGIN_S <= 60  # ext_proc.yaml max_message_timeout
    for name in CONFIGS:
        text = (DEPLOY_DIR / f"{name}.yaml").read_text()
        for backend in config.backends:
            if destination_endpoint(backend.url) is None:  # a hostname backend: routed by its id
                assert f"string_match: {{ exact: {backend.id} }}" in text
                assert f"- name: {backend.id}\n" in text
