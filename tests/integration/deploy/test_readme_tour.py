"""The README's 5-minute tour, run as written: every ```sh block between `<!-- tour: begin -->` and
`<!-- tour: end -->`, in order, in one bash, from the repository root, against the fresh demo server
the first block starts (`./dev serve &`, `./dev wait`) and the last one stops (`kill %1`). Each
```text block after a command block is what it prints: its lines, with ids, the month, waits,
timings and column widths made neutral, must appear in that order in what the commands printed.

The tour's fixed port (50051) is kept in a network namespace of its own, where nothing else
listens; without one (not root), the port is swapped for a free one. The bash runs in a session
of its own, and whatever is left of it at the end is killed: nothing outside it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from deploy_manifests import REPO
from support.net import free_port

pytestmark = [pytest.mark.slow]

README = REPO / "README.md"
MARK = "@@tour-block@@"


def tour_blocks() -> list[tuple[str, str]]:
    """(sh commands, documented output or "") for each command block of the tour."""
    text = README.read_text()
    begin, end = text.index("<!-- tour: begin -->"), text.index("<!-- tour: end -->")
    fences = re.findall(r"^```(\w*)\n(.*?)^```$", text[begin:end], re.M | re.S)
    blocks: list[tuple[str, str]] = []
    for lang, body in fences:
        if lang == "sh":
            blocks.append((body, ""))
        elif lang == "text":
            assert blocks and not blocks[-1][1], "a text block follows one sh block"
            blocks[-1] = (blocks[-1][0], body)
        else:
            raise AssertionError(f"the tour has only sh and text blocks, not {lang!r}")
    return blocks


VARYING = [  # what changes from run to run; everything else must match
    (r"\b[0-9a-f]{16,32}(-\d+)?\b", "ID"),  # request and decision ids
    (r"\b20\d\d-\d\d\b", "YYYY-MM"),  # the current month
    (r"\b\d+ ms\b", "N ms"),  # waits and their readable forms
    (r"\(\d+(\.\d+)?( min \d+)? s\)", "(N s)"),
    (r"\b\d+% loaded", "N% loaded"),
    (r"^(\S+\s+(?:RequestAnalyzer|\w+Reconciler)\s+\d+\s+\d+\s+)\d+", r"\1N"),  # a stage's microseconds
    (r"-{2,}", "--"),  # table rules: their width follows the cells
]


def neutral(line: str) -> str:
    for pattern, replacement in VARYING:
        line = re.sub(pattern, replacement, line)
    return " ".join(line.split())


def venv_is_set_up() -> bool:
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + (REPO / "constraints.txt").read_bytes())
    stamps = [REPO / ".venv" / f".installed-{kind}" for kind in ("run", "test")]
    return any(p.is_file() and p.read_text().strip() == want.hexdigest()[:16] for p in stamps)


def script(blocks: list[tuple[str, str]], port: int | None) -> str:
    lines = ["set -e"]
    for commands, _ in blocks:
        text = commands
        if port is not None:  # no namespace of our own: the tour's port may be taken
            text = text.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
            text = text.replace("./dev serve &", f"./dev serve --listen 127.0.0.1:{port} &")
        lines += [f"echo {MARK}", text]
    return "\n".join(lines) + "\n"


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    if not venv_is_set_up():
        pytest.skip("the tour needs .venv as ./dev sets it up (run ./dev test)")
    blocks = tour_blocks()
    assert blocks[0][0].startswith("./dev serve &") and "kill %1" in blocks[-1][0]
    own_net = os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("ip") is not None
    port = None if own_net else free_port()
    path = tmp_path / "tour.sh"
    path.write_text(script(blocks, port))
    env = {k: v for k, v in os.environ.items() if k not in ("NEXUS_ADMIN_TOKEN", "NEXUS_CLIENT_TOKEN")}
    env.pop("VIRTUAL_ENV", None)
    if port is not None:
        env["NEXUS_TARGET"] = f"127.0.0.1:{port}"
    command = ["bash", str(path)]
    if own_net:
        command = ["unshare", "--net", "bash", "-c", f"ip link set lo up && exec bash {path}"]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # anything the tour left running in its session
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output[-6000:]
    printed = output.split(f"{MARK}\n")[1:]
    assert len(printed) == len(blocks), output[-3000:]
    for (commands, documented), actual in zip(blocks, printed, strict=True):
        want = [neutral(x) for x in documented.splitlines() if x.strip()]
        got = iter(neutral(x) for x in actual.splitlines())
        missing = [w for w in want if not any(g == w for g in got)]  # in order: `got` is consumed
        assert not missing, f"{commands}\nprinted:\n{actual}\nnot found, in order: {missing[0]!r}"
