"""End to end over gRPC on loopback: nexus-grpc next to an empty handler on the same stack.

    apt-get install -y nghttp2-client                 # h2load
    .venv/bin/python benches/e2e.py --quick          # about 2.5 min; writes benches/results/e2e.json
    .venv/bin/python benches/e2e.py                  # 8 s per point, 3 rounds: about 8 min

Starts, in this run and on free loopback ports:
- `nexus-grpc serve --config <generated> --listen 127.0.0.1:P` (one process, uvloop, memory
  ledger) with the bench fleet of benches/_fleet.py (100 backends serving the model, every stage
  active: its mixed health, quality stats and soft-limit spend are applied over gRPC with
  SetBackendState and ReportOutcome);
- benches/empty_server.py, an empty unary handler on the same grpc.aio stack (the ceiling), and the
  same with one pass-through interceptor.
Each point is `h2load` with one pre-encoded gRPC frame (INTEGRATION.md's frame trick) for a
fixed duration after a warm-up; latency percentiles come from h2load's per-request log, the
server's CPU per request from /proc. Concurrency C is C requests in flight: min(C, 8) connections
with C / connections streams each. Before measuring, each method is called once with a real gRPC
client and its status checked. Then RSS is read from the servers and from a second nexus-grpc
loaded with 10 000 backends. Every process started here is stopped before the script exits.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
CONCURRENCY = (1, 8, 64)
DECIDE = "/nexus.v1.DecisionService/Decide"
EXPLAIN = "/nexus.v1.DecisionService/Explain"
OUTCOME = "/nexus.v1.DecisionService/ReportOutcome"
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


# --- requests ----------------------------------------------------------------------------------


def decide_request() -> dpb.DecideRequest:
    # a fixed request id: each Decide re-decides it, releasing the previous slot (in-flight stays 1)
    return dpb.DecideRequest(request_id="bench-e2e", **_fleet.REQUEST_FIELDS)


def explain_request() -> dpb.ExplainRequest:
    return dpb.ExplainRequest(request_id="bench-explain", **_fleet.REQUEST_FIELDS)


def outcome_request() -> dpb.ReportOutcomeRequest:
    # the same id every time: after the first, ReportOutcome takes its idempotent path
    return dpb.ReportOutcomeRequest(
        request_id="bench-outcome",
        backend_id="b8",
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


def seed_over_grpc(port: int) -> None:
    """Apply the fleet plan through the public RPCs (loopback: admin RPCs need no token)."""
    plans = _fleet.plan(100)
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
        for o in _fleet.seed_outcomes(plans):
            msg = dpb.ReportOutcomeRequest(request_id=o.request_id, backend_id=o.backend_id, model=o.model)
            if o.success is not None:
                msg.success = o.success
            if o.http_status is not None:
                msg.http_status = o.http_status
            if o.ttft_ms is not None:
                msg.ttft_ms = o.ttft_ms
            dec.ReportOutcome(msg, timeout=5)
        # global spend to the soft limit (80 of 100 USD)
        dec.ReportOutcome(
            dpb.ReportOutcomeRequest(
                request_id="seed-spend", backend_id="b1", success=True, cost_usd=_fleet.SEED_SPEND_USD
            ),
            timeout=5,
        )


def verify(nexus_port: int, empty_ports: list[int]) -> dict[str, Any]:
    """One call of each method with a real client; every status must be OK (grpc-status 0)."""
    out: dict[str, Any] = {}
    with grpc.insecure_channel(f"127.0.0.1:{nexus_port}") as ch:
        stub = dgrpc.DecisionServiceStub(ch)
        d = stub.Decide(decide_request(), timeout=5)
        if d.WhichOneof("decision") != "route":
            raise RuntimeError(f"bench Decide must route, got {d}")
        budget = tpb.BudgetStatus.Name(d.budget.status)
        if budget != "BUDGET_STATUS_SOFT_LIMIT":
            raise RuntimeError(f"bench budget must be at the soft limit, got {budget}")
        e = stub.Explain(explain_request(), timeout=5)
        r = stub.ReportOutcome(outcome_request(), timeout=5)
        out["decide"] = {
            "route": d.route.backend_id,
            "reason": d.route.reason,
            "exclusions": len(d.exclusions) + d.exclusions_omitted,
            "budget": budget,
            "response_bytes": d.ByteSize(),
        }
        out["explain"] = {
            "funnel": [[s.reconciler, s.candidates_in, s.candidates_out] for s in e.stages],
            "response_bytes": e.ByteSize(),
        }
        out["report_outcome"] = {"recorded": r.recorded}
    for port in empty_ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(DECIDE, None, None)  # raw bytes both ways
            reply, c = call.with_call(decide_request().SerializeToString(), timeout=5)
            if c.code() != grpc.StatusCode.OK or reply != b"":
                raise RuntimeError(f"empty server on {port}: {c.code()} {reply!r}")
    out["grpc_status"] = "OK (0) for Decide, Explain, ReportOutcome and the empty handlers"
    return out


# --- h2load ------------------------------------------------------------------------------------


@dataclass
class Point:
    target: str
    method: str
    concurrency: int
    rps: float
    p50_us: float
    p99_us: float
    mean_us: float
    done: int
    failed: int
    server_cpu_us_per_req: float


_FINISHED = re.compile(r"finished in [\d.]+\w*, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)


def h2load(
    h2: str,
    port: int,
    pid: int,
    path: str,
    body: Path,
    concurrency: int,
    seconds: float,
    warmup: float,
    tmp: Path,
) -> tuple[float, list[int], int, int, float]:
    conns = min(concurrency, 8)
    streams = concurrency // conns
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)
    cmd = [
        h2,
        "-D",
        f"{seconds:g}",
        "--warm-up-time",
        f"{warmup:g}",
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
        "--log-file",
        str(log),
        f"http://127.0.0.1:{port}{path}",
    ]
    # h2load logs (and counts in req/s) only the measured period, after the warm-up; the server's
    # CPU time is read at the start and end of that period
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(warmup + 0.05)
        cpu0 = cpu_seconds(pid)
        time.sleep(seconds - 0.1)
        cpu1 = cpu_seconds(pid)
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


def point(
    h2: str,
    target: str,
    port: int,
    pid: int,
    method: str,
    path: str,
    body: Path,
    c: int,
    seconds: float,
    warmup: float,
    tmp: Path,
) -> Point:
    rps, lat, done, failed, cpu = h2load(h2, port, pid, path, body, c, seconds, warmup, tmp)
    lat.sort()
    n = len(lat)
    p50 = lat[n // 2] if n else 0
    p99 = lat[min(n - 1, int(n * 0.99))] if n else 0
    mean = sum(lat) / n if n else 0.0
    pt = Point(target, method, c, rps, float(p50), float(p99), mean, done, failed, cpu)
    print(
        f"  {target:<22} {method:<14} c={c:<3} {rps:8.0f} req/s  p50 {p50:7.0f} us  p99 {p99:7.0f} us"
        f"  server cpu {cpu:6.0f} us/req{'  FAILED ' + str(failed) if failed else ''}",
        flush=True,
    )
    return pt


# --- main --------------------------------------------------------------------------------------


def run(quick: bool, h2: str, n_rounds: int, profile_seconds: float) -> dict[str, Any]:
    seconds, warmup = (3.0, 1.0) if quick else (8.0, 2.0)
    points: list[Point] = []
    payload: dict[str, Any] = {"bench": "e2e", "machine": _fleet.machine(), "quick": quick}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmpdir:
        tmp = Path(tmpdir)
        config = tmp / "fleet100.toml"
        config.write_text(_fleet.fleet_toml(100), encoding="utf-8")
        bodies = {
            "Decide": (DECIDE, tmp / "decide.bin", decide_request()),
            "Explain": (EXPLAIN, tmp / "explain.bin", explain_request()),
            "ReportOutcome": (OUTCOME, tmp / "outcome.bin", outcome_request()),
        }
        for _, file, msg in bodies.values():
            file.write_bytes(frame(msg.SerializeToString()))
        np, ep, ip = free_port(), free_port(), free_port()
        with (
            process(nexus_command(config, np), tmp / "nexus.log") as nexus,
            process(
                [sys.executable, str(HERE / "empty_server.py"), "--listen", f"127.0.0.1:{ep}"], tmp / "e.log"
            ) as empty,
            process(
                [
                    sys.executable,
                    str(HERE / "empty_server.py"),
                    "--listen",
                    f"127.0.0.1:{ip}",
                    "--interceptor",
                ],
                tmp / "i.log",
            ) as empty_i,
        ):
            wait_ready(nexus, np, tmp / "nexus.log")
            wait_ready(empty, ep, tmp / "e.log")
            wait_ready(empty_i, ip, tmp / "i.log")
            seed_over_grpc(np)
            payload["verify"] = verify(np, [ep, ip])
            print(f"verified with a real client: {payload['verify']['grpc_status']}")
            print(f"decision: {payload['verify']['decide']}")
            print(
                f"h2load {seconds:g} s per point after {warmup:g} s warm-up"
                "; client and servers share the cores"
            )
            rounds: dict[tuple[str, str, int], list[Point]] = {}
            for _ in range(n_rounds):
                for c in CONCURRENCY:
                    runs = [("empty", ep, empty.pid, "Empty", DECIDE, bodies["Decide"][1])]
                    runs.append(("empty+interceptor", ip, empty_i.pid, "Empty", DECIDE, bodies["Decide"][1]))
                    runs.extend(
                        ("nexus-grpc", np, nexus.pid, m, path, body) for m, (path, body, _) in bodies.items()
                    )
                    for target, port, pid, method, path, body in runs:
                        pt = point(h2, target, port, pid, method, path, body, c, seconds, warmup, tmp)
                        rounds.setdefault((target, method, c), []).append(pt)
            points = [median_point(pts) for pts in rounds.values()]
            payload["rounds"] = {
                f"{t}|{m}|{c}": [p.__dict__ for p in pts] for (t, m, c), pts in rounds.items()
            }
            if profile_seconds:
                payload["server_profile"] = profile_server(
                    h2, np, nexus.pid, bodies["Decide"][1], profile_seconds, tmp
                )
            payload["rss_kib"] = {
                "nexus-grpc, 100 backends, after load": _fleet.rss_kib(nexus.pid),
                "empty server, after load": _fleet.rss_kib(empty.pid),
            }
        # RSS with 10 000 backends loaded: a fresh server, warmed by some Decides
        config10k = tmp / "fleet10000.toml"
        config10k.write_text(_fleet.fleet_toml(10_000), encoding="utf-8")
        port = free_port()
        with process(nexus_command(config10k, port), tmp / "nexus10k.log") as big:
            t0 = time.monotonic()
            wait_ready(big, port, tmp / "nexus10k.log", timeout=120)
            startup = time.monotonic() - t0
            payload["rss_kib"]["nexus-grpc, 10 000 backends, idle"] = _fleet.rss_kib(big.pid)
            p = point(
                h2, "nexus-grpc 10k", port, big.pid, "Decide", DECIDE, bodies["Decide"][1], 8, 3.0, 1.0, tmp
            )
            payload["decide_10000_backends"] = p.__dict__
            payload["rss_kib"]["nexus-grpc, 10 000 backends, after Decides"] = _fleet.rss_kib(big.pid)
            payload["startup_10000_backends_s"] = round(startup, 2)
    payload["points"] = [p.__dict__ for p in points]
    payload["ratios"] = ratios(points)
    return payload


def median_point(points: list[Point]) -> Point:
    """Per-metric medians over the rounds of one (server, method, concurrency) point."""

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    first = points[0]
    return Point(
        first.target,
        first.method,
        first.concurrency,
        med([p.rps for p in points]),
        med([p.p50_us for p in points]),
        med([p.p99_us for p in points]),
        med([p.mean_us for p in points]),
        sum(p.done for p in points),
        sum(p.failed for p in points),
        med([p.server_cpu_us_per_req for p in points]),
    )


def profile_server(h2: str, port: int, pid: int, body: Path, seconds: float, tmp: Path) -> dict[str, Any]:
    """py-spy on the serving process during Decide at c=8: where a Decide's server CPU goes."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed (.venv/bin/pip install py-spy); no server profile", file=sys.stderr)
        return {}
    raw = tmp / "pyspy.txt"
    load = subprocess.Popen(
        [
            h2,
            "-D",
            f"{seconds + 4:g}",
            "-c",
            "8",
            "-m",
            "1",
            "-t",
            "1",
            "-d",
            str(body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://127.0.0.1:{port}{DECIDE}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        subprocess.run(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                f"{int(seconds)}",
                "--rate",
                "500",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
            ],
            capture_output=True,
            timeout=seconds + 60,
            check=True,
        )
    finally:
        load.wait(seconds + 30)
    summary = summarise_stacks(raw.read_text())
    out = _fleet.RESULTS / "e2e_server_profile.txt"
    _fleet.RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"py-spy, nexus-grpc serving Decide at c=8, {summary['samples']} samples", "", "inclusive:"]
    lines += [f"{pct:6.1f}%  {name}" for name, pct in summary["inclusive"]]
    lines += ["", "self (leaf frames):"]
    lines += [f"{pct:6.1f}%  {name}" for name, pct in summary["self"]]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"server profile: {out}")
    return summary


