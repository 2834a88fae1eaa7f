"""Run a document's shell blocks as written: the ```sh blocks between `<!-- NAME: begin -->` and
`<!-- NAME: end -->`, in order, in one bash, each ```text block after a command block being what
it prints (its lines, made neutral where runs differ, must appear in that order in the output).

    blocks = doc_blocks(REPO / "README.md", "tour")
    run = run_blocks(blocks, cwd=REPO, env=env, own_net=can_unshare(), timeout=150)
    assert run.returncode == 0, run.output[-6000:]
    for block, printed in zip(blocks, run.printed, strict=True):
        assert not block.missing(printed, VARYING), ...

The bash runs in a session of its own; `run.leftovers` are the processes of that session still
alive when it ended (then killed): a block that starts processes and stops them leaves none.
With `own_net`, the bash has a network namespace of its own (fixed ports are free there) and a
private /tmp (files a block writes there stay there; a checkout under /tmp stays visible at its
path); that needs root and `unshare`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "Run", "can_unshare", "doc_blocks", "neutral", "run_blocks"]

MARK = "@@doc-block@@"
Patterns = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Block:
    commands: str  # the sh block
    documented: str  # the text block after it, or ""

    def missing(self, printed: str, varying: Patterns = ()) -> str | None:
        """The first documented line not found, in order, among the printed ones (None: all are)."""
        got = iter(neutral(x, varying) for x in printed.splitlines())
        for want in (neutral(x, varying) for x in self.documented.splitlines() if x.strip()):
            if not any(g == want for g in got):  # in order: `got` is consumed
                return want
        return None


def doc_blocks(path: Path, name: str) -> list[Block]:
    """The sh blocks (each with the text block that follows it) between the markers named `name`."""
    text = path.read_text()
    begin, end = text.index(f"<!-- {name}: begin -->"), text.index(f"<!-- {name}: end -->")
    fences = re.findall(r"^```(\w*)\n(.*?)^```$", text[begin:end], re.M | re.S)
    blocks: list[Block] = []
    for lang, body in fences:
        if lang == "sh":
            blocks.append(Block(body, ""))
        elif lang == "text":
            assert blocks and not blocks[-1].documented, (
                f"{path.name} {name}: a text block follows one sh block"
            )
            blocks[-1] = Block(blocks[-1].commands, body)
        else:
            raise AssertionError(f"{path.name} {name}: only sh and text blocks, not {lang!r}")
    assert blocks, f"{path.name}: no sh block between the {name} markers"
    return blocks


def neutral(line: str, varying: Patterns = ()) -> str:
    """`line` with each (pattern, replacement) of `varying` applied and its whitespace collapsed."""
    for pattern, replacement in varying:
        line = re.sub(pattern, replacement, line)
    return " ".join(line.split())


def can_unshare() -> bool:
    """Root with `unshare` and `ip`: a network and mount namespace of the run's own."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("ip") is not None


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str  # stdout and stderr, interleaved
    printed: list[str]  # what each block printed (shorter than the blocks when the bash stopped early)
    leftovers: list[str]  # the session's processes alive after the bash ended: "pid command"


def _session(sid: int) -> list[str]:
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                alive.append(f"{entry.name} {cmdline.strip()}")
    return alive


def run_blocks(
    blocks: Sequence[Block],
    *,
    cwd: Path,
    env: Mapping[str, str],
    script: Path,
    own_net: bool,
    timeout: float,
    replace: Mapping[str, str] | None = None,
) -> Run:
    """Run the blocks with `set -e` in one bash (written to `script`), each text edited by
    `replace` (old → new, for a run without a namespace of its own)."""
    lines = ["set -e"]
    for block in blocks:
        text = block.commands
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        lines += [f"echo {MARK}", text]
    script.write_text("\n".join(lines) + "\n")
    command = ["bash", str(script)]
    if own_net:
        # fd 3 opens the script before a fresh /tmp hides it; a checkout under /tmp (a CI clone)
        # is bound into the fresh /tmp at its own path, so the blocks still find it
        inner = (
            f'exec 3<"{script}"; ip link set lo up; fresh=$(mktemp -d); mount -t tmpfs tmpfs "$fresh"; '
            'case "$PWD" in /tmp/*) mkdir -p "$fresh/${PWD#/tmp/}"; '
            'mount --bind "$PWD" "$fresh/${PWD#/tmp/}";; '
            'esac; mount --move "$fresh" /tmp; cd "$PWD"; mkdir -p "$HOME"; exec bash /dev/fd/3'
        )
        command = ["unshare", "--net", "--mount", "bash", "-c", inner]
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        output += f"\n(killed after {timeout:g} s)"
    leftovers = _session(proc.pid)
    with contextlib.suppress(ProcessLookupError):  # whatever the blocks left running
        os.killpg(proc.pid, signal.SIGKILL)
    for line in leftovers:  # processes that left the process group but not the session
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    return Run(proc.returncode, output, output.split(f"{MARK}\n")[1:], leftovers)
