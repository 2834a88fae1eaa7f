"""deploy/envoy/README.md's quick starts, run as written (support.doc_blocks): the blocks between
`<!-- envoy-quick-start: begin -->` and its end marker, and those of the InferencePool picker
(`envoy-pool-quick-start`), in one bash each from the repository root, with the test venv's
`envoy`, `grpcurl`, `nexus-grpc` and `python` first on PATH and a HOME of their own. Each ```text
block is what its commands print; every process the blocks start must be gone when they end.

The quick start's fixed ports (11434 and 8000 for the stand-ins, which nexus.toml names; 50061,
10000, 9901 by default) are kept in a network namespace of its own where the machine allows one
(root), with a private /tmp. Without one, NEXUS_PORT, ENVOY_PORT and ADMIN_PORT (which the blocks
read) get free ports, /tmp/ becomes a temporary directory, and a taken stand-in port fails the
test saying so."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from deploy_manifests import REPO
from support.doc_blocks import Block, Run, can_unshare, doc_blocks, run_blocks
from support.envoy import find_envoy
from support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.envoy]

GUIDE = REPO / "deploy" / "envoy" / "README.md"
STAND_IN_PORTS = (11434, 8000)  # deploy/envoy/nexus.toml's backends
VARYING = [
    (r"\(after \d+(\.\d+)? s\)", "(after N s)"),
    (r"127\.0\.0\.1:\d+ is SERVING", "127.0.0.1:PORT is SERVING"),  # NEXUS_PORT, when chosen here
]


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run(blocks: list[Block], tmp_path: Path, name: str) -> Run:
    find_envoy()  # a clear error when the test extras are missing
    own_net = can_unshare()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "VIRTUAL_ENV"))}
    env.pop("ENVOY_PORT", None)
    env.pop("ADMIN_PORT", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    replace: dict[str, str] = {}
    if own_net:
        env["HOME"] = "/tmp/home"  # in the run's own /tmp
    else:
        taken = [p for p in STAND_IN_PORTS if port_taken(p)]
        assert not taken, (
            f"port(s) {taken} are in use on 127.0.0.1: the quick start's stand-in backends need them "
            "(deploy/envoy/nexus.toml names them); free them, or run as root for a network namespace"
        )
        env |= {
            "NEXUS_PORT": str(free_port()),
            "ENVOY_PORT": str(free_port()),
            "ADMIN_PORT": str(free_port()),
        }
        (tmp_path / "home").mkdir()
        env["HOME"] = str(tmp_path / "home")
        replace = {"/tmp/": f"{tmp_path}/"}
    result = run_blocks(
        blocks,
        cwd=REPO,
        env=env,
        script=tmp_path / f"{name}.sh",
        own_net=own_net,
        timeout=100,
        replace=replace,
    )
    assert result.returncode == 0, result.output[-6000:]
    assert len(result.printed) == len(blocks), result.output[-3000:]
    assert not result.leftovers, f"still running after the blocks ended: {result.leftovers}"
    return result


def check_documented(blocks: list[Block], result: Run) -> None:
    for block, printed in zip(blocks, result.printed, strict=True):
        missing = block.missing(printed, VARYING)
        assert missing is None, f"{block.commands}\nprinted:\n{printed}\nnot found, in order: {missing!r}"


def test_the_ext_proc_quick_start_runs_as_written(tmp_path: Path) -> None:
    blocks = doc_blocks(GUIDE, "envoy-quick-start")
    assert [b.commands.count("kill ") for b in blocks][-1] == 1  # the last block stops what ran
    result = run(blocks, tmp_path, "quick-start")
    check_documented(blocks, result)


def test_the_quick_start_with_ext_authz_answers_as_the_guide_says(tmp_path: Path) -> None:
    """ "ext_authz instead": the same blocks on ext_authz.yaml; the Route's body keeps the
    client's model and a Queue is answered at once with 503 and retry-after (the guide's Queue
    block, which waits for a hold, is replaced by that request)."""
    blocks = doc_blocks(GUIDE, "envoy-quick-start")
    setup, route, rejects, queue, stop = blocks
    assert "deploy/envoy/ext_proc.yaml" in setup.commands and "BACKEND_STATUS_LOADING" in queue.commands
    at_once = queue.commands[: queue.commands.index(" & held=$!")].replace("curl -s ", "curl -si ")
    blocks = [Block(setup.commands.replace("ext_proc.yaml", "ext_authz.yaml"), ""), route, rejects]
    blocks += [Block(at_once + "\n", ""), stop]
    result = run(blocks, tmp_path, "ext-authz")
    assert '"model": "gpt-4", "served_by": "gpu-1"' in result.printed[1]  # not rewritten
    assert "HTTP/1.1 503 Service Unavailable" in result.printed[2]
    assert "HTTP/1.1 404 Not Found" in result.printed[2]
    held = result.printed[3]
    assert "HTTP/1.1 503 Service Unavailable" in held and "retry-after:" in held.lower(), held
    assert '"code":"queued"' in held, held


def test_the_inference_pool_quick_start_runs_as_written(tmp_path: Path) -> None:
    blocks = doc_blocks(GUIDE, "envoy-pool-quick-start")
    result = run(blocks, tmp_path, "pool-quick-start")
    printed = result.printed[0]
    assert "is SERVING" in printed
    assert '"model": "llama3:70b", "served_by": "gpu-1"' in printed, printed
    assert "HTTP/1.1 503 Service Unavailable" in printed, printed
