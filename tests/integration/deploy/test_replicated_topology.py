"""A rehearsal of deploy/kubernetes/ on this machine: three nexus-grpc replicas started as the
Deployment starts them, on the ConfigMap's TOML; one Redis with the StatefulSet's arguments (AOF on);
one Envoy on the ConfigMap's config, load-balancing ext_proc over the three replicas; two stand-in
vLLM backends answering with `usage`. Clients send chat completions through Envoy while one replica
is killed (SIGKILL) and Redis is restarted.

Checked: no request failed but ones in flight on the killed replica when it died; the spend in Redis
equals the sum of the costs of the answered requests (by the usage the stand-ins reported and the
ConfigMap's prices), plus at most the usage of the few requests a stand-in answered while their
client failed (the killed replica may have charged them just before it died); reserved is at most
the killed replica's unsettled estimates; both surviving replicas report those totals through
BudgetService.

Substituted in the manifests, and only these: addresses (listen ports, the Redis URL, backend URLs,
the journal path, the metrics port, Envoy's ports and endpoints) and two timings, named in TIMINGS."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from deploy_manifests import Manifests, load
from deploy_topology import Redis, Replica, envoy_template, substitute
from support.envoy import EnvoyProcess
from support.net import free_port, wait_until
from support.upstream import Answer, UpstreamServer

from nexus_grpc.domain.money import NANO, nano_to_usd

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.envoy]

REPLICAS = 3
CLIENTS = 6
USAGE = {"vllm-a": (120, 40), "vllm-b": (300, 25)}  # prompt, completion tokens per answer
KILL_AT, REDIS_DOWN_AT, REDIS_DOWN_FOR, STOP_AT = 2.5, 5.0, 1.0, 9.0  # seconds into the traffic
# the timings shortened for a test that lasts seconds, not the minutes of a real cluster
TIMINGS = {
    "reconciliation_interval_secs = 10": "reconciliation_interval_secs = 0.5",
    "drain_seconds = 5 ": "drain_seconds = 0.5 ",
}
ADMIN_TOKEN = "rehearsal-admin-token"


@dataclass(frozen=True)
class Result:
    started: float
    ended: float
    status: int
    served_by: str


def nano_per_token(per_1k: float) -> int:
    return round(per_1k * NANO / 1000)


def replica_toml(m: Manifests, i: int, port: int, redis: Redis, tmp: Path, backends: dict[str, str]) -> Path:
    toml = m.nexus_toml
    replacements = {
        f'listen = "{toml["server"]["listen"]}"': f'listen = "127.0.0.1:{port}"',
        f'url = "{toml["ledger"]["url"]}"': f'url = "{redis.url}"',
        f'path = "{toml["ledger"]["path"]}"': f'path = "{tmp / f"journal-{i}.db"}"',
        f'prometheus_listen = "{toml["telemetry"]["prometheus_listen"]}"': (
            f'prometheus_listen = "127.0.0.1:{free_port()}"'
        ),
        **{
            f'url = "{b["url"]}"': f'url = "{backends[b["id"]]}"'
            for b in toml["backends"]
            if b["id"] in backends
        },
        **TIMINGS,
    }
    path = tmp / f"replica-{i}.toml"
    path.write_text(substitute(m.nexus_toml_text, replacements))
    return path


@pytest.fixture
def stack(
    tmp_path: Path,
) -> Iterator[tuple[Manifests, list[Replica], Redis, EnvoyProcess, dict[str, UpstreamServer]]]:
    m = load()
    data = tmp_path / "redis"
    data.mkdir()
    redis = Redis(m, data)
    upstreams = {name: UpstreamServer(name).start() for name in USAGE}
    for name, (tokens_in, tokens_out) in USAGE.items():
        usage = {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}
        upstreams[name].answer = Answer(usage=usage, delay=0.02)
    replicas: list[Replica] = []
    envoy: EnvoyProcess | None = None
    try:
        redis.start()
        urls = {name: u.url for name, u in upstreams.items()}
        ports = [free_port() for _ in range(REPLICAS)]
        for i, port in enumerate(ports):
            config = replica_toml(m, i, port, redis, tmp_path, urls)
            env = {"NEXUS_ADMIN_TOKEN": ADMIN_TOKEN}  # the Secret's token
            replicas.append(Replica(m, config, port, tmp_path / f"replica-{i}.log", env))
        for r in replicas:
            r.wait_ready()
        template = tmp_path / "envoy.yaml"
        closed = free_port()  # the cloud backend gets no traffic here
        template.write_text(
            envoy_template(m, ports, {**{n: u.port for n, u in upstreams.items()}, "openai": closed})
        )
        envoy = EnvoyProcess(template, {"HEALTH_PORT": free_port()}).start()
        yield m, replicas, redis, envoy, upstreams
    finally:
        if envoy is not None:
            envoy.stop()
        for r in replicas:
            r.stop()
        redis.stop()
        for u in upstreams.values():
            u.stop()
        for r in replicas:  # shown when the test failed
            print(f"---- {r.log.name}\n{r.log_text()}")


def chat(port: int, n: int) -> tuple[int, str]:
    body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": f"hello {n}"}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    served_by = ""
    if resp.status == 200:
        served_by = json.loads(payload)["served_by"]
    return resp.status, served_by


def test_three_replicas_behind_envoy_survive_a_kill_and_a_redis_restart(
    stack: tuple[Manifests, list[Replica], Redis, EnvoyProcess, dict[str, UpstreamServer]],
) -> None:
    m, replicas, redis, envoy, upstreams = stack
    results: list[Result] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        for n in range(100_000):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                status, served_by = chat(envoy.port, k * 100_000 + n)
            except OSError:
                status, served_by = 0, ""
            with lock:
                results.append(Result(started, time.monotonic(), status, served_by))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    victim = replicas[1]
    events: dict[str, float] = {}
    # the timeline is the scenario: traffic runs for set times between the kill and the restart
    time.sleep(KILL_AT)
    events["kill"] = time.monotonic()
    victim.kill()
    events["dead"] = time.monotonic()
    time.sleep(REDIS_DOWN_AT - (time.monotonic() - t0))  # the timeline: traffic after the kill
    events["redis down"] = time.monotonic()
    redis.stop()
    time.sleep(REDIS_DOWN_FOR)  # the timeline: Redis stays down this long
    redis.start()
    events["redis up"] = time.monotonic()
    time.sleep(max(0.0, STOP_AT - (time.monotonic() - t0)))  # the timeline: traffic after the restart
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)

    ok = [r for r in results if r.status == 200]
    failed = [r for r in results if r.status != 200]
    kill = events["kill"]
    # a request fails only when its ext_proc stream was on the killed replica as it died: started
    # before it was dead, ended after the kill; a stream that Envoy opened on the dying replica
    # before it noticed is retried on another one (the ConfigMap's retry_policy)
    in_flight_at_kill = [r for r in failed if r.started <= events["dead"] and r.ended >= kill]
    by_backend = {name: sum(1 for r in ok if r.served_by == name) for name in USAGE}
    print(
        f"\nrehearsal: {len(results)} requests through Envoy in {STOP_AT:.0f} s, {len(ok)} answered "
        f"({by_backend}), {len(failed)} failed (statuses {sorted({r.status for r in failed})}, all in "
        f"flight on the killed replica: {len(in_flight_at_kill) == len(failed)})"
    )
    stats = envoy.stats("cluster.nexus_grpc.(upstream_rq_retry|outlier_detection.ejections_enforced_total)$")
    print(
        f"failed at {[(round(r.started - t0, 3), round(r.ended - t0, 3)) for r in failed]} s, the kill at "
        f"{kill - t0:.3f}-{events['dead'] - t0:.3f} s; envoy: {stats}"
    )
    assert len(ok) > 100
    assert failed == in_flight_at_kill, failed
    assert len(failed) <= CLIENTS
    after_redis = [r for r in ok if r.started > events["redis up"]]
    during_redis = [r for r in ok if events["redis down"] < r.started < events["redis up"]]
    assert after_redis and during_redis  # traffic went on through the outage and after it
    assert {r.served_by for r in ok} == set(USAGE)

    prices = {b["id"]: b["pricing"] for b in m.nexus_toml["backends"] if b["id"] in USAGE}
    cost = {
        name: tokens_in * nano_per_token(prices[name]["input_per_1k"])
        + tokens_out * nano_per_token(prices[name]["output_per_1k"])
        for name, (tokens_in, tokens_out) in USAGE.items()
    }
    expected = sum(count * cost[name] for name, count in by_backend.items())
    # A backend may have answered a request whose client then failed: the killed replica can have
    # charged its usage just before it died, or not at all. Each such request counts once or not.
    lost = {name: len(upstreams[name].received) - by_backend[name] for name in USAGE}
    assert all(n >= 0 for n in lost.values()) and sum(lost.values()) <= len(failed), lost
    allowed = {
        expected + k_a * cost["vllm-a"] + k_b * cost["vllm-b"]
        for k_a in range(lost["vllm-a"] + 1)
        for k_b in range(lost["vllm-b"] + 1)
    }
    month = datetime.now(tz=UTC).strftime("%Y-%m")
    survivors = [r for r in replicas if r is not victim]
    last: dict[str, Any] = {}

    def converged() -> bool:
        client_ = redis.client()
        spent = int(client_.hget(f"nexus:spent:{month}", "global") or 0)
        reserved = int(client_.hget(f"nexus:reserved:{month}", "global") or 0)
        client_.close()
        seen = [r.spent_reserved() for r in survivors]
        last.update(spent=spent, reserved=reserved, seen=seen)
        # the killed replica's reservations expire with their in-flight TTL; spend must already match
        return spent in allowed and all(s == (spent, reserved) for s in seen)

    wait_until(
        converged,
        lambda: (
            f"redis spent {last['spent']} reserved {last['reserved']}; the answered requests cost "
            f"{expected}, those the backends answered for failed clients {lost} ({cost} each); "
            f"replicas {last['seen']}"
        ),
        timeout=20,
        interval=0.2,
    )
    spent, reserved, seen = last["spent"], last["reserved"], last["seen"]
    print(
        f"spend in redis {nano_to_usd(spent):.6f} USD = the answered requests' usage "
        f"{nano_to_usd(expected):.6f} USD"
        f" + {nano_to_usd(spent - expected):.6f} USD of {lost} answered for a failed client; replicas "
        f"agree: {seen}"
    )
    assert reserved <= len(failed) * max(cost.values())  # the killed replica's unsettled Routes only
