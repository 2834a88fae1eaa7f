"""deploy/container/Containerfile, checked without a container engine: a pinned base (tag and
digest) in every stage, runtime dependencies only under constraints.txt, a numeric non-root USER,
exec-form ENTRYPOINT/CMD that the CLI accepts, a .dockerignore that lets exactly the copied files
in, and the HEALTHCHECK command run as written against a real server. hadolint lints it in
`./dev check`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from deploy_manifests import CONTAINERFILE, REPO

from nexus_grpc import cli
from nexus_grpc.testing.server import TestServer

TEXT = CONTAINERFILE.read_text()
LINES = re.sub(r"\\\n", " ", TEXT).splitlines()  # continuation lines joined


def instructions(name: str) -> list[str]:
    return [line[len(name) + 1 :].strip() for line in LINES if line.startswith(f"{name} ")]


def exec_form(name: str) -> list[str]:
    (value,) = instructions(name)
    if name == "HEALTHCHECK":
        value = value[value.index("CMD ") + 4 :]
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


def test_every_stage_has_a_pinned_base() -> None:
    bases = [line.split()[0] for line in instructions("FROM")]
    assert len(bases) == 2  # build and final
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    assert len(set(bases)) == 1


def test_runtime_dependencies_only_under_the_constraints() -> None:
    installs = [line for line in instructions("RUN") if "pip install" in line]
    assert len(installs) == 1
    assert "-c constraints.txt" in installs[0] and "[test]" not in installs[0]
    final = TEXT[TEXT.rindex("\nFROM ") :]
    assert "apt-get" not in final and "pip install" not in final  # nothing built in the final stage
    assert "uninstall --yes setuptools pip" in TEXT  # no installer left in the image


def test_user_is_numeric_and_not_root() -> None:
    (user,) = instructions("USER")
    uid, gid = (int(x) for x in user.split(":"))
    assert uid > 0 and gid > 0


def test_entrypoint_and_cmd_are_exec_form_the_cli_accepts() -> None:
    entrypoint, command = exec_form("ENTRYPOINT"), exec_form("CMD")
    assert entrypoint == ["nexus-grpc"]  # PID 1 is the server: SIGTERM reaches it
    args = cli.build_parser().parse_args(command)
    assert args.command == "serve" and args.listen.startswith("0.0.0.0:")
    assert instructions("STOPSIGNAL") == ["SIGTERM"]


def test_dockerignore_lets_in_what_copy_needs() -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    assert patterns[patterns.index("*") :][0] == "*"  # deny by default
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for line in instructions("COPY"):
        if line.startswith("--from"):
            continue
        *sources, _dest = line.split()
        assert set(sources) <= allowed, sources
    assert {"pyproject.toml", "constraints.txt", "README.md", "nexus_grpc"} == allowed


@pytest.mark.parametrize("serving", [True, False])
def test_the_healthcheck_command_as_written(serving: bool) -> None:
    command = exec_form("HEALTHCHECK")
    assert command[:2] == ["nexus-grpc", "health"]
    env_line = next(line for line in instructions("ENV") if "NEXUS_TARGET=" in line)
    assert "NEXUS_TARGET=127.0.0.1:50051" in env_line
    with TestServer() as server:
        target = server.target if serving else "127.0.0.1:1"
        env = {**os.environ, "NEXUS_TARGET": target}
        done = subprocess.run(
            [sys.executable, "-m", "nexus_grpc.cli", *command[1:]],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
    assert done.returncode == (0 if serving else 1), done.stderr
    assert done.stdout == "" == done.stderr  # --quiet: the engine keeps the exit status only
