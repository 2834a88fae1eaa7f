"""`serve --workers 1` versus `--workers 2` on one port, same run: Decide throughput under h2load.

    ./dev bench workers --quick      # about 1 min; writes benches/results/workers.json

Both servers load the same 100-backend bench fleet with the sqlite ledger (the default for
`serve`), and are measured in alternating rounds at concurrency 64 over 8 connections (the kernel
spreads connections, not requests, over the workers' sockets). The load generator runs on the same
2 cores, so this measures what a 2-core box gains, load generator included.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fleet
import grpc
from e2e import DECIDE, Target, decide_request, frame, free_port, nexus_command, point, process, wait_ready

from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc


def check_routes(port: int) -> None:
    """h2load counts HTTP 200 as success, and gRPC errors are HTTP 200 too: check real Routes first,
    on separate connections so that every worker answers some."""
    for _ in range(8):
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as ch:
            resp = dgrpc.DecisionServiceStub(ch).Decide(decide_request(), timeout=10)
            if resp.WhichOneof("decision") != "route":
                raise RuntimeError(f"bench fleet must route; got {resp}")


def run(quick: bool, h2: str) -> dict[str, Any]:
    seconds, warmup, rounds = (4.0, 1.0, 3) if quick else (8.0, 2.0, 5)
    rps: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        body = tmp / "decide.bin"
        body.write_bytes(frame(decide_request().SerializeToString()))
        for _ in range(rounds):
            for workers in (1, 2):
                config = tmp / f"nexus-{workers}.toml"
                text = _fleet.fleet_toml(100, in_flight_ttl_seconds=1.0).replace(
                    'kind = "memory"', 'kind = "sqlite"'
                )
                config.write_text(text.replace("[ledger]", f'[ledger]\npath = "ledger-{workers}.db"', 1))
                port = free_port()
                cmd = [*nexus_command(config, port), "--workers", str(workers)]
                with process(cmd, tmp / f"serve-{workers}.log") as proc:
                    wait_ready(proc, port, tmp / f"serve-{workers}.log")
                    check_routes(port)
                    target = Target(f"workers={workers}", port, proc.pid, {"Decide": (DECIDE, body)})
                    pt = point(h2, target, "Decide", "8", seconds, warmup, tmp)  # 8 x 8 streams
                    if pt.failed:
                        raise RuntimeError(f"{pt.failed} failed requests with --workers {workers}")
                    rps[workers].append(pt.rps)
    one, two = statistics.median(rps[1]), statistics.median(rps[2])
    return {
        "bench": "workers",
        "machine": _fleet.machine(),
        "quick": quick,
        "rps": {str(k): v for k, v in rps.items()},
        "median_rps": {"1": one, "2": two},
        "ratio": two / one,
        "target": ">= 1.6x",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    h2 = shutil.which("h2load")
    if h2 is None:
        print(
            "workers bench: h2load is not installed (Debian: apt-get install -y nghttp2-client)",
            file=sys.stderr,
        )
        return 2
    watch = _fleet.CpuWatch()
    payload = run(args.quick, h2)
    payload["other_processes_cpu_cores"] = round(watch.other_cores(), 2)
    path = _fleet.write_result("workers", payload)
    print(
        f"\n--workers 2 / --workers 1 Decide throughput: {payload['ratio']:.2f}x "
        f"({payload['median_rps']['2']:.0f} vs {payload['median_rps']['1']:.0f} req/s); wrote {path}"
    )
    _fleet.noise_note(payload["other_processes_cpu_cores"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
