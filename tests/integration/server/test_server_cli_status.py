"""The CLI for scripts and newcomers: `decide` exits 0/3/4 by verdict and 1 on errors, `--json`
also for errors, `health` (with `--wait`), readable durations, and the line `serve` prints when ready."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.net import free_port

from nexus_grpc import cli
from nexus_grpc.client import EXIT_ERROR, EXIT_QUEUE, EXIT_REJECT, EXIT_ROUTE
from nexus_grpc.testing.server import TestServer


def test_decide_exit_status_is_the_verdict(demo: TestServer, capsys: pytest.CaptureFixture[str]) -> None:
    target = ["--target", demo.target]
    assert cli.main(["decide", "gpt-4", *target]) == EXIT_ROUTE == 0
    assert cli.main(["decide", "reasoning", *target]) == EXIT_QUEUE == 3
    out = capsys.readouterr().out
    assert "retry in " in out and " ms (" in out and " s)" in out  # 17495 ms (17.5 s)
    assert cli.main(["decide", "claude-3-opus", *target, "--json"]) == EXIT_REJECT == 4
    assert json.loads(capsys.readouterr().out)["reject"]["code"] == "REJECT_CODE_MODEL_NOT_FOUND"
    assert cli.main(["explain", "claude-3-opus", *target]) == 0  # explain always 0


def test_errors_exit_1_with_a_hint_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["decide", "gpt-4", "--target", "127.0.0.1:1", "--timeout", "0.5", "--json"]
    assert cli.main(args) == EXIT_ERROR == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert "is a server running on 127.0.0.1:1?" in captured.err


def test_health_command(demo: TestServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "--target", demo.target]) == 0
    assert f"{demo.target} is SERVING" in capsys.readouterr().out
    assert cli.main(["health", "--target", "127.0.0.1:1", "--timeout", "0.3", "--wait", "0.5"]) == 1
    assert "is not serving after waiting" in capsys.readouterr().err
    assert cli.main(["health", "-q", "--target", "127.0.0.1:1", "--timeout", "0.3"]) == 1
    assert capsys.readouterr() == ("", "")


def test_serve_says_when_it_is_ready(cli_env: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_grpc.cli", "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=cli_env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"nexus-grpc: serving on 127.0.0.1:{port} (pass --target 127.0.0.1:{port})")
        assert "try: nexus-grpc explain gpt-4" in line
        done = subprocess.run(
            [sys.executable, "-m", "nexus_grpc.cli", "health", "--target", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
            env=cli_env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_second_signal_stops_at_once(cli_env: dict[str, str]) -> None:
    """The demo drains for 5 s on Ctrl-C; a second Ctrl-C ends it at once."""
    import signal
    import time

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_grpc.cli", "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("nexus-grpc: serving on")
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    said = []
    for line in proc.stderr:  # the server says it drains before it does
        said.append(line)
        if "signal again to stop now" in line:
            break
    assert proc.poll() is None, "".join(said)  # draining
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 3.0  # the behaviour: at once, not after the 5 s drain
    assert "stopping now" in err


def test_a_port_in_use_is_said_plainly(demo: TestServer, cli_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nexus_grpc.cli", "serve", "--listen", demo.target],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env,
        check=False,
    )
    assert done.returncode == 1
    assert f"cannot listen on {demo.target}: the port is in use" in done.stderr
    assert "add_port.cc" not in done.stderr  # our words, before grpc's
