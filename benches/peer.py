"""Versus a peer: LiteLLM's in-process `Router` and our pipeline on 100 deployments of one model.

    .venv/bin/pip install litellm==1.100.5          # the bench extra; NEVER another version
    .venv/bin/python benches/peer.py --quick        # about 1 min; writes benches/results/peer.json

LiteLLM (pinned 1.100.5): `await Router.async_get_available_deployment(model=..., messages=...,
request_kwargs={})` with `simple-shuffle`, `least-busy` and `latency-based-routing`, over 100
deployments with fake `api_base`/`api_key` (nothing is called: selection only). The cost map is the
local copy (`LITELLM_LOCAL_MODEL_COST_MAP=True`), so nothing is fetched.

Ours, in the same process and run: `await DecisionEngine.decide(request)` (snapshot, every stage,
verdict, in-flight slot, reservation; the flight expired afterwards, untimed) on
- `nexus full`: the bench fleet of benches/pipeline.py at 100 backends, every stage active, and
- `nexus plain`: 100 healthy open backends, smart strategy, no policy, budget or stats — the same
  knowledge LiteLLM's Router has.
All contenders run interleaved, in alternating blocks, so machine noise hits them alike. The
ratio is LiteLLM's microseconds per decision over ours (p50 and mean; > 1 means we are faster).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fleet
import pipeline

from nexus_grpc.app import Runtime
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.engine import DecisionEngine

PINNED = "1.100.5"
STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing")
N_DEPLOYMENTS = 100
MESSAGES = [{"role": "user", "content": "Summarise the attached report in three bullet points."}]

Call = Callable[[int], Awaitable[None]]


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
            },
            "model_info": {"id": f"d{i}"},
        }
        for i in range(N_DEPLOYMENTS)
    ]
    return Router(model_list=model_list, routing_strategy=strategy)  # type: ignore[arg-type]


def litellm_call(router: Any) -> Call:
    async def call(i: int) -> None:
        deployment = await router.async_get_available_deployment(
            model=_fleet.MODEL, messages=MESSAGES, request_kwargs={}
        )
        if deployment is None:
            raise RuntimeError("LiteLLM returned no deployment")

    return call


def nexus_call(engine: DecisionEngine, model: str) -> Call:
    async def call(i: int) -> None:
        decision = await engine.decide(_fleet.bench_request(f"peer-{i}", model))
        if decision.route is None:
            raise RuntimeError(f"expected a route, got {decision.verdict!r}")

    return call


async def nexus_plain() -> DecisionEngine:
    config = _fleet.with_flight_ttl(load_config_text(_fleet.plain_toml(N_DEPLOYMENTS), "<bench-plain>"), 1e-6)
    return Runtime(config).engine


async def run(quick: bool) -> dict[str, Any]:
    import litellm

    version = getattr(litellm, "version", None) or _installed_version()
    contenders: dict[str, tuple[Call, DecisionEngine | None]] = {}
    full = await pipeline.build_engine(N_DEPLOYMENTS)
    plain = await nexus_plain()
    contenders["nexus full (every stage)"] = (nexus_call(full, ""), full)
    contenders["nexus plain"] = (nexus_call(plain, _fleet.MODEL), plain)
    for strategy in STRATEGIES:
        contenders[f"litellm {strategy}"] = (litellm_call(litellm_router(strategy)), None)
    budget_s = 8.0 if quick else 30.0
    block = 200
    samples: dict[str, list[int]] = {name: [] for name in contenders}
    # warm up and size each contender's run to its share of the time budget
    targets: dict[str, int] = {}
    for name, (call, engine) in contenders.items():
        probe: list[int] = []
        for i in range(300):
            t0 = time.perf_counter_ns()
            await call(i)
            probe.append(time.perf_counter_ns() - t0)
            if engine is not None:
                await engine.expire_flights()
        mean_s = sum(probe[100:]) / len(probe[100:]) / 1e9
        targets[name] = max(1000, min(100_000, int(budget_s / mean_s)))
    gc.collect()
    clock = time.perf_counter_ns
    k = 0
    while any(len(samples[n]) < targets[n] for n in contenders):
        for name, (call, engine) in contenders.items():
            out = samples[name]
            for _ in range(min(block, targets[name] - len(out))):
                k += 1
                t0 = clock()
                await call(k)
                out.append(clock() - t0)
                if engine is not None:
                    await engine.expire_flights()
    rows: list[dict[str, Any]] = []
    for name in contenders:
        rows.append({"contender": name, **_fleet.percentiles(samples[name])})
    ours = {r["contender"]: r for r in rows if r["contender"].startswith("nexus")}
    ratios = []
    for r in rows:
        if not r["contender"].startswith("litellm"):
            continue
        for our_name, our in ours.items():
            ratios.append(
                {
                    "litellm": r["contender"],
                    "nexus": our_name,
                    "p50_ratio": r["p50_us"] / our["p50_us"],
                    "mean_ratio": r["mean_us"] / our["mean_us"],
                }
            )
    return {
        "bench": "peer",
        "machine": _fleet.machine(),
        "quick": quick,
        "litellm_version": version,
        "deployments": N_DEPLOYMENTS,
        "results": rows,
        "ratios": ratios,
    }


def _installed_version() -> str:
    from importlib.metadata import version

    return version("litellm")


def report(payload: dict[str, Any]) -> None:
    rows = [
        [r["contender"], str(r["n"]), f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['mean_us']:.1f}"]
        for r in payload["results"]
    ]
    print(
        f"LiteLLM {payload['litellm_version']} vs nexus-grpc, "
        f"{payload['deployments']} deployments, in-process"
    )
    print(_fleet.table(["contender", "n", "p50 us", "p99 us", "mean us"], rows))
    print()
    rows = [
        [r["litellm"], r["nexus"], f"{r['p50_ratio']:.2f}x", f"{r['mean_ratio']:.2f}x"]
        for r in payload["ratios"]
    ]
    print("LiteLLM us per decision / ours (> 1: we are faster):")
    print(_fleet.table(["litellm", "nexus", "p50", "mean"], rows))
    print()
    for t in payload["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}: {t['measured']:.2f}")


def targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in payload["ratios"]:
        if r["nexus"].startswith("nexus full"):
            out.append(
                {
                    "target": f">= 10x faster than {r['litellm']} (every stage, p50)",
                    "measured": r["p50_ratio"],
                    "met": r["p50_ratio"] >= 10,
                }
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 8 s of samples per contender")
    parser.add_argument("--out", default="peer", help="result name under benches/results/")
    args = parser.parse_args()
    try:
        installed = _installed_version()
    except Exception:
        installed = ""
    if installed != PINNED:
        print(
            f"peer bench: needs litellm=={PINNED} (found {installed or 'none'}). "
            "Install exactly that version:\n"
            f"    .venv/bin/pip install litellm=={PINNED}\n"
            "Do not install any other version (some were malicious releases).",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    watch = _fleet.CpuWatch()
    payload = asyncio.run(run(args.quick))
    payload["other_processes_cpu_cores"] = round(watch.other_cores(), 2)
    payload["targets"] = targets(payload)
    payload["wall_s"] = round(time.perf_counter() - t0, 1)
    path = _fleet.write_result(args.out, payload)
    report(payload)
    print(f"\nwrote {path} in {payload['wall_s']} s (code {payload['machine']['code']})")
    _fleet.noise_note(payload["other_processes_cpu_cores"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
