"""End to end over gRPC on loopback: nexus-grpc's Decide next to no-work handlers on the same stack,
and Decide on a small fleet next to Decide on a large one — every server measured in one run,
in alternating rounds (A B A B), so machine noise hits them alike.

    ./dev bench e2e --quick                          # ~3 min; writes benches/results/e2e.json
    ./dev bench e2e                                  # 8 s per point, 3 rounds: ~8 min
    ./dev bench e2e --quick --profile-server 6       # + py-spy of the server (e2e_server_profile.txt)

Servers, started here on free loopback ports, one process each, uvloop:
- `raw`: benches/empty_server.py --mode raw — an empty handler returning raw bytes (the grpc.aio floor);
- `proto`: --mode proto — decodes the DecideRequest, encodes a minimal DecideResponse (the
  protobuf floor of a Decide);
- `proto+interceptor`: the same with one pass-through grpc.aio interceptor (its price);
- `nexus-2`: `nexus-grpc serve` on a 2-backend fleet (healthy, restricted, tier 3, the bench
  policies and budget: the Decide routes, the budget is at its soft limit);
- `nexus-1000`: the bench fleet of benches/_fleet.py at 1 000 backends serving the model (mixed
  health applied with SetBackendState) plus 2 000 backends serving 100 other models.

Each point is h2load sending one pre-encoded gRPC frame for a fixed time after a warm-up. Levels:
`c=1` (1 connection, 1 stream) and `c=8` (8 connections x 8 concurrent streams: 64 in flight).
Latency comes from h2load's per-request log, the server's CPU per request from /proc. h2load counts
HTTP 200 as success and a gRPC error is HTTP 200 too, so the nexus servers' own counters
(Prometheus, scraped between points) say what each point decided: Routes, Queues, Rejects, and how
many the route index took. Every Route holds its in-flight slot until its TTL (1 s, the minimum;
h2load cannot report outcomes), so in flight grows to about rps x 1-2 s; the 2-backend fleet has no
concurrency limits (never SATURATED), and the counters show when anything but a Route was decided.
Then a nexus-grpc with 10 000 backends is started for its RSS and startup time. Every process
started here is stopped before the script exits.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fleet
import grpc

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import registry_pb2_grpc as rgrpc
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.domain.enums import BackendStatus

HERE = Path(__file__).resolve().parent
LEVELS: dict[str, tuple[int, int]] = {"1": (1, 1), "8": (8, 8)}  # name -> (connections, streams each)
DECIDE = "/nexus.v1.DecisionService/Decide"
EXPLAIN = "/nexus.v1.DecisionService/Explain"
OUTCOME = "/nexus.v1.DecisionService/ReportOutcome"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TTL_SECONDS = 1.0  # the loader's minimum in-flight TTL
BIG_SERVING, BIG_OTHER = 1000, 2000


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nexus_command(config: Path, port: int) -> list[str]:
    exe = Path(sys.executable).parent / "nexus-grpc"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "nexus_grpc.cli"]
    return [
        *base,
        "--log-level",
        "WARNING",
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
    ]


@contextmanager
def process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd` in its own process group; stop it (TERM, then KILL) on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            try:
                grpc.channel_ready_future(ch).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                pass
    raise RuntimeError(f"server on port {port} not ready after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (utime + stime) of the process group `pid` leads: the server and its workers
    (`serve --workers N` forks them; every server here is started in a session of its own)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except (OSError, UnicodeDecodeError):
            continue
        if int(fields[2]) == pid:  # pgrp
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


# --- requests ----------------------------------------------------------------------------------


def decide_request() -> dpb.DecideRequest:
    # h2load repeats one frame: every Decide carries this request id, and each is a new decision
    # with its own decision id and in-flight slot (held until the TTL: nothing reports them)
    return dpb.DecideRequest(request_id="bench-e2e", **_fleet.REQUEST_FIELDS)


def explain_request() -> dpb.ExplainRequest:
    return dpb.ExplainRequest(request_id="bench-explain", **_fleet.REQUEST_FIELDS)


def outcome_request() -> dpb.ReportOutcomeRequest:
    # a request id no decision was made for: the first report is charged under it, every later
    # one finds it settled (the idempotent path)
    return dpb.ReportOutcomeRequest(
        request_id="bench-outcome",
        backend_id="s0",
        model=_fleet.MODEL,
        success=True,
        http_status=200,
        latency_ms=1200,
        ttft_ms=300,
        input_tokens=1000,
        output_tokens=500,
    )


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0, 4-byte big-endian length, payload."""
    return struct.pack(">BI", 0, len(message)) + message


