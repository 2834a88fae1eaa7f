"""nexus-grpc as the endpoint picker of an inference gateway: the real Envoy on exactly
deploy/envoy/inference-pool.yaml (full-duplex ext_proc, override_host over the pool, TLS to
nexus-grpc), real stand-in model servers. The pool is gpu-1, gpu-2 (restricted) and open-1 (open
zone); `cloud` is a hostname backend and `stray` an IP backend outside the pool; open-1 and cloud
have the best priority, so whatever keeps a request from them is nexus-grpc's decision.

A test-only filter turns the header `x-test-endpoint-subset` into the endpoint subset metadata a
gateway sends (`envoy.lb.subset_hint`)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from envoy_stack import POOL, PoolStack
from support.envoy import DEPLOY_DIR, render, validate
from support.net import wait_until
from support.upstream import Answer

from nexus_grpc.devcert import write_dev_cert
from nexus_grpc.domain.decision import Decision
from nexus_grpc.servicers.envoy.mapping import ROUTING_HEADERS

pytestmark = pytest.mark.envoy

MakePool = Callable[..., PoolStack]
JSON = {"content-type": "application/json"}
PLACEHOLDERS = {
    "ENVOY_PORT", "ADMIN_PORT", "NEXUS_HOST", "NEXUS_PORT", "NEXUS_CA", "NEXUS_TLS_NAME",
    "POOL_IP", "POOL_PORT_1", "POOL_PORT_2", "POOL_PORT_3",
}  # fmt: skip


def chat(model: str, content: str = "hi", **extra: Any) -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra})


def answered_by(stack: PoolStack) -> dict[str, int]:
    return {name: len(u.received) for name, u in stack.upstreams.items()}


def outcomes(stack: PoolStack) -> dict[str, int]:
    """Outcomes counted per backend in nexus-grpc's statistics (read on its loop)."""

    async def read() -> dict[str, int]:
        runtime = stack.nx.runtime
        now = runtime.engine.clock()
        return {bid: live.stats.snapshot(now)[0] for bid, live in runtime.registry.live.items()}

    return stack.nx.call(read())


def settle(stack: PoolStack, count: int) -> None:
    """Wait until nexus-grpc reported `count` outcomes (the response's end reaches it last)."""
    wait_until(
        lambda: stack.nx.stats.outcomes_reported >= count,
        lambda: f"{count} outcomes reported: {stack.nx.stats}",
    )


# -- the shipped file ----------------------------------------------------------------------------


def _find(node: Any, key: str) -> list[Any]:
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


