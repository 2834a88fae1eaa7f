"""In-process decision latency: `DecisionEngine.decide` for a Route, a Queue and a Reject, and
the encoding of its Decide response, at 10 / 100 / 1 000 / 10 000 candidates.

    ./dev bench pipeline --quick      # ~1.5 min; writes benches/results/pipeline.json
    ./dev bench pipeline              # longer runs, steadier tails (~10 min)
    ./dev bench pipeline --profile    # pyinstrument + cProfile, Route at 100 and 1 000

One sample is `await engine.decide(request)` timed with `time.perf_counter_ns` (the snapshot, the
route index or the stages, the verdict, a Route's side effects: decision id, in-flight slot; the
metrics) and, timed apart right after it,
`servicers.wire.ResponseEncoder.decide_response(decision)` (the bytes Decide sends). No gRPC.
GC stays enabled, as in production.

- route: the bench fleet (every stage has work) and its request; the route index decides
  (`Pipeline.stage_runs["RouteIndex"]` counts how many decisions it took).
- queue: the same fleet, but every backend that would take the request is LOADING or SATURATED:
  the index finds no survivor, the stages run one by one and the decision carries every reason.
- reject: the same fleet; the request needs `vision`, which no backend has: every candidate gets
  a reason (privacy, tier, quality or the missing capability), all of them built.
- route-100of10000: 100 candidates among 10 000 backends serving 100 other models.

Cases of one size are measured interleaved, in alternating blocks, so machine noise hits them
alike. After each Route sample (untimed) its flight is expired through `engine.expire_flights()`
(the bench config's in-flight TTL is 1 µs, below the loader's minimum of 1 s), so every sample
starts from the same state.
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
from nexus_grpc.domain.decision import Decision, Queue, Reject, Route
from nexus_grpc.domain.request import DecisionRequest
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.pipeline import intent as intent_module
from nexus_grpc.pipeline.executor import INDEX
from nexus_grpc.servicers.wire import ResponseEncoder

TTL = 1e-6  # flights expire at once; expire_flights() drops them after every sample
VERDICTS: dict[str, type] = {"route": Route, "queue": Queue, "reject": Reject}


@dataclass(frozen=True)
class Spec:
    kind: str  # route | queue | reject
    serving: int
    other: int = 0


CASES: dict[str, Spec] = {}
for _n in (10, 100, 1000, 10000):
    CASES[f"route-{_n}"] = Spec("route", _n)
    if _n == 100:
        CASES["route-100of10000"] = Spec("route", 100, 10000)
    CASES[f"queue-{_n}"] = Spec("queue", _n)
    CASES[f"reject-{_n}"] = Spec("reject", _n)
# measured together (alternating blocks): the cases of one size
GROUPS = (
    ("route-10", "queue-10", "reject-10"),
    ("route-100", "route-100of10000", "queue-100", "reject-100"),
    ("route-1000", "queue-1000", "reject-1000"),
    ("route-10000", "queue-10000", "reject-10000"),
)


@dataclass
class Case:
    name: str
    spec: Spec
    engine: DecisionEngine
    decide_ns: list[int] = field(default_factory=list)
    encode_ns: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    k: int = 0
    encoder: ResponseEncoder = field(default_factory=ResponseEncoder)  # as a servicer owns one

    def request(self) -> DecisionRequest:
        self.k += 1
        return _fleet.bench_request(f"{self.name}-{self.k}", needs_vision=self.spec.kind == "reject")


async def build_engine(
    serving: int, other: int = 0, *, queue: bool = False, strategy: str = "smart"
) -> DecisionEngine:
    """The production composition (`Runtime`), the bench fleet, its live state seeded."""
    text = _fleet.fleet_toml(serving, other, queue=queue, strategy=strategy)
    config = _fleet.with_flight_ttl(load_config_text(text, "<bench>"), TTL)
    engine = Runtime(config).engine
    await _fleet.seed_engine(engine, _fleet.plan(serving, queue=queue))
    return engine


def describe(decision: Decision, explained: Decision) -> dict[str, Any]:
    """What was measured: the verdict, the reasons carried and the stage funnel (from Explain)."""
    v = decision.verdict
    if isinstance(v, Route):
        verdict = f"route {v.backend_id} ({v.reason})"
    elif isinstance(v, Queue):
        verdict = f"queue {v.reason} wait {v.estimated_wait_ms} ms"
    else:
        verdict = f"reject {v.code.name}"
    body = ResponseEncoder().decide_response(decision)
    return {
        "verdict": verdict,
        "excluded": decision.exclusion_count,
        "reasons_built": len(decision.exclusions),
        "response_bytes": len(body),
        "budget_status": decision.budget.status.name if decision.budget is not None else "",
        "funnel": [[s.reconciler, s.candidates_in, s.candidates_out] for s in explained.stages],
    }


async def sample(case: Case, n: int, *, record: bool, seconds: float = 1e9) -> int:
    """Up to `n` samples, stopping after `seconds`; returns how many were taken."""
    clock = time.perf_counter_ns
    decide = case.engine.decide
    expire = case.engine.expire_flights
    want = VERDICTS[case.spec.kind]
    deadline = clock() + int(seconds * 1e9)
    decide_out, encode_out = case.decide_ns, case.encode_ns
    decide_response = case.encoder.decide_response
    done = 0
    while done < n:
        request = case.request()
        t0 = clock()
        decision = await decide(request)
        t1 = clock()
        decide_response(decision)
        t2 = clock()
        if record:
            decide_out.append(t1 - t0)
            encode_out.append(t2 - t1)
        if type(decision.verdict) is not want:
            raise RuntimeError(f"{case.name}: expected a {want.__name__}, got {decision.verdict!r}")
        await expire()
        done += 1
        if t2 > deadline:
            break
    if len(case.engine.flights.open) > 2:
        raise RuntimeError(f"in-flight grew to {len(case.engine.flights.open)}")
    return done


def reset_stage_counters(engine: DecisionEngine) -> None:
    p = engine.pipeline
    for name in p.stage_names:
        p.stage_ns[name] = 0
        p.stage_runs[name] = 0
    p.stage_ns[INDEX] = 0
    p.stage_runs[INDEX] = 0


def stage_means(engine: DecisionEngine) -> tuple[dict[str, float], dict[str, int]]:
    """Mean µs per run of each stage (and of the route index), and how many runs each had."""
    p = engine.pipeline
    names = [INDEX, *p.stage_names]
    runs = {name: p.stage_runs.get(name, 0) for name in names}
    means = {name: p.stage_ns.get(name, 0) / max(1, runs[name]) / 1000 for name in names}
    return means, runs


async def measure_group(cases: list[Case], per_case_s: float, max_n: int) -> None:
    for case in cases:
        await sample(case, 200, record=False, seconds=2.0)  # warm caches (ranked sets, memos)
    # calibrate on a short timed run, then size each case's run to its share of the time
    targets: dict[str, int] = {}
    for case in cases:
        t0 = time.perf_counter()
        n = await sample(case, 200, record=False, seconds=1.0)
        mean_s = (time.perf_counter() - t0) / n
        targets[case.name] = max(20, min(max_n, int(per_case_s / mean_s)))
    for case in cases:
        reset_stage_counters(case.engine)
    gc.collect()
    remaining = dict(targets)
    while any(remaining.values()):
        for case in cases:
            n = remaining[case.name]
            if n:
                remaining[case.name] -= await sample(case, min(500, n), record=True, seconds=0.25)
    for case in cases:
        case.info["stages_us"], case.info["stage_runs"] = stage_means(case.engine)


async def run(names: list[str], quick: bool, strategy: str) -> dict[str, Any]:
    per_case_s, max_n = (6.0, 40_000) if quick else (30.0, 300_000)
    results: list[dict[str, Any]] = []
    for group in GROUPS:
        chosen = [name for name in group if name in names]
        if not chosen:
            continue
        cases = []
        for name in chosen:
            spec = CASES[name]
            t0 = time.perf_counter()
            engine = await build_engine(
                spec.serving, spec.other, queue=spec.kind == "queue", strategy=strategy
            )
            case = Case(name, spec, engine)
            case.info["build_s"] = round(time.perf_counter() - t0, 2)
            first = await case.engine.decide(case.request())
            case.info.update(describe(first, case.engine.explain(case.request())))
            await case.engine.expire_flights()
            cases.append(case)
        print(f"measuring {', '.join(chosen)} ...", flush=True)
        await measure_group(cases, per_case_s, max_n)
        for case in cases:
            decide = _fleet.percentiles(case.decide_ns)
            encode = _fleet.percentiles(case.encode_ns)
            total = _fleet.percentiles([a + b for a, b in zip(case.decide_ns, case.encode_ns, strict=True)])
            runs = case.info["stage_runs"]
            staged_us = sum(case.info["stages_us"][s] * runs[s] for s in runs) / max(1, decide["n"])
            results.append(
                {
                    "case": case.name,
                    "kind": case.spec.kind,
                    "serving": case.spec.serving,
                    "other": case.spec.other,
                    **decide,
                    "encode": encode,
                    "decide_and_encode": total,
                    "indexed_decisions": runs[INDEX],
                    "staged_decisions": max(runs[s] for s in case.engine.pipeline.stage_names),
                    # mean decide time outside the stages and the index's own timing: snapshot,
                    # a failed index attempt, executor, verdict (queue wait), side effects, metrics
                    "outside_stages_us": decide["mean_us"] - staged_us,
                    **{k: v for k, v in case.info.items() if k != "stage_runs"},
                }
            )
        for case in cases:
            case.decide_ns, case.encode_ns = [], []
        del cases
        gc.collect()
    return {
        "bench": "pipeline",
        "machine": _fleet.machine(),
        "quick": quick,
        "strategy": strategy,
        "cases": results,
    }


def targets(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {c["case"]: c for c in cases}
    out: list[dict[str, Any]] = []

    def check(case: str, key: str, limit: float, label: str) -> None:
        if case in by:
            value = by[case][key]
            out.append({"target": label, "measured": value, "met": value <= limit})

    check("route-100", "p50_us", 20, "Route at 100 candidates: p50 <= 20 us")
    check("route-1000", "p50_us", 30, "Route at 1 000 candidates: p50 <= 30 us")
    check("route-1000", "p99_us", 60, "Route at 1 000 candidates: p99 <= 60 us")
    check("queue-1000", "p99_us", 1000, "Queue at 1 000 candidates: p99 <= 1 000 us")
    check("reject-1000", "p99_us", 1000, "Reject at 1 000 candidates: p99 <= 1 000 us")
    if "route-100" in by and "route-100of10000" in by:
        ratio = by["route-100of10000"]["p50_us"] / by["route-100"]["p50_us"]
        out.append(
            {
                "target": "Route, 100 among 10 000: p50 within 10 % of 100 alone (ratio)",
                "measured": ratio,
                "met": ratio <= 1.10,
            }
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
            f"{c['encode']['p50_us']:.1f}",
            f"{c['encode']['p99_us']:.1f}",
            f"{c['decide_and_encode']['p50_us']:.1f}",
            f"{c['decide_and_encode']['p99_us']:.1f}",
            f"{c['excluded']}/{c['reasons_built']}",
            f"{c['indexed_decisions']}/{c['staged_decisions']}",
        ]
        for c in cases
    ]
    print("decide: engine.decide; encode: wire.decide_response; us. excluded/built: exclusions in the")
    print("decision / reasons built; index/stages: decisions the route index took / stage-by-stage runs")
    headers = ["case", "n", "p50", "p99", "p99.9", "enc p50", "enc p99", "both p50", "both p99"]
    print(_fleet.table([*headers, "excluded/built", "index/stages"], rows))
    print()
    for c in cases:
        print(f"  {c['case']}: {c['verdict']}; funnel {c['funnel']}")
    print()
    if cases:
        names = list(cases[0]["stages_us"])
        short = [s.replace("Reconciler", "").replace("RequestAnalyzer", "Analyzer") for s in names]
        rows = [
            [c["case"], *(f"{c['stages_us'][s]:.1f}" for s in names), f"{c['outside_stages_us']:.1f}"]
            for c in cases
        ]
        print("mean time per run (us), Pipeline.stage_ns / stage_runs (RouteIndex: the indexed path);")
        print("rest: mean decide time outside them (snapshot, failed index attempt, verdict, side effects)")
        print(_fleet.table(["case", *short, "rest"], rows))
        print()
    for t in payload["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}: {t['measured']:.2f}")


async def profile(sizes: list[int], seconds: float) -> None:
    """pyinstrument (statistical) and cProfile (deterministic, call counts) of Route per size."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: ./dev bench installs the bench extra", file=sys.stderr)
        raise SystemExit(2) from None
    _fleet.RESULTS.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        case = Case(f"route-{size}", Spec("route", size), await build_engine(size))
        await sample(case, 2000, record=False, seconds=2.0)
        t0 = time.perf_counter()
        k = await sample(case, 2000, record=False, seconds=1.0)
        n = max(200, int(seconds / ((time.perf_counter() - t0) / k)))
        profiler = Profiler(interval=0.0001, async_mode="disabled")
        profiler.start()
        await sample(case, n, record=False)
        profiler.stop()
        text = profiler.output_text(show_all=False, short_mode=False)
        (_fleet.RESULTS / f"profile_{size}_pyinstrument.txt").write_text(text, encoding="utf-8")
        prof = cProfile.Profile()
        prof.enable()
        await sample(case, n // 4, record=False)
        prof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(30)
        (_fleet.RESULTS / f"profile_{size}_cprofile.txt").write_text(buf.getvalue(), encoding="utf-8")
        print(f"profile of Route at {size} candidates ({n} decisions): benches/results/profile_{size}_*.txt")
        print(profiler.output_text(short_mode=True))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 6 s per case (whole run ~1.5 min)")
    parser.add_argument(
        "--only", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}"
    )
    parser.add_argument("--strategy", default="smart", choices=("smart", "priority_only"))
    parser.add_argument(
        "--profile", action="store_true", help="profile Route at 100 and 1000 candidates instead"
    )
    parser.add_argument("--profile-sizes", default="100,1000")
    parser.add_argument("--out", default="", help="result name under benches/results/ (default pipeline)")
    args = parser.parse_args()
    if intent_module.VERIFY:
        parser.error("NEXUS_VERIFY is set: every indexed decision would be decided twice; unset it")
    if args.profile:
        asyncio.run(profile([int(s) for s in args.profile_sizes.split(",")], 6.0))
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}")
    t0 = time.perf_counter()
    watch = _fleet.CpuWatch()
    payload = asyncio.run(run(names, args.quick, args.strategy))
    payload["other_processes_cpu_cores"] = round(watch.other_cores(), 2)
    payload["targets"] = targets(payload["cases"]) if args.strategy == "smart" else []
    payload["wall_s"] = round(time.perf_counter() - t0, 1)
    default = "pipeline" if args.strategy == "smart" else f"pipeline_{args.strategy}"
    path = _fleet.write_result(args.out or default, payload)
    print_report(payload)
    print(f"\nwrote {path} in {payload['wall_s']} s (code {payload['machine']['code']})")
    _fleet.noise_note(payload["other_processes_cpu_cores"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
