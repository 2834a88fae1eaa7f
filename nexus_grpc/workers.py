"""`serve --workers N`: N processes share one port (SO_REUSEPORT) and one sqlite/redis ledger.

In-flight counts, outcome statistics and health probes are per worker; budget spend is shared
through the ledger; RegistryService admin changes reach every worker within ~0.2 s through a log
that lives as long as this run (`state/admin_sync.py`); SIGHUP is forwarded to every worker.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_workers(args: argparse.Namespace, workers: int) -> int:
    if args.config is None:
        print("nexus-grpc: --workers > 1 needs --config with a sqlite or redis ledger", file=sys.stderr)
        return 2
    cmd = [
        sys.executable,
        "-m",
        "nexus_grpc.cli",
        "--log-level",
        args.log_level,
        "serve",
        "--config",
        args.config,
    ]
    sync_dir = tempfile.mkdtemp(prefix="nexus-workers-")
    cmd += ["--workers", "1", "--reuse-port", "--admin-sync", str(Path(sync_dir) / "admin.db")]
    if args.listen:
        cmd += ["--listen", args.listen]
    children = [subprocess.Popen(cmd) for _ in range(workers)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = 0
    try:
        while any(c.poll() is None for c in children):
            time.sleep(0.2)
            failed = [c for c in children if c.poll() not in (None, 0)]
            if failed and not code:
                code = failed[0].returncode or 1
                forward(signal.SIGTERM, None)
    finally:
        shutil.rmtree(sync_dir, ignore_errors=True)
    return code
