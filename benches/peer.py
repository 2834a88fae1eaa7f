"""Versus a peer: LiteLLM's in-process `Router` and our engine on 100 deployments of one model,
against two LiteLLM releases, each in its own venv, our engine timed in the same process.

    ./dev bench peer --quick        # ~3 min (the first run makes the venvs); writes results/peer.json
    ./dev bench peer                # 20 s of samples per contender

For each version (the newest release that installs here, and the pinned 1.100.5) this makes
`benches/.venv-litellm-<version>` once — `litellm==<version>` and nexus-grpc's runtime
dependencies, every package pinned by `benches/litellm-<version>.lock` (written on first install,
committed) — and runs `benches/_peer_driver.py` in it. The driver imports nexus_grpc from this
repository (sys.path), builds LiteLLM routers and our engines in one process and times them in
alternating blocks of 200 calls:

- LiteLLM: `await Router.async_get_available_deployment(model=..., messages=..., request_kwargs={})`
  (the per-request pick of LiteLLM's proxy; in 1.110 a deprecated shim over `Router.select`, which
  the 1.110 proxy calls and which is timed too, as `[select]`) with `simple-shuffle`, `least-busy`,
  `latency-based-routing` and `usage-based-routing-v2`, over 100 deployments with fake `api_base`
  and `api_key` (selection only; an audit hook refuses and counts any socket connect), the cost
  map read from the wheel (`LITELLM_LOCAL_MODEL_COST_MAP=True`);
- ours: `await DecisionEngine.decide(request)` on `nexus full` (the bench fleet at 100 backends,
  every stage active, the route index deciding) and `nexus plain` (100 healthy open backends,
  smart strategy, no policy, budget or stats: what LiteLLM's Router knows); the Route's slot is
  expired after each call, untimed.

The ratio is LiteLLM's microseconds per pick over ours (> 1: we are faster). Versions 1.82.7 and
1.82.8 (malicious releases) and 1.107.0 (reported compromised, no longer on the index) are refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fleet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NEWEST = "1.110.2"  # the newest release that installed here (pip index versions litellm)
PINNED = "1.100.5"
VERSIONS = (NEWEST, PINNED)
REFUSED = {
    "1.82.7": "a malicious release",
    "1.82.8": "a malicious release",
    "1.107.0": "reported compromised (no longer on the index)",
}


def _quiet(text: str) -> str:
    """pip's output without this machine's warnings about missing local index folders."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("WARNING: Location"))


def runtime_dependencies() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return deps


def unpinned(wanted: list[str], lock: str) -> list[str]:
    """The requirements in `wanted` whose package the lock file pins no version of."""

    def name(requirement: str) -> str:
        return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")

    pinned = {name(line) for line in lock.splitlines() if "==" in line}
    return [n for n in map(name, wanted) if n and n not in pinned]


def ensure_venv(version: str) -> Path:
    """benches/.venv-litellm-<version>, with every package pinned by its lock file."""
    if version in REFUSED:
        raise SystemExit(f"peer bench: refusing litellm {version}: {REFUSED[version]}")
    venv = HERE / f".venv-litellm-{version}"
    lock = HERE / f"litellm-{version}.lock"
    python = venv / "bin" / "python"
    wanted = [f"litellm=={version}", *runtime_dependencies()]
    stamp_value = hashlib.sha256(
        ("\n".join(wanted) + (lock.read_text() if lock.exists() else "")).encode()
    ).hexdigest()[:16]
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == stamp_value:
        return python
    if not python.exists():
        print(f"peer bench: making {venv.relative_to(ROOT)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q"]
    if lock.exists() and (missing := unpinned(wanted, lock.read_text())):
        # a runtime dependency added since the lock was written: resolve again, write a new lock
        print(f"peer bench: {lock.name} pins no {', '.join(missing)}; resolving again", flush=True)
        lock.unlink()
    cmd = [*pip, "-r", str(lock)] if lock.exists() else [*pip, *wanted]
    print(f"peer bench: installing litellm {version} ({'from its lock' if lock.exists() else 'resolving'})")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"peer bench: pip failed for litellm {version}:\n{_quiet(done.stdout + done.stderr)}"
        )
    installed = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = [line for line in _quiet(installed).splitlines() if "==" in line]
    if f"litellm=={version}" not in pins:
        raise SystemExit(f"peer bench: litellm {version} did not install:\n{installed}")
    if not lock.exists():
        lock.write_text(
            f"# benches/peer.py: the venv for litellm {version}, every package pinned (pip freeze)\n"
            + "\n".join(sorted(pins, key=str.lower))
            + "\n",
            encoding="utf-8",
        )
        stamp_value = hashlib.sha256(("\n".join(wanted) + lock.read_text()).encode()).hexdigest()[:16]
    stamp.write_text(stamp_value)
    return python


