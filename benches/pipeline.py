"""In-process decision latency: `DecisionEngine.decide` with every pipeline stage active.

    .venv/bin/python benches/pipeline.py --quick      # < 2 min; writes benches/results/pipeline.json
    .venv/bin/python benches/pipeline.py              # longer runs, steadier tails
    .venv/bin/python benches/pipeline.py --profile    # pyinstrument + cProfile at 100 and 1 000

What one sample is: `await engine.decide(request)` timed with `time.perf_counter_ns` — the snapshot,
all six stages, the verdict, and the Route's side effects (in-flight slot, ledger reservation).
No gRPC, no protobuf. GC stays enabled, as in production. After each sample (untimed) the flight is
expired through `engine.expire_flights()` (the config's in-flight TTL is 1 µs), so in-flight state
does not grow. "100 of 10 000" and "100" are measured interleaved, in alternating blocks, so
machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fleet

from nexus_grpc.app import Runtime
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.domain.decision import Route
from nexus_grpc.engine import DecisionEngine

TTL = 1e-6  # flights expire at once; expire_flights() drops them after every sample


@dataclass
class Case:
    name: str
    serving: int
    other: int = 0
    engine: DecisionEngine | None = None
    samples: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


CASES = {
    "10": (10, 0),
    "100": (100, 0),
    "1000": (1000, 0),
    "10000": (10000, 0),
    "100of10000": (100, 10000),
}
# measured together (alternating blocks) so their ratio is taken side by side
GROUPS = (("10",), ("100", "100of10000"), ("1000",), ("10000",))


async def build_engine(serving: int, other: int = 0) -> DecisionEngine:
    """The production composition (`Runtime`), the bench fleet, its live state seeded."""
    config = _fleet.with_flight_ttl(load_config_text(_fleet.fleet_toml(serving, other), "<bench>"), TTL)
    engine = Runtime(config).engine
    await _fleet.seed_engine(engine, _fleet.plan(serving))
    return engine


def describe(engine: DecisionEngine) -> dict[str, Any]:
    """One Explain: the stage funnel and the verdict, so the result says what was measured."""
    d = engine.explain(_fleet.bench_request("describe"))
    route = d.route
    return {
        "verdict": f"route {route.backend_id} ({route.reason})"
        if isinstance(route, Route)
        else repr(d.verdict),
        "exclusions": len(d.exclusions),
        "budget_status": d.budget.status.name if d.budget is not None else "",
        "funnel": [[s.reconciler, s.candidates_in, s.candidates_out] for s in d.stages],
    }


async def sample(engine: DecisionEngine, n: int, out: list[int] | None, prefix: str) -> None:
    clock = time.perf_counter_ns
    decide = engine.decide
    expire = engine.expire_flights
    for i in range(n):
        request = _fleet.bench_request(f"{prefix}-{i}")
        t0 = clock()
        decision = await decide(request)
        t1 = clock()
        if out is not None:
            out.append(t1 - t0)
        if decision.route is None:
            raise RuntimeError(f"bench fleet must route; got {decision.verdict!r}")
        await expire()
    if len(engine.flights.open) > 2:
        raise RuntimeError(f"in-flight grew to {len(engine.flights.open)}")


def reset_stage_counters(engine: DecisionEngine) -> None:
    p = engine.pipeline
    for name in p.stage_names:
        p.stage_ns[name] = 0
        p.stage_runs[name] = 0


def stage_means(engine: DecisionEngine) -> dict[str, float]:
    p = engine.pipeline
    return {name: p.stage_ns[name] / max(1, p.stage_runs[name]) / 1000 for name in p.stage_names}


async def measure_group(cases: list[Case], budget_s: float, max_n: int, min_n: int) -> None:
    for case in cases:
        assert case.engine is not None
        await sample(case.engine, 50, None, "warm")  # warm caches (chains, policies)
    # calibrate on a short timed run, then size the run to the time budget
    per_case_budget = budget_s / len(cases)
    targets: dict[str, int] = {}
    for case in cases:
        assert case.engine is not None
        probe: list[int] = []
        await sample(case.engine, 100, probe, "cal")
        mean_s = sum(probe) / len(probe) / 1e9
        targets[case.name] = max(min_n, min(max_n, int(per_case_budget / max(mean_s, 1e-7))))
    for case in cases:
        assert case.engine is not None
        reset_stage_counters(case.engine)
    gc.collect()
    block = 500
    remaining = dict(targets)
    k = 0
    while any(remaining.values()):
        for case in cases:
            assert case.engine is not None
            n = min(block, remaining[case.name])
            if n:
                await sample(case.engine, n, case.samples, f"m{k}")
                remaining[case.name] -= n
        k += 1
    for case in cases:
        assert case.engine is not None
        case.info["stages_us"] = stage_means(case.engine)


async def run(names: list[str], quick: bool) -> dict[str, Any]:
    budget_s, max_n, min_n = (13.0, 40_000, 300) if quick else (45.0, 300_000, 2_000)
    results: list[dict[str, Any]] = []
    for group in GROUPS:
        chosen = [name for name in group if name in names]
        if not chosen:
            continue
        cases = []
        for name in chosen:
            serving, other = CASES[name]
            t0 = time.perf_counter()
            case = Case(name, serving, other, await build_engine(serving, other))
            case.info["build_s"] = round(time.perf_counter() - t0, 2)
            assert case.engine is not None
            case.info.update(describe(case.engine))
            cases.append(case)
        await measure_group(cases, budget_s * len(cases), max_n, min_n)
        for case in cases:
            stats = _fleet.percentiles(case.samples)
            stage = case.info["stages_us"]
            stages_total = sum(stage.values())
            results.append(
                {
                    "case": case.name,
                    "serving": case.serving,
                    "other": case.other,
                    **stats,
                    "stages_us": stage,
                    "engine_overhead_us": stats["mean_us"] - stages_total,
                    **{k: v for k, v in case.info.items() if k != "stages_us"},
                }
            )
            case.engine = None
            case.samples = []
        gc.collect()
    return {"bench": "pipeline", "machine": _fleet.machine(), "quick": quick, "cases": results}


def targets(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {c["case"]: c for c in cases}
    out: list[dict[str, Any]] = []
    if "100" in by:
        out.append(
            {
                "target": "100 candidates p50 <= 30 us",
                "measured": by["100"]["p50_us"],
                "met": by["100"]["p50_us"] <= 30,
            }
        )
        out.append(
            {
                "target": "100 candidates p99 <= 100 us",
                "measured": by["100"]["p99_us"],
                "met": by["100"]["p99_us"] <= 100,
            }
        )
    if "1000" in by:
        out.append(
            {
                "target": "1000 candidates p99 <= 1000 us",
                "measured": by["1000"]["p99_us"],
                "met": by["1000"]["p99_us"] <= 1000,
            }
        )
    if "100" in by and "100of10000" in by:
        ratio = by["100of10000"]["p50_us"] / by["100"]["p50_us"]
        out.append(
            {"target": "100 among 10000 p50 within 10% of 100 alone", "measured": ratio, "met": ratio <= 1.10}
        )
    return out


def print_report(payload: dict[str, Any]) -> None:
    cases = payload["cases"]
    rows = [
        [
            c["case"],
            str(c["n"]),
            f"{c['p50_us']:.1f}",
            f"{c['p99_us']:.1f}",
            f"{c['p999_us']:.1f}",
            f"{c['mean_us']:.1f}",
            str(c["exclusions"]),
        ]
        for c in cases
    ]
    print(_fleet.table(["case", "n", "p50 us", "p99 us", "p99.9 us", "mean us", "excl"], rows))
    print()
    if cases:
        names = list(cases[0]["stages_us"])
        rows = [
            [c["case"], *(f"{c['stages_us'][s]:.1f}" for s in names), f"{c['engine_overhead_us']:.1f}"]
            for c in cases
        ]
        short = [s.replace("Reconciler", "").replace("RequestAnalyzer", "Analyzer") for s in names]
        print("mean per-stage time (us), from Pipeline.stage_ns / stage_runs:")
        print(_fleet.table(["case", *short, "rest"], rows))
        print()
    for t in payload["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}: {t['measured']:.2f}")


async def profile(sizes: list[int], seconds: float) -> None:
    """pyinstrument (statistical) and cProfile (deterministic, call counts) per size."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: .venv/bin/pip install pyinstrument", file=sys.stderr)
        raise SystemExit(2) from None
    _fleet.RESULTS.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        engine = await build_engine(size)
        await sample(engine, 200, None, "warm")
        probe: list[int] = []
        await sample(engine, 100, probe, "cal")
        n = max(200, int(seconds / (sum(probe) / len(probe) / 1e9)))
        profiler = Profiler(interval=0.0001, async_mode="disabled")
        profiler.start()
        await sample(engine, n, None, "pyi")
        profiler.stop()
        text = profiler.output_text(show_all=False, short_mode=False)
        (_fleet.RESULTS / f"profile_{size}_pyinstrument.txt").write_text(text, encoding="utf-8")
        prof = cProfile.Profile()
        prof.enable()
        await sample(engine, n // 4, None, "cpr")
        prof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(30)
        (_fleet.RESULTS / f"profile_{size}_cprofile.txt").write_text(buf.getvalue(), encoding="utf-8")
        print(f"profile at {size} candidates ({n} decisions): benches/results/profile_{size}_*.txt")
        print(profiler.output_text(short_mode=True))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 13 s per case (whole run < 2 min)")
    parser.add_argument(
        "--only", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}"
    )
    parser.add_argument("--profile", action="store_true", help="profile at 100 and 1000 candidates instead")
    parser.add_argument("--profile-sizes", default="100,1000")
    parser.add_argument("--out", default="pipeline", help="result name under benches/results/")
    args = parser.parse_args()
    if args.profile:
        asyncio.run(profile([int(s) for s in args.profile_sizes.split(",")], 6.0))
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}")
    t0 = time.perf_counter()
    watch = _fleet.CpuWatch()
    payload = asyncio.run(run(names, args.quick))
    payload["other_processes_cpu_cores"] = round(watch.other_cores(), 2)
    payload["targets"] = targets(payload["cases"])
    payload["wall_s"] = round(time.perf_counter() - t0, 1)
    path = _fleet.write_result(args.out, payload)
    print_report(payload)
    print(f"\nwrote {path} in {payload['wall_s']} s (code {payload['machine']['code']})")
    _fleet.noise_note(payload["other_processes_cpu_cores"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