def test_the_config_validates_and_configures_what_the_gateways_do(
    make_pool_stack: MakePool, tmp_path: Any
) -> None:
    template = DEPLOY_DIR / "inference-pool.yaml"
    assert set(re.findall(r"\$\{(\w+)\}", template.read_text())) == PLACEHOLDERS
    values = dict.fromkeys(PLACEHOLDERS, "1")
    ca = write_dev_cert(tmp_path, ("nexus-grpc.inference.svc",)).cert
    values.update(NEXUS_HOST="nexus-grpc.inference.svc", NEXUS_TLS_NAME="nexus-grpc.inference.svc",
                  NEXUS_CA=str(ca), POOL_IP="10.0.0.1")  # fmt: skip
    result = validate(render(template, values))
    assert result.returncode == 0, result.stdout + result.stderr

    stack = make_pool_stack(nexus_up=False, subset_filter=False)
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.envoy.admin_port}/config_dump", timeout=10) as r:
        configs = json.loads(r.read())["configs"]
    dump = next(c["bootstrap"] for c in configs if c["@type"].endswith("BootstrapConfigDump"))
    [manager] = [
        f["typed_config"] for f in _find(dump, "filters")[0] if "http_connection_manager" in f["name"]
    ]
    removed = set(_find(manager["early_header_mutation_extensions"], "remove"))
    gateway = {f"x-gateway-destination-endpoint{s}" for s in ("-subset", "-served", "-fallback")}
    assert removed == {*ROUTING_HEADERS, *gateway, "x-nexus-tenant"}
    [ext_proc] = [
        f["typed_config"] for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"
    ]
    assert manager["http_filters"][-1]["name"] == "envoy.filters.http.router"
    assert ext_proc["processing_mode"] == {
        "request_header_mode": "SEND",
        "response_header_mode": "SEND",
        "request_body_mode": "FULL_DUPLEX_STREAMED",
        "response_body_mode": "FULL_DUPLEX_STREAMED",
        "request_trailer_mode": "SEND",
        "response_trailer_mode": "SEND",
    }
    assert ext_proc.get("allow_mode_override", False) is False
    assert 300 <= float(ext_proc["message_timeout"].rstrip("s")) <= 1000
    assert not ext_proc.get("failure_mode_allow", False)
    options = ext_proc["metadata_options"]
    assert options["forwarding_namespaces"]["untyped"] == ["envoy.lb", "envoy.lb.subset_hint"]
    assert options["receiving_namespaces"]["untyped"] == ["envoy.lb"]
    clusters = {c["name"]: c for c in dump["static_resources"]["clusters"]}
    epp = clusters["nexus_epp"]
    assert epp["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    assert _find(epp, "service_name") == ["envoy.service.ext_proc.v3.ExternalProcessor"]
    [policy] = clusters["inference_pool"]["load_balancing_policy"]["policies"]
    assert policy["typed_extension_config"]["name"] == "envoy.load_balancing_policies.override_host"
    override_host = policy["typed_extension_config"]["typed_config"]["fallback_policy"]
    [override] = _find(clusters["inference_pool"], "override_host_sources")
    assert override == [
        {"metadata": {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}
    ]
    [selected] = _find(clusters["inference_pool"], "selected_host_key")
    assert selected["path"] == [{"key": "x-gateway-destination-endpoint-served"}]
    [fallback] = [p["typed_extension_config"] for p in override_host["policies"]]
    # the fallback never picks a host itself: a subset balancer no request matches, NO_FALLBACK
    # (the default, which the dump leaves out)
    assert fallback["name"] == "envoy.load_balancing_policies.subset"
    assert fallback["typed_config"].get("fallback_policy", "NO_FALLBACK") == "NO_FALLBACK"
    # nexus-grpc down: fail closed, nothing reaches a model server
    resp = stack.http(headers=JSON, body=chat("llama3:70b"))
    assert resp.status == 503
    assert sum(answered_by(stack).values()) == 0


# -- bodies, carriers and the access log ---------------------------------------------------------


def test_a_200kb_chat_body_arrives_byte_identical_and_the_response_intact(make_pool_stack: MakePool) -> None:
    stack = make_pool_stack()
    open1 = stack.upstreams["open-1"]
    open1.answer = Answer(
        usage={"prompt_tokens": 50_000, "completion_tokens": 10}, extra={"pad": "y" * 150_000}
    )
    body = chat("llama3:70b", "x" * 200_000).encode()
    assert len(body) > 200_000
    resp = stack.http(headers=JSON, body=body)
    assert resp.status == 200, resp.body[:300]
    [received] = open1.received
    assert received.body == body  # byte for byte, after streaming through nexus-grpc in pieces
    document = resp.json()
    assert document["served_by"] == "open-1" and document["pad"] == "y" * 150_000
    assert document["usage"] == {"prompt_tokens": 50_000, "completion_tokens": 10}
    expected = {
        "object": "chat.completion",
        "model": "llama3:70b",
        "served_by": "open-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "pad": "y" * 150_000,
        "usage": {"prompt_tokens": 50_000, "completion_tokens": 10},
    }
    assert resp.body == json.dumps(expected).encode()  # the response, byte for byte
    assert resp.headers["x-nexus-decision-id"]
    settle(stack, 1)
    stats = stack.nx.stats
    assert stats.duplex_streams == 1 and stats.body_chunks_sent >= 4  # 200 KB in <= 62 000 B pieces
    # charged by the response's usage: 50 000 in at 0.001 + 10 out at 0.002 USD per 1K
    assert stack.nx.spent() == pytest.approx(0.05002, abs=1e-9)
    assert stack.nx.in_flight() == dict.fromkeys(("gpu-1", "gpu-2", "open-1", "cloud", "stray"), 0)


def test_the_access_log_shows_the_envoy_lb_metadata_equal_to_the_upstream_host(
    make_pool_stack: MakePool,
) -> None:
    stack = make_pool_stack()
    subsets = ["", stack.endpoint("gpu-2"), stack.endpoint("gpu-1"), ""]
    for subset in subsets:
        headers = {**JSON, **({"x-test-endpoint-subset": subset} if subset else {})}
        assert stack.http(headers=headers, body=chat("llama3:70b")).status == 200
    lines = stack.access_log(len(subsets))
    assert len(lines) == len(subsets)
    by_port = {str(u.port): name for name, u in stack.upstreams.items()}
    for line, subset in zip(lines, subsets, strict=True):
        first = line["destination_endpoint"].split(",")[0]
        assert line["upstream_host"] == first == line["served_endpoint"], line
        assert first == (subset or stack.endpoint("open-1"))
        assert int(line["attempts"]) == 1
    assert [by_port[line["upstream_host"].rsplit(":", 1)[1]] for line in lines] == [
        "open-1",
        "gpu-2",
        "gpu-1",
        "open-1",
    ]
    for name in POOL:  # the header each model server got is the metadata the access log shows
        for got in stack.upstreams[name].received:
            assert got.headers["x-gateway-destination-endpoint"] in {
                line["destination_endpoint"] for line in lines
            }


def test_the_fallback_list_is_ordered_as_the_routes_alternates_and_used_on_failure(
    make_pool_stack: MakePool,
) -> None:
    stack = make_pool_stack()
    engine = stack.nx.runtime.engine
    decided: list[Decision] = []
    decide = engine.decide

    async def recording(*args: Any, **kwargs: Any) -> Decision:
        decision = await decide(*args, **kwargs)
        decided.append(decision)
        return decision

    engine.decide = recording  # type: ignore[method-assign]
    resp = stack.http(headers=JSON, body=chat("llama3:70b"))
    assert resp.status == 200
    [decision] = decided
    route = decision.route
    assert route is not None
    header = stack.upstreams["open-1"].received[0].headers["x-gateway-destination-endpoint"]
    assert header == ",".join(stack.endpoint(b) for b in (route.backend_id, *route.alternates))
    # that is open-1 (priority 0), then gpu-1 (1), gpu-2 (10); the hostname backend `cloud`
    # (priority 0 too) is no endpoint a gateway can be sent to
    assert header == ",".join(stack.endpoint(n) for n in ("open-1", "gpu-1", "gpu-2"))
    settle(stack, 1)
    # open-1 stops answering: Envoy cannot connect, goes down the list to gpu-1, and tells
    # nexus-grpc which endpoint served; the outcome is gpu-1's (an alternate of the decision)
    stack.upstreams["open-1"].stop()
    resp = stack.http(headers=JSON, body=chat("llama3:70b", "y" * 100_000))
    assert resp.status == 200, resp.body[:300]
    assert resp.json()["served_by"] == "gpu-1"
    assert stack.upstreams["gpu-1"].received[0].body == chat("llama3:70b", "y" * 100_000).encode()
    line = stack.access_log(2)[1]
    assert (line["upstream_host"], line["served_endpoint"], int(line["attempts"])) == (
        stack.endpoint("gpu-1"),
        stack.endpoint("gpu-1"),
        2,
    )
    settle(stack, 2)
    assert stack.nx.stats.served_elsewhere == 1
    counted = outcomes(stack)
    assert (counted["open-1"], counted["gpu-1"]) == (1, 1)
    assert sum(stack.nx.in_flight().values()) == 0


# -- what may be picked ---------------------------------------------------------------------------


def test_the_subset_hint_confines_every_request(make_pool_stack: MakePool) -> None:
    stack = make_pool_stack()
    gpu2 = stack.endpoint("gpu-2")
    for i in range(8):
        headers = {**JSON, "x-test-endpoint-subset": gpu2 if i % 2 else f"{gpu2}, 127.0.0.9:1"}
        resp = stack.http(headers=headers, body=chat("llama3:70b"))
        assert resp.status == 200 and resp.json()["served_by"] == "gpu-2"
    assert answered_by(stack)["gpu-2"] == 8 and sum(answered_by(stack).values()) == 8
    assert {r.headers["x-gateway-destination-endpoint"] for r in stack.upstreams["gpu-2"].received} == {gpu2}
    # a bare IP admits every port of it: the whole pool
    resp = stack.http(headers={**JSON, "x-test-endpoint-subset": "127.0.0.1"}, body=chat("llama3:70b"))
    assert resp.json()["served_by"] == "open-1"
    settle(stack, 9)
    assert stack.nx.stats.subsets_seen == 9


@pytest.mark.parametrize("which", ["empty", "outside the pool", "hostname", "open only, restricted model"])
def test_an_empty_or_ineligible_subset_is_a_503(make_pool_stack: MakePool, which: str) -> None:
    stack = make_pool_stack()
    model, subset = {
        "empty": ("llama3:70b", " , "),
        "outside the pool": ("llama3:70b", stack.endpoint("stray")),
        "hostname": ("cloud-only", "127.0.0.1"),
        "open only, restricted model": ("secret-7b", stack.endpoint("open-1")),
    }[which]
    resp = stack.http(headers={**JSON, "x-test-endpoint-subset": subset}, body=chat(model))
    assert resp.status == 503, resp.body
    body = resp.json()
    assert body["error"]["code"] == "no_eligible_backend"
    assert body["context"]["available_backends"] == []
    codes = {r["code"] for r in body["context"]["rejection_reasons"]}
    assert "EXCLUSION_CODE_OUTSIDE_ENDPOINT_SUBSET" in codes
    if which == "hostname":
        [reason] = body["context"]["rejection_reasons"]
        assert reason["backend_id"] == "cloud" and "host name, not an IP" in reason["reason"]
    if which.startswith("open only"):
        assert ("open-1", "EXCLUSION_CODE_PRIVACY_ZONE") in {
            (r["backend_id"], r["code"]) for r in body["context"]["rejection_reasons"]
        }
    assert sum(answered_by(stack).values()) == 0
    assert sum(stack.nx.in_flight().values()) == 0


def test_a_restricted_model_never_reaches_the_open_endpoint(make_pool_stack: MakePool) -> None:
    stack = make_pool_stack()
    for _ in range(6):
        resp = stack.http(headers=JSON, body=chat("secret-7b"))
        assert resp.status == 200 and resp.json()["served_by"] == "gpu-1"
    listed = stack.upstreams["gpu-1"].received[0].headers["x-gateway-destination-endpoint"]
    assert listed == f"{stack.endpoint('gpu-1')},{stack.endpoint('gpu-2')}"  # open-1 is not even a fallback
    # with both restricted endpoints gone the gateway runs out of the list: a 503, never open-1
    stack.upstreams["gpu-1"].stop()
    stack.upstreams["gpu-2"].stop()
    resp = stack.http(headers=JSON, body=chat("secret-7b"))
    assert resp.status == 503
    assert answered_by(stack)["open-1"] == 0


def test_an_endpoint_outside_the_pool_is_never_replaced_by_another(make_pool_stack: MakePool) -> None:
    stack = make_pool_stack()
    resp = stack.http(headers=JSON, body=chat("stray-model"))
    assert resp.status == 503  # Envoy has no such endpoint, and its fallback picks none
    assert sum(answered_by(stack).values()) == 0
    wait_until(lambda: sum(stack.nx.in_flight().values()) == 0, "nothing left in flight", timeout=5)


def test_an_alias_in_the_body_is_rewritten(make_pool_stack: MakePool) -> None:
    stack = make_pool_stack()
    sent = {"model": "gpt-4", "messages": [{"role": "user", "content": "é" * 1000}], "max_tokens": 7}
    resp = stack.http(
        headers={**JSON, "x-test-endpoint-subset": stack.endpoint("gpu-1")}, body=json.dumps(sent)
    )
    assert resp.status == 200
    [got] = stack.upstreams["gpu-1"].received
    assert got.json() == {**sent, "model": "llama3:70b"}
    assert got.headers["x-nexus-model"] == "llama3:70b"
    assert resp.json()["model"] == "llama3:70b"
    assert stack.nx.stats.bodies_rewritten == 1


def test_an_unknown_model_is_a_404_naming_the_models(make_pool_stack: MakePool) -> None:
    stack = make_pool_stack()
    resp = stack.http(headers=JSON, body=chat("claude-9"))
    assert resp.status == 404
    assert resp.headers["x-nexus-rejection-reasons"].startswith(
        "model 'claude-9' is not served here; available models: "
    )
    assert resp.json()["error"]["code"] == "model_not_found"
    assert "llama3:70b" in resp.json()["context"]["available_models"]
    assert sum(answered_by(stack).values()) == 0


# -- load, holds, streams --------------------------------------------------------------------------


def test_20_concurrent_requests_all_succeed_and_in_flight_returns_to_zero(make_pool_stack: MakePool) -> None:
    stack = make_pool_stack()
    for name in POOL:
        stack.upstreams[name].answer = Answer(delay=0.2, usage={"prompt_tokens": 10, "completion_tokens": 5})
    bodies = [chat("llama3:70b", f"request {i} " + "z" * (i * 7000)) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda b: stack.http(headers=JSON, body=b), bodies))
    assert [r.status for r in results] == [200] * 20
    received = [r.body for name in POOL for r in stack.upstreams[name].received]
    assert sorted(received) == sorted(b.encode() for b in bodies)
    assert max(stack.upstreams[name].max_in_progress for name in POOL) > 1  # they did overlap
    settle(stack, 20)
    assert sum(stack.nx.in_flight().values()) == 0
    assert len({r.headers["x-nexus-decision-id"] for r in results}) == 20


def test_a_queue_hold_ends_with_the_route_when_the_backend_is_ready(make_pool_stack: MakePool) -> None:
    stack = make_pool_stack()
    stack.nx.set_state("gpu-2", "LOADING", eta_ms=1500)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            stack.http,
            headers={**JSON, "x-test-endpoint-subset": stack.endpoint("gpu-2")},
            body=chat("llama3:70b"),
        )
        wait_until(lambda: stack.nx.stats.holds == 1, "the request is held")
        assert not pending.done()
        stack.nx.set_state("gpu-2", "HEALTHY")  # wakes the hold: it decides again at once
        resp = pending.result(timeout=10)
    assert resp.status == 200 and resp.json()["served_by"] == "gpu-2"
    assert (stack.nx.stats.holds, stack.nx.stats.holds_timed_out) == (1, 0)


def test_a_streamed_response_passes_through_and_is_reported(make_pool_stack: MakePool) -> None:
    stack = make_pool_stack()
    stack.upstreams["open-1"].answer = Answer(stream=True)
    resp = stack.http(headers=JSON, body=chat("llama3:70b", stream=True))
    assert resp.status == 200
    events = [line for line in resp.body.decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and len(events) == 4
    assert json.loads(events[2][len("data: ") :])["served_by"] == "open-1"
    settle(stack, 1)
    assert outcomes(stack)["open-1"] == 1
    assert sum(stack.nx.in_flight().values()) == 0