def summarise_stacks(collapsed: str, top: int = 40) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> inclusive and self percentages per function."""
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
    total = max(total, 1)

    def ranked(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, v * 100 / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "inclusive": ranked(inclusive), "self": ranked(leaf)}


def ratios(points: list[Point]) -> list[dict[str, Any]]:
    out = []
    for c in CONCURRENCY:
        empty = next(p for p in points if p.target == "empty" and p.concurrency == c)
        for p in points:
            if p.concurrency != c or p.target == "empty":
                continue
            out.append(
                {
                    "concurrency": c,
                    "target": p.target,
                    "method": p.method,
                    "throughput_vs_empty": p.rps / empty.rps if empty.rps else 0.0,
                    "p50_vs_empty": p.p50_us / empty.p50_us if empty.p50_us else 0.0,
                    "p99_vs_empty": p.p99_us / empty.p99_us if empty.p99_us else 0.0,
                    "server_cpu_vs_empty": (
                        p.server_cpu_us_per_req / empty.server_cpu_us_per_req
                        if empty.server_cpu_us_per_req
                        else 0.0
                    ),
                }
            )
    return out


def report(payload: dict[str, Any]) -> None:
    rows = []
    by_key = {(r["target"], r["method"], r["concurrency"]): r for r in payload["ratios"]}
    for p in payload["points"]:
        r = by_key.get((p["target"], p["method"], p["concurrency"]))
        rows.append(
            [
                p["target"],
                p["method"],
                str(p["concurrency"]),
                f"{p['rps']:.0f}",
                f"{p['p50_us']:.0f}",
                f"{p['p99_us']:.0f}",
                f"{p['server_cpu_us_per_req']:.0f}",
                f"{r['throughput_vs_empty']:.2f}" if r else "1.00",
                f"{r['p50_vs_empty']:.2f}" if r else "1.00",
            ]
        )
    print()
    print(
        _fleet.table(
            ["server", "method", "c", "req/s", "p50 us", "p99 us", "cpu us/req", "rps/empty", "p50/empty"],
            rows,
        )
    )
    print()
    for name, rss in payload["rss_kib"].items():
        print(f"RSS {name}: {rss['VmRSS'] / 1024:.1f} MiB (peak {rss['VmHWM'] / 1024:.1f} MiB)")
    print(f"startup with 10 000 backends: {payload['startup_10000_backends_s']} s")
    print()
    for t in payload["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}: {t['measured']:.2f}")


def targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    decide = [r for r in payload["ratios"] if r["target"] == "nexus-grpc" and r["method"] == "Decide"]
    for r in decide:
        out.append(
            {
                "target": f"Decide throughput >= 0.80 x empty handler (c={r['concurrency']})",
                "measured": r["throughput_vs_empty"],
                "met": r["throughput_vs_empty"] >= 0.80,
            }
        )
    c1 = next((r for r in decide if r["concurrency"] == 1), None)
    if c1 is not None:
        out.append(
            {
                "target": "Decide p50 <= 1.25 x empty handler (c=1)",
                "measured": c1["p50_vs_empty"],
                "met": c1["p50_vs_empty"] <= 1.25,
            }
        )
    rss = payload["rss_kib"]["nexus-grpc, 10 000 backends, after Decides"]["VmRSS"] / 1024
    out.append(
        {"target": "RSS with 10 000 backends <= 150 MB (MiB)", "measured": rss, "met": rss * 1.048576 <= 150}
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s per point after 1 s warm-up")
    parser.add_argument("--out", default="e2e", help="result name under benches/results/")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per point (median); 2 quick, 3 full")
    parser.add_argument(
        "--profile-server",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also py-spy the server for SECONDS during Decide c=8 (benches/results/e2e_server_profile.txt)",
    )
    args = parser.parse_args()
    h2 = shutil.which("h2load")
    if h2 is None:
        print(
            "e2e bench: h2load is not installed. It comes with Debian's nghttp2-client:\n"
            "    apt-get install -y nghttp2-client\n"
            "then run this again.",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    watch = _fleet.CpuWatch()
    n_rounds = args.rounds or (2 if args.quick else 3)
    payload = run(args.quick, h2, n_rounds, args.profile_server)
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