def seed_over_grpc(port: int, plans: list[_fleet.BackendPlan]) -> None:
    """The plan's health through SetBackendState (loopback: admin RPCs need no token), and the
    global spend to the soft limit. Outcome statistics cannot be seeded over gRPC: only reports
    of decisions the server made feed them, so the quality stage has no stats here."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        reg = rgrpc.RegistryServiceStub(ch)
        dec = dgrpc.DecisionServiceStub(ch)
        for b in plans:
            if b.status == BackendStatus.HEALTHY:
                continue
            req = rpb.SetBackendStateRequest(backend_id=b.id, status=int(b.status), reason="bench")
            if b.status == BackendStatus.LOADING:
                req.loading_eta_ms = 20_000
                req.loading_progress_percent = 40
            reg.SetBackendState(req, timeout=5)
        dec.ReportOutcome(
            dpb.ReportOutcomeRequest(
                request_id="seed-spend", backend_id="s0", success=True, cost_usd=_fleet.SEED_SPEND_USD
            ),
            timeout=5,
        )


def verify_nexus(port: int) -> dict[str, Any]:
    """One call of each method with a real client; the status must be OK, Decide must route
    with the budget at its soft limit."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = dgrpc.DecisionServiceStub(ch)
        d = stub.Decide(decide_request(), timeout=5)
        if d.WhichOneof("decision") != "route" or not d.route.decision_id:
            raise RuntimeError(f"bench Decide must route with a decision id, got {d}")
        budget = tpb.BudgetStatus.Name(d.budget.status)
        if budget != "BUDGET_STATUS_SOFT_LIMIT":
            raise RuntimeError(f"bench budget must be at the soft limit, got {budget}")
        e = stub.Explain(explain_request(), timeout=5)
        r = stub.ReportOutcome(outcome_request(), timeout=5)
        return {
            "decide": {
                "route": d.route.backend_id,
                "reason": d.route.reason,
                "exclusions": len(d.exclusions) + d.exclusions_omitted,
                "budget": budget,
                "response_bytes": d.ByteSize(),
            },
            "explain": {
                "funnel": [[s.reconciler, s.candidates_in, s.candidates_out] for s in e.stages],
                "response_bytes": e.ByteSize(),
            },
            "report_outcome": {"recorded": r.recorded},
        }


