"""The README's 5-minute tour, run as written: every ```sh block between `<!-- tour: begin -->` and
`<!-- tour: end -->`, in order, in one bash, from the repository root, against the fresh demo server
the first block starts (`./dev serve &`, `./dev wait`) and the last one stops (`kill %1`). Each
```text block after a command block is what it prints: its lines, with ids, the month, waits,
timings and column widths made neutral, must appear in that order in what the commands printed
(support.doc_blocks runs them).

The tour's fixed port (50051) is kept in a network namespace of its own, where nothing else
listens; without one (not root), the port is swapped for a free one. The bash runs in a session
of its own, and whatever is left of it at the end is killed: nothing outside it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from deploy_manifests import REPO
from support.doc_blocks import can_unshare, doc_blocks, run_blocks
from support.net import free_port

pytestmark = [pytest.mark.slow]

README = REPO / "README.md"

VARYING = [  # what changes from run to run; everything else must match
    (r"\b[0-9a-f]{16,32}(-\d+)?\b", "ID"),  # request and decision ids
    (r"\b20\d\d-\d\d\b", "YYYY-MM"),  # the current month
    (r"\b\d+ ms\b", "N ms"),  # waits and their readable forms
    (r"\(\d+(\.\d+)?( min \d+)? s\)", "(N s)"),
    (r"\b\d+% loaded", "N% loaded"),
    (r"^(\S+\s+(?:RequestAnalyzer|\w+Reconciler)\s+\d+\s+\d+\s+)\d+", r"\1N"),  # a stage's microseconds
    (r"-{2,}", "--"),  # table rules: their width follows the cells
]


def venv_is_set_up() -> bool:
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + (REPO / "constraints.txt").read_bytes())
    stamps = [REPO / ".venv" / f".installed-{kind}" for kind in ("run", "test")]
    return any(p.is_file() and p.read_text().strip() == want.hexdigest()[:16] for p in stamps)


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    if not venv_is_set_up():
        pytest.skip("the tour needs .venv as ./dev sets it up (run ./dev test)")
    blocks = doc_blocks(README, "tour")
    assert blocks[0].commands.startswith("./dev serve &") and "kill %1" in blocks[-1].commands
    own_net = can_unshare()
    port = None if own_net else free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NEXUS_ADMIN_TOKEN", "NEXUS_CLIENT_TOKEN")}
    env.pop("VIRTUAL_ENV", None)
    replace = {}
    if port is not None:  # no namespace of our own: the tour's port may be taken
        env["NEXUS_TARGET"] = f"127.0.0.1:{port}"
        replace = {
            "127.0.0.1:50051": f"127.0.0.1:{port}",
            "./dev serve &": f"./dev serve --listen 127.0.0.1:{port} &",
        }
    run = run_blocks(
        blocks, cwd=REPO, env=env, script=tmp_path / "tour.sh", own_net=own_net, timeout=150, replace=replace
    )
    assert run.returncode == 0, run.output[-6000:]
    assert len(run.printed) == len(blocks), run.output[-3000:]
    for block, printed in zip(blocks, run.printed, strict=True):
        missing = block.missing(printed, VARYING)
        assert missing is None, f"{block.commands}\nprinted:\n{printed}\nnot found, in order: {missing!r}"