def drive(python: Path, seconds: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NEXUS_VERIFY", "VIRTUAL_ENV")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    done = subprocess.run(
        [str(python), str(HERE / "_peer_driver.py"), "--seconds", f"{seconds:g}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the peer driver failed in {python.parent.parent.name}:\n{done.stderr[-4000:]}")
    payload: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return payload


def ratios(run: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {r["contender"]: r for r in run["results"]}
    out = []
    for name, r in rows.items():
        if not name.startswith("litellm"):
            continue
        for ours in ("nexus full", "nexus plain"):
            our = rows[ours]
            out.append(
                {
                    "litellm": name,
                    "nexus": ours,
                    "p50_ratio": r["p50_us"] / our["p50_us"],
                    "mean_ratio": r["mean_us"] / our["mean_us"],
                    "p99_ratio": r["p99_us"] / our["p99_us"],
                }
            )
    return out


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """>= 10x at p50 for every strategy and version, against the full fleet (every stage), and
    against LiteLLM's faster entry point where it has two."""
    out = []
    for run in runs:
        best: dict[str, dict[str, Any]] = {}
        for r in run["ratios"]:
            if r["nexus"] != "nexus full":
                continue
            strategy = r["litellm"].removeprefix("litellm ").removesuffix(" [select]")
            if strategy not in best or r["p50_ratio"] < best[strategy]["p50_ratio"]:
                best[strategy] = r
        for strategy, r in best.items():
            out.append(
                {
                    "target": f">= 10x faster than LiteLLM {run['litellm_version']} {strategy}"
                    f" (p50, {r['litellm']})",
                    "measured": r["p50_ratio"],
                    "met": r["p50_ratio"] >= 10,
                }
            )
    return out


def report(payload: dict[str, Any]) -> None:
    for run in payload["runs"]:
        print(
            f"\nLiteLLM {run['litellm_version']} and nexus-grpc in one process (Python {run['python']}), "
            f"{run['deployments']} deployments, us per pick"
        )
        rows = [
            [r["contender"], str(r["n"]), f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['mean_us']:.1f}"]
            for r in run["results"]
        ]
        print(_fleet.table(["contender", "n", "p50", "p99", "mean"], rows))
        rows = [
            [r["litellm"], r["nexus"], f"{r['p50_ratio']:.1f}x", f"{r['mean_ratio']:.1f}x"]
            for r in run["ratios"]
        ]
        print("LiteLLM / ours (> 1: we are faster):")
        print(_fleet.table(["litellm", "nexus", "p50", "mean"], rows))
        if run["strategy_errors"]:
            print(f"not measured: {run['strategy_errors']}")
        print(
            f"socket connects refused: {len(run['connections_refused'])}; indexed: {run['indexed_decisions']}"
        )
    print()
    for t in payload["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}: {t['measured']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 s of samples per contender")
    parser.add_argument("--versions", default=",".join(VERSIONS), help="LiteLLM versions, comma-separated")
    parser.add_argument("--out", default="peer", help="result name under benches/results/")
    args = parser.parse_args()
    versions = [v for v in args.versions.split(",") if v]
    for v in versions:
        if v in REFUSED:
            parser.error(f"refusing litellm {v}: {REFUSED[v]}")
    pythons = {v: ensure_venv(v) for v in versions}  # before timing: installs take CPU
    t0 = time.perf_counter()
    watch = _fleet.CpuWatch()
    runs = []
    for v in versions:
        print(f"measuring LiteLLM {v} ...", flush=True)
        run = drive(pythons[v], 4.0 if args.quick else 20.0)
        run["ratios"] = ratios(run)
        runs.append(run)
    payload: dict[str, Any] = {
        "bench": "peer",
        "machine": _fleet.machine(),
        "quick": args.quick,
        "runs": runs,
    }
    payload["other_processes_cpu_cores"] = round(watch.other_cores(), 2)
    payload["targets"] = targets(runs)
    payload["wall_s"] = round(time.perf_counter() - t0, 1)
    path = _fleet.write_result(args.out, payload)
    report(payload)
    print(f"\nwrote {path} in {payload['wall_s']} s (code {payload['machine']['code']})")
    _fleet.noise_note(payload["other_processes_cpu_cores"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
