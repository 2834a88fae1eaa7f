"""The sqlite ledger across processes: a writer killed with SIGKILL loses no acknowledged settle
and keeps each exactly once; a process that may not write the file fails to start, naming it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nexus_grpc.ledger.base import SettleResult, month_of
from nexus_grpc.ledger.sqlite import SqliteLedger

MONTH = month_of(time.time())
G, T = "global", "tenant-a"


_WRITER = """
import asyncio, sys, time
from pathlib import Path
from nexus_grpc.ledger.sqlite import SqliteLedger

async def main():
    ledger = SqliteLedger(Path(sys.argv[1]))
    await ledger.start()
    i = 0
    while True:
        await ledger.settle(f"req-{i}", ["global", "tenant-a"], 1000 + i, sys.argv[2], estimated=False)
        print(i, flush=True)
        i += 1

asyncio.run(main())
"""


def test_every_acknowledged_settle_survives_kill_9_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), MONTH], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked >= 40:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    async def after() -> None:
        ledger = SqliteLedger(path)
        await ledger.start()
        totals = ledger.totals(G, MONTH)
        assert totals is not None
        # every acknowledged charge is there once; at most the one in flight got committed too
        charged = sum(1000 + i for i in range(acked + 1))
        assert totals.spent_nano in (charged, charged + 1000 + acked + 1)
        for i in range(acked + 1):
            again = await ledger.settle(f"req-{i}", [G, T], 1, MONTH, estimated=True)
            assert again == SettleResult(False, 1000 + i, False)
        assert ledger.totals(T, MONTH) == totals
        await ledger.close()

    asyncio.run(after())


_START = """
import asyncio, ctypes, os, sys
from pathlib import Path

if sys.argv[1] == "drop":
    # as root: drop the capabilities that let root write what its mode forbids from the bounding
    # set, then exec again: the new program runs without them
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            print("cannot drop capabilities:", os.strerror(ctypes.get_errno()))
            sys.exit(3)
    os.execv(sys.executable, [sys.executable, __file__, "run", sys.argv[2]])

from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger.sqlite import SqliteLedger

async def main():
    ledger = SqliteLedger(Path(sys.argv[2]))
    try:
        await ledger.start()
    except LedgerError as exc:
        print(exc)
        return
    await ledger.close()
    print("started")

asyncio.run(main())
"""


def _start_without_write_permission(path: Path, script: Path) -> str:
    """Start a ledger on `path` in a process that file modes apply to; return what it printed.

    chmod does not stop root, and tests run as root here: then the process first drops
    CAP_DAC_OVERRIDE (and its kin) for good, so sqlite meets a genuinely read-only file and
    directory, as any other user would."""
    script.write_text(_START)
    stage = "drop" if os.geteuid() == 0 else "run"
    done = subprocess.run(
        [sys.executable, str(script), stage, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode == 3:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_read_only_file_fails_start_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "ledger.db"

    async def seed() -> None:
        ledger = SqliteLedger(path)
        await ledger.start()
        await ledger.settle("s", [G], 5, MONTH, estimated=False)
        await ledger.close()

    asyncio.run(seed())
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        outcome = _start_without_write_permission(path, tmp_path / "start.py")
        assert outcome == f"sqlite ledger {path}: the file is read-only"
    finally:
        folder.chmod(0o755)