def verify_floor(port: int, mode: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(DECIDE, None, None)  # raw bytes both ways
        reply, c = call.with_call(decide_request().SerializeToString(), timeout=5)
    if c.code() != grpc.StatusCode.OK:
        raise RuntimeError(f"{mode} server on {port}: {c.code()}")
    if mode == "raw" and reply != b"":
        raise RuntimeError(f"raw server on {port} answered {reply!r}")
    if mode == "proto" and dpb.DecideResponse.FromString(reply).route.backend_id != "s0":
        raise RuntimeError(f"proto server on {port} answered {reply!r}")


# --- what a nexus server counted ---------------------------------------------------------------

_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? ([-+0-9.eEinfNa]+)$")


def scrape(port: int) -> dict[str, float]:
    """Decisions by verdict, RouteIndex runs and the total in flight, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {"route": 0.0, "queue": 0.0, "reject": 0.0, "indexed": 0.0, "in_flight": 0.0}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "nexus_decisions_total":
            verdict = re.search(r'decision="(\w+)"', labels)
            if verdict is not None:
                out[verdict.group(1)] = out.get(verdict.group(1), 0.0) + value
        elif name == "nexus_reconciler_duration_seconds_count" and 'reconciler="RouteIndex"' in labels:
            out["indexed"] += value
        elif name == "nexus_backend_in_flight":
            out["in_flight"] += value
    return out


# --- h2load ------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    pid: int
    methods: dict[str, tuple[str, Path]]  # method -> (path, body file)
    metrics_port: int = 0


@dataclass
class Point:
    target: str
    method: str
    level: str
    rps: float
    p50_us: float
    p99_us: float
    mean_us: float
    done: int
    failed: int
    server_cpu_us_per_req: float
    decided: dict[str, float] = field(default_factory=dict)  # nexus counters over the point


_FINISHED = re.compile(r"finished in [\d.]+\w*, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)


def h2load_cmd(h2: str, port: int, path: str, body: Path, conns: int, streams: int) -> list[str]:
    return [
        h2,
        "-c",
        str(conns),
        "-m",
        str(streams),
        "-t",
        "1",
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        f"http://127.0.0.1:{port}{path}",
    ]


def h2load(
    h2: str, t: Target, method: str, level: str, seconds: float, warmup: float, tmp: Path
) -> tuple[float, list[int], int, int, float]:
    conns, streams = LEVELS[level]
    path, body = t.methods[method]
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)
    cmd = h2load_cmd(h2, t.port, path, body, conns, streams)
    cmd[1:1] = ["-D", f"{seconds:g}", "--warm-up-time", f"{warmup:g}", "--log-file", str(log)]
    # h2load logs (and counts in req/s) only the measured period, after the warm-up; the server's
    # CPU time is read at the start and end of that period
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(warmup + 0.05)
        cpu0 = cpu_seconds(t.pid)
        time.sleep(seconds - 0.1)
        cpu1 = cpu_seconds(t.pid)
        stdout, stderr = proc.communicate(timeout=seconds + warmup + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}):\n{stdout}\n{stderr}")
    m = _FINISHED.search(stdout)
    r = _REQUESTS.search(stdout)
    if m is None or r is None:
        raise RuntimeError(f"cannot parse h2load output:\n{stdout}")
    rps = float(m.group(1))
    done, succeeded = int(r.group(3)), int(r.group(4))
    measured = []
    for line in log.read_text().splitlines():
        _, status, elapsed = line.split("\t")[:3]
        if status == "200":
            measured.append(int(elapsed))
    cpu_per_req = (cpu1 - cpu0) / max(1.0, rps * (seconds - 0.1)) * 1e6
    return rps, measured, done, done - succeeded, cpu_per_req


def point(h2: str, t: Target, method: str, level: str, seconds: float, warmup: float, tmp: Path) -> Point:
    before = scrape(t.metrics_port) if t.metrics_port else {}
    rps, lat, done, failed, cpu = h2load(h2, t, method, level, seconds, warmup, tmp)
    decided = {}
    if t.metrics_port:
        time.sleep(0.05)
        after = scrape(t.metrics_port)
        decided = {k: after[k] - before.get(k, 0.0) for k in ("route", "queue", "reject", "indexed")}
        decided["in_flight_after"] = after["in_flight"]
    lat.sort()
    n = len(lat)
    p50 = lat[n // 2] if n else 0
    p99 = lat[min(n - 1, int(n * 0.99))] if n else 0
    mean = sum(lat) / n if n else 0.0
    pt = Point(t.name, method, level, rps, float(p50), float(p99), mean, done, failed, cpu, decided)
    note = ""
    if decided and method == "Decide":
        note = f"  route {decided['route']:.0f} queue {decided['queue']:.0f} reject {decided['reject']:.0f}"
        note += f" indexed {decided['indexed']:.0f} in-flight {decided['in_flight_after']:.0f}"
    print(
        f"  {t.name:<18} {method:<13} c={level:<2} {rps:7.0f} req/s  mean {mean:6.0f} us  p50 {p50:6.0f}"
        f"  p99 {p99:6.0f}  cpu {cpu:5.0f} us/req{'  FAILED ' + str(failed) if failed else ''}{note}",
        flush=True,
    )
    return pt


# --- main --------------------------------------------------------------------------------------


def nexus_config(tmp: Path, name: str, metrics_port: int, **fleet: Any) -> Path:
    extra = f'\n[telemetry]\nprometheus_listen = "127.0.0.1:{metrics_port}"\n'
    path = tmp / f"{name}.toml"
    path.write_text(
        _fleet.fleet_toml(in_flight_ttl_seconds=TTL_SECONDS, extra=extra, **fleet), encoding="utf-8"
    )
    return path


def run(
    quick: bool, h2: str, n_rounds: int, levels: list[str], profile_seconds: float, profile_target: str
) -> dict[str, Any]:
    seconds, warmup = (3.0, 1.0) if quick else (8.0, 2.0)
    payload: dict[str, Any] = {"bench": "e2e", "machine": _fleet.machine(), "quick": quick}
    payload["method"] = {
        "seconds": seconds,
        "warmup": warmup,
        "rounds": n_rounds,
        "levels": {k: {"connections": LEVELS[k][0], "streams": LEVELS[k][1]} for k in levels},
        "in_flight_ttl_seconds": TTL_SECONDS,
    }
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmpdir:
        tmp = Path(tmpdir)
        bodies: dict[str, tuple[str, Path]] = {}
        for method, path, msg in (
            ("Decide", DECIDE, decide_request()),
            ("Explain", EXPLAIN, explain_request()),
            ("ReportOutcome", OUTCOME, outcome_request()),
        ):
            file = tmp / f"{method}.bin"
            file.write_bytes(frame(msg.SerializeToString()))
            bodies[method] = (path, file)
        ports = {name: free_port() for name in ("raw", "proto", "proto+i", "n2", "n2m", "nb", "nbm")}
        small = nexus_config(tmp, "nexus-2", ports["n2m"], n_serving=2, small=True)
        big = nexus_config(tmp, "nexus-big", ports["nbm"], n_serving=BIG_SERVING, n_other=BIG_OTHER)
        floor = [sys.executable, str(HERE / "empty_server.py"), "--listen"]
        with (
            process([*floor, f"127.0.0.1:{ports['raw']}", "--mode", "raw"], tmp / "raw.log") as raw,
            process([*floor, f"127.0.0.1:{ports['proto']}", "--mode", "proto"], tmp / "proto.log") as proto,
            process(
                [*floor, f"127.0.0.1:{ports['proto+i']}", "--mode", "proto", "--interceptor"], tmp / "pi.log"
            ) as proto_i,
            process(nexus_command(small, ports["n2"]), tmp / "n2.log") as n2,
            process(nexus_command(big, ports["nb"]), tmp / "nb.log") as nb,
        ):
            for proc, key, log in (
                (raw, "raw", "raw.log"),
                (proto, "proto", "proto.log"),
                (proto_i, "proto+i", "pi.log"),
                (n2, "n2", "n2.log"),
                (nb, "nb", "nb.log"),
            ):
                wait_ready(proc, ports[key], tmp / log, timeout=120)
            verify_floor(ports["raw"], "raw")
            verify_floor(ports["proto"], "proto")
            verify_floor(ports["proto+i"], "proto")
            seed_over_grpc(ports["n2"], [])
            seed_over_grpc(ports["nb"], _fleet.plan(BIG_SERVING))
            payload["verify"] = {
                "nexus-2": verify_nexus(ports["n2"]),
                f"nexus-{BIG_SERVING}": verify_nexus(ports["nb"]),
            }
            for name, v in payload["verify"].items():
                print(f"{name}: {v['decide']}")
            print("every server answered a real gRPC client with status OK")
            decide = {"Decide": bodies["Decide"]}
            targets = [
                Target("raw", ports["raw"], raw.pid, decide),
                Target("proto", ports["proto"], proto.pid, decide),
                Target("proto+interceptor", ports["proto+i"], proto_i.pid, decide),
                Target("nexus-2", ports["n2"], n2.pid, bodies, ports["n2m"]),
                Target(f"nexus-{BIG_SERVING}", ports["nb"], nb.pid, decide, ports["nbm"]),
            ]
            print(
                f"h2load {seconds:g} s per point after {warmup:g} s warm-up, {n_rounds} rounds"
                "; client and servers share the cores"
            )
            rounds: dict[tuple[str, str, str], list[Point]] = {}
            for k in range(n_rounds):
                print(f"round {k + 1} of {n_rounds}")
                for level in levels:
                    for t in targets:
                        for method in t.methods:
                            pt = point(h2, t, method, level, seconds, warmup, tmp)
                            rounds.setdefault((t.name, method, level), []).append(pt)
            payload["rounds"] = {
                f"{t}|{m}|{c}": [p.__dict__ for p in pts] for (t, m, c), pts in rounds.items()
            }
            payload["points"] = [median_point(pts).__dict__ for pts in rounds.values()]
            if profile_seconds:
                t = next(t for t in targets if t.name == profile_target)
                payload["server_profile"] = profile_server(h2, t, profile_seconds, tmp)
            payload["rss_kib"] = {
                "nexus-2, after load": _fleet.rss_kib(n2.pid),
                f"nexus-{BIG_SERVING} (+{BIG_OTHER} others), after load": _fleet.rss_kib(nb.pid),
                "raw server, after load": _fleet.rss_kib(raw.pid),
            }
        payload.update(rss_10000(h2, tmp, bodies["Decide"]))
    payload["ratios"] = ratios(payload["points"], levels)
    return payload


def rss_10000(h2: str, tmp: Path, decide: tuple[str, Path]) -> dict[str, Any]:
    """RSS and startup time with 10 000 backends loaded: a fresh server, warmed by some Decides."""
    config = tmp / "fleet10000.toml"
    config.write_text(_fleet.fleet_toml(10_000, in_flight_ttl_seconds=TTL_SECONDS), encoding="utf-8")
    port = free_port()
    out: dict[str, Any] = {}
    with process(nexus_command(config, port), tmp / "nexus10k.log") as big:
        t0 = time.monotonic()
        wait_ready(big, port, tmp / "nexus10k.log", timeout=120)
        out["startup_10000_backends_s"] = round(time.monotonic() - t0, 2)
        out["rss_10000_kib"] = {"idle": _fleet.rss_kib(big.pid)}
        t = Target("nexus-10000", port, big.pid, {"Decide": decide})
        out["decide_10000_backends"] = point(h2, t, "Decide", "8", 3.0, 1.0, tmp).__dict__
        out["rss_10000_kib"]["after Decides"] = _fleet.rss_kib(big.pid)
    return out


def median_point(points: list[Point]) -> Point:
    """Per-metric medians over the rounds of one (server, method, level) point; counts summed."""

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    first = points[0]
    decided: dict[str, float] = {}
    for p in points:
        for k, v in p.decided.items():
            decided[k] = decided.get(k, 0.0) + v if k != "in_flight_after" else max(decided.get(k, 0.0), v)
    return Point(
        first.target,
        first.method,
        first.level,
        med([p.rps for p in points]),
        med([p.p50_us for p in points]),
        med([p.p99_us for p in points]),
        med([p.mean_us for p in points]),
        sum(p.done for p in points),
        sum(p.failed for p in points),
        med([p.server_cpu_us_per_req for p in points]),
        decided,
    )


def ratios(points: list[dict[str, Any]], levels: list[str]) -> list[dict[str, Any]]:
    """Each point against references at the same level: every server against the raw floor, the
    nexus servers and the interceptor against the protobuf floor, the big fleet's Decide against
    the 2-backend fleet's."""
    by = {(p["target"], p["method"], p["level"]): p for p in points}
    big = f"nexus-{BIG_SERVING}"
    out = []
    for p in points:
        if p["level"] not in levels:
            continue
        versus = []
        if p["target"] != "raw":
            versus.append(("raw", "Decide"))
        if p["target"] not in ("raw", "proto"):
            versus.append(("proto", "Decide"))
        if p["target"] == big and p["method"] == "Decide":
            versus.append(("nexus-2", "Decide"))
        for ref_target, ref_method in versus:
            ref = by.get((ref_target, ref_method, p["level"]))
            if ref is None:
                continue
            out.append(
                {
                    "level": p["level"],
                    "target": p["target"],
                    "method": p["method"],
                    "versus": ref_target,
                    "throughput": p["rps"] / ref["rps"] if ref["rps"] else 0.0,
                    "mean_latency": p["mean_us"] / ref["mean_us"] if ref["mean_us"] else 0.0,
                    "p50_latency": p["p50_us"] / ref["p50_us"] if ref["p50_us"] else 0.0,
                    "p99_latency": p["p99_us"] / ref["p99_us"] if ref["p99_us"] else 0.0,
                    "server_cpu": (
                        p["server_cpu_us_per_req"] / ref["server_cpu_us_per_req"]
                        if ref["server_cpu_us_per_req"]
                        else 0.0
                    ),
                }
            )
    return out


def targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    by = {(r["target"], r["method"], r["level"], r["versus"]): r for r in payload["ratios"]}
    out = []

    def check(key: tuple[str, str, str, str], metric: str, op: str, limit: float, label: str) -> None:
        r = by.get(key)
        if r is not None:
            value = r[metric]
            out.append(
                {"target": label, "measured": value, "met": value >= limit if op == ">=" else value <= limit}
            )

    big = f"nexus-{BIG_SERVING}"
    check(
        ("nexus-2", "Decide", "8", "raw"),
        "throughput",
        ">=",
        0.80,
        "Decide throughput >= 0.80 x raw empty handler (c=8)",
    )
    check(
        ("nexus-2", "Decide", "1", "raw"),
        "mean_latency",
        "<=",
        1.25,
        "Decide mean latency <= 1.25 x raw empty handler (c=1)",
    )
    check(
        (big, "Decide", "8", "nexus-2"),
        "throughput",
        ">=",
        0.80,
        f"Decide throughput at {BIG_SERVING}+{BIG_OTHER} >= 0.80 x at 2 backends (c=8)",
    )
    check(
        (big, "Decide", "1", "nexus-2"),
        "mean_latency",
        "<=",
        1.25,
        f"Decide mean latency at {BIG_SERVING}+{BIG_OTHER} <= 1.25 x at 2 backends (c=1)",
    )
    rss = payload["rss_10000_kib"]["after Decides"]["VmRSS"] / 1024
    out.append(
        {"target": "RSS with 10 000 backends <= 150 MB (MiB)", "measured": rss, "met": rss * 1.048576 <= 150}
    )
    return out


def report(payload: dict[str, Any]) -> None:
    by = {(r["target"], r["method"], r["level"], r["versus"]): r for r in payload["ratios"]}
    rows = []
    for p in payload["points"]:
        raw = by.get((p["target"], p["method"], p["level"], "raw"))
        d = p["decided"]
        rows.append(
            [
                p["target"],
                p["method"],
                p["level"],
                f"{p['rps']:.0f}",
                f"{p['mean_us']:.0f}",
                f"{p['p50_us']:.0f}",
                f"{p['p99_us']:.0f}",
                f"{p['server_cpu_us_per_req']:.0f}",
                f"{raw['throughput']:.2f}" if raw else "1.00",
                f"{raw['mean_latency']:.2f}" if raw else "1.00",
                (
                    f"{d['route']:.0f}/{d['queue']:.0f}/{d['reject']:.0f}/{d['indexed']:.0f}"
                    if d and p["method"] == "Decide"
                    else ""
                ),
            ]
        )
    print()
    headers = ["server", "method", "c", "req/s", "mean us", "p50 us", "p99 us", "cpu us/req"]
    print(_fleet.table([*headers, "rps/raw", "mean/raw", "route/queue/reject/indexed"], rows))
    print()
    big = [r for r in payload["ratios"] if r["versus"] == "nexus-2"]
    for r in big:
        print(
            f"{r['target']} vs nexus-2, c={r['level']}: throughput {r['throughput']:.2f} x, "
            f"mean latency {r['mean_latency']:.2f} x, server cpu {r['server_cpu']:.2f} x"
        )
    for name, rss in payload["rss_kib"].items():
        print(f"RSS {name}: {rss['VmRSS'] / 1024:.1f} MiB (peak {rss['VmHWM'] / 1024:.1f} MiB)")
    for name, rss in payload["rss_10000_kib"].items():
        print(f"RSS nexus-grpc with 10 000 backends, {name}: {rss['VmRSS'] / 1024:.1f} MiB")
    print(f"startup with 10 000 backends: {payload['startup_10000_backends_s']} s")
    print()
    for t in payload["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}: {t['measured']:.2f}")


# --- profile -----------------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, by thread id."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


_THREAD = re.compile(r'^Thread (?:0x[0-9a-fA-F]+|(\d+)) \((\w[\w+]*)\): "(.*)"', re.MULTILINE)


def profile_server(h2: str, t: Target, seconds: float, tmp: Path) -> dict[str, Any]:
    """Where a Decide's server CPU goes, under Decide at c=8:
    - each thread's CPU per request, from /proc/PID/task (named by `py-spy dump`);
    - py-spy record with Python frames, per thread (`--threads`, non-blocking);
    - py-spy record with native frames (`--native`, which must pause the process per sample);
    - `py-spy dump --native` of every thread, twice."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed (./dev bench installs it); no server profile", file=sys.stderr)
        return {}
    path, body = t.methods["Decide"]
    conns, streams = LEVELS["8"]
    load = subprocess.Popen(
        [h2, "-D", f"{2 * seconds + 10:g}", *h2load_cmd(h2, t.port, path, body, conns, streams)[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    summaries: dict[str, Any] = {}
    dumps = ""
    per_thread: list[tuple[str, float, float]] = []
    try:
        time.sleep(1.0)
        first = subprocess.run(
            [spy, "dump", "--pid", str(t.pid)], capture_output=True, text=True, check=False
        )
        names = {int(m.group(1)): m.group(3) for m in _THREAD.finditer(first.stdout) if m.group(1)}
        for name, native in (("python", False), ("native", True)):
            raw = tmp / f"pyspy-{name}.txt"
            cmd = [spy, "record", "--pid", str(t.pid), "--duration", f"{int(seconds)}", "--rate", "250"]
            cmd += ["--format", "raw", "--output", str(raw), "--threads"]
            cmd.append("--native" if native else "--nonblocking")
            before = scrape(t.metrics_port) if t.metrics_port and not native else {}
            cpu0 = thread_cpu(t.pid)
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
            if before:
                cpu1 = thread_cpu(t.pid)
                decided = scrape(t.metrics_port)["route"] - before["route"]
                for tid, spent in sorted(cpu1.items(), key=lambda kv: -(kv[1] - cpu0.get(kv[0], kv[1]))):
                    used = spent - cpu0.get(tid, spent)
                    label = f"{tid} {names.get(tid, '(no Python thread state)')}"
                    per_thread.append((label, used, used / max(decided, 1) * 1e6))
            if done.returncode != 0 or not raw.exists():
                summaries[name] = {"error": (done.stderr or done.stdout).strip()[-400:]}
                continue
            summaries[name] = summarise_stacks(raw.read_text())
        for _ in range(2):
            dump = subprocess.run(
                [spy, "dump", "--pid", str(t.pid), "--native"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            dumps += dump.stdout or dump.stderr
            time.sleep(0.5)
    finally:
        load.kill()
        load.wait()
    out = _fleet.RESULTS / "e2e_server_profile.txt"
    _fleet.RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [
        f"py-spy, {t.name} serving Decide at c=8 ({conns} x {streams} streams), {seconds:g} s per record",
        f"code {_fleet.code_fingerprint()}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        "",
        "== CPU per thread during the Python-frames record (/proc/PID/task), per Route decided:",
    ]
    lines += [f"   {label:<48} {used:6.2f} s  {per:6.0f} us/req" for label, used, per in per_thread]
    lines.append("")
    for name, summary in summaries.items():
        lines.append(
            f"== {name} frames" + (f": {summary['samples']} samples" if "samples" in summary else "")
        )
        if "error" in summary:
            lines += [f"   py-spy failed: {summary['error']}", ""]
            continue
        lines.append("per thread:")
        lines += [f"{pct:6.1f}%  {name_}" for name_, pct in summary["threads"]]
        lines.append("inclusive:")
        lines += [f"{pct:6.1f}%  {name_}" for name_, pct in summary["inclusive"]]
        lines += ["self (leaf frames):"]
        lines += [f"{pct:6.1f}%  {name_}" for name_, pct in summary["self"]]
        lines.append("")
    lines += ["== py-spy dump --native (two dumps during the load)", dumps]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"server profile: {out}")
    return {"per_thread_cpu": per_thread, **summaries}


def summarise_stacks(collapsed: str, top: int = 40) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> per-thread, inclusive and self percentages per function.
    With --threads the first frame names the thread."""
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            threads[frames[0]] = threads.get(frames[0], 0) + count
            frames = frames[1:] or frames
        names = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in frames
        ]
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + count
        leaf[names[-1]] = leaf.get(names[-1], 0) + count
    total = max(total, 1)

    def ranked(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, v * 100 / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "threads": ranked(threads),
        "inclusive": ranked(inclusive),
        "self": ranked(leaf),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s per point after 1 s warm-up, 2 rounds")
    parser.add_argument("--out", default="e2e", help="result name under benches/results/")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per point (median); 2 quick, 3 full")
    parser.add_argument("--levels", default="1,8", help=f"comma-separated of {', '.join(LEVELS)}")
    parser.add_argument(
        "--profile-server",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also py-spy a server for SECONDS during Decide c=8 (benches/results/e2e_server_profile.txt)",
    )
    parser.add_argument(
        "--profile-target", default="nexus-2", help=f"nexus-2 (default) or nexus-{BIG_SERVING}"
    )
    args = parser.parse_args()
    levels = [x for x in args.levels.split(",") if x]
    if not levels or any(x not in LEVELS for x in levels):
        parser.error(f"--levels takes {', '.join(LEVELS)}")
    h2 = shutil.which("h2load")
    if h2 is None:
        print(
            "e2e bench: h2load is not installed. It comes with Debian's nghttp2-client:\n"
            "    apt-get install -y nghttp2-client\n"
            "then run this again (./dev bench e2e installs it when run as root).",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    watch = _fleet.CpuWatch()
    n_rounds = args.rounds or (2 if args.quick else 3)
    payload = run(args.quick, h2, n_rounds, levels, args.profile_server, args.profile_target)
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
