"""Runs inside one LiteLLM venv (made by benches/peer.py): LiteLLM's Router and our engine in this
one process, timed in alternating blocks. Prints one JSON object on stdout.

    benches/.venv-litellm-<version>/bin/python benches/_peer_driver.py --seconds 8

nexus_grpc is imported from the repository (peer.py puts it on PYTHONPATH; this venv holds
LiteLLM and nexus-grpc's runtime dependencies only).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # the cost map shipped in the wheel
os.environ.setdefault("LITELLM_LOG", "ERROR")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import _fleet

from nexus_grpc.app import Runtime
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.domain.decision import Route
from nexus_grpc.engine import DecisionEngine

N_DEPLOYMENTS = 100
MESSAGES = [{"role": "user", "content": "Summarise the attached report in three bullet points."}]
STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing-v2")
Call = Callable[[int], Awaitable[None]]
After = Callable[[], Awaitable[Any]] | None  # untimed, after each call

# Every outgoing connection attempt while measuring is counted (and refused): selection must be
# in-process only, and a router that phones home would be measuring the network.
CONNECTS: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        CONNECTS.append(repr(args[1]))
        raise ConnectionRefusedError("the peer bench allows no connections")


def litellm_router(strategy: str) -> Any:
    import litellm
    from litellm.router import Router

    litellm.suppress_debug_info = True
    model_list = [
        {
            "model_name": _fleet.MODEL,
            "litellm_params": {
                "model": f"openai/{_fleet.MODEL}",
                "api_base": f"http://127.0.0.1:9/v1/d{i}",  # never called
                "api_key": "sk-fake",
                "rpm": 10_000,  # usage-based routing checks its counts against these
                "tpm": 10_000_000,
            },
            "model_info": {"id": f"d{i}"},
        }
        for i in range(N_DEPLOYMENTS)
    ]
    return Router(model_list=model_list, routing_strategy=strategy)


def litellm_call(router: Any, entry: str) -> Call:
    """`async_get_available_deployment` (the per-request pick of LiteLLM's proxy up to 1.10x; a
    deprecated shim over `select` in 1.110, which picks without a least-busy reservation), or
    `select` (what the 1.110 proxy calls per request)."""
    if entry == "select":
        select = router.select

        async def call(i: int) -> None:
            if await select(_fleet.MODEL, {}, messages=MESSAGES) is None:
                raise RuntimeError("LiteLLM returned no deployment")

        return call
    pick = router.async_get_available_deployment

    async def call(i: int) -> None:
        if await pick(model=_fleet.MODEL, messages=MESSAGES, request_kwargs={}) is None:
            raise RuntimeError("LiteLLM returned no deployment")

    return call


def nexus_call(engine: DecisionEngine, model: str) -> Call:
    decide = engine.decide

    async def call(i: int) -> None:
        decision = await decide(_fleet.bench_request(f"peer-{i}", model))
        if type(decision.verdict) is not Route:
            raise RuntimeError(f"expected a route, got {decision.verdict!r}")

    return call


async def build_full() -> DecisionEngine:
    config = _fleet.with_flight_ttl(load_config_text(_fleet.fleet_toml(N_DEPLOYMENTS), "<bench>"), 1e-6)
    engine = Runtime(config).engine
    await _fleet.seed_engine(engine, _fleet.plan(N_DEPLOYMENTS))
    return engine


async def build_plain() -> DecisionEngine:
    config = _fleet.with_flight_ttl(load_config_text(_fleet.plain_toml(N_DEPLOYMENTS), "<bench-plain>"), 1e-6)
    return Runtime(config).engine


async def run(seconds: float, strategies: list[str]) -> dict[str, Any]:
    contenders: dict[str, tuple[Call, After]] = {}
    full, plain = await build_full(), await build_plain()
    # the flight TTL is 1 µs: expire_flights (untimed) frees each Route's slot, as in pipeline.py
    contenders["nexus full"] = (nexus_call(full, ""), full.expire_flights)
    contenders["nexus plain"] = (nexus_call(plain, _fleet.MODEL), plain.expire_flights)
    errors: dict[str, str] = {}
    from litellm.router import Router

    entries = ["async_get_available_deployment"] + (["select"] if hasattr(Router, "select") else [])
    for strategy in strategies:
        for entry in entries:
            name = f"litellm {strategy}" + (" [select]" if entry == "select" else "")
            try:
                call = litellm_call(litellm_router(strategy), entry)  # one router per contender
                await call(0)
            except Exception as exc:  # a strategy this version does not have, or cannot run here
                errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            contenders[name] = (call, None)
    sys.addaudithook(_audit)
    # warm up, then size each contender's run to its share of the time
    targets: dict[str, int] = {}
    for name, (call, after) in contenders.items():
        for i in range(200):
            await call(i)
            if after is not None:
                await after()
        spent = 0
        for i in range(300):
            t0 = time.perf_counter_ns()
            await call(i)
            spent += time.perf_counter_ns() - t0
            if after is not None:
                await after()
        mean_s = spent / 300 / 1e9
        targets[name] = max(1000, min(200_000, int(seconds / mean_s)))
    samples: dict[str, list[int]] = {name: [] for name in contenders}
    gc.collect()
    clock = time.perf_counter_ns
    block, k = 200, 0
    while any(len(samples[n]) < targets[n] for n in contenders):
        for name, (call, after) in contenders.items():
            out = samples[name]
            for _ in range(min(block, targets[name] - len(out))):
                k += 1
                t0 = clock()
                await call(k)
                out.append(clock() - t0)
                if after is not None:
                    await after()
    info = {
        "full": full.explain(_fleet.bench_request("describe")).route,
        "plain": plain.explain(_fleet.bench_request("describe", _fleet.MODEL)).route,
    }
    return {
        "litellm_version": version("litellm"),
        "entries": entries,
        "python": sys.version.split()[0],
        "deployments": N_DEPLOYMENTS,
        "results": [{"contender": name, **_fleet.percentiles(s)} for name, s in samples.items()],
        "strategy_errors": errors,
        "connections_refused": CONNECTS,
        "indexed_decisions": {
            "nexus full": full.pipeline.stage_runs.get("RouteIndex", 0),
            "nexus plain": plain.pipeline.stage_runs.get("RouteIndex", 0),
        },
        "routes": {k: f"{v.backend_id} ({v.reason})" if v is not None else "" for k, v in info.items()},
    }


def main() -> int:
    # 1.110 warns on every async_get_available_deployment call; shown or not, the call is timed
    warnings.simplefilter("ignore", DeprecationWarning)
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="of samples per contender")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args()
    payload = asyncio.run(run(args.seconds, [s for s in args.strategies.split(",") if s]))
    print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
