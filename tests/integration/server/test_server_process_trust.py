"""`nexus-grpc serve` as a real process against files that cannot run, and on a listen name that
only looks like loopback.

A configuration `serve` cannot run is refused at start: exit 2, the file and the key named, never
a traceback; `check-config` says the same beforehand (the one exception: a sqlite file whose
pages, not its header, are damaged, which only opening it shows).

Self-contained on purpose: only the generated stubs and the CLI.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from support.net import free_port
from support.servers import REPO, serve_env, wait_serving

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc, registry_pb2_grpc
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb

TLS_EXAMPLE = REPO / "docs" / "examples" / "tls"
CLI = (sys.executable, "-m", "nexus_grpc.cli")

BASE_TOML = """\
[server]
drain_seconds = 0
grace_seconds = 0.5
[ledger]
kind = "memory"
[[backends]]
id = "local"
url = "http://127.0.0.1:9001"
type = "ollama"
[[backends.models]]
id = "m"
"""
MEMORY_LEDGER = '[ledger]\nkind = "memory"\n'
SQLITE_LEDGER = '[ledger]\nkind = "sqlite"\npath = "ledger.db"\n'


Run = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def run() -> Iterator[Run]:
    """run(*argv) -> a started process; killed at teardown if still running."""
    procs: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=serve_env()
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def refused_at_start(proc: subprocess.Popen[str]) -> str:
    """Wait for a `serve` that must refuse to start; its standard error."""
    _, err = proc.communicate(timeout=30)  # a serve that started runs on: TimeoutExpired
    assert "Traceback" not in err, err
    assert proc.returncode == 2, err
    assert err.startswith("nexus-grpc: refusing to start"), err
    return err


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "check-config", str(path)],
        capture_output=True,
        text=True,
        env=serve_env(),
        timeout=60,
        check=False,
    )


# --- files the loader or the ledger refuse ---------------------------------------------------


def _noise(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(64 * 1024))


def _damaged_header(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + random.Random(7).randbytes(64 * 1024 - 16))


def _damaged_pages(path: Path) -> None:
    """A real sqlite file whose 100-byte header is intact and whose pages are noise."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 500,) for _ in range(40)])
    conn.close()
    data = bytearray(path.read_bytes())
    data[100:] = random.Random(7).randbytes(len(data) - 100)
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_text("garbage\n")


# id: (config text, the file to spoil and how, the key named, words in the message,
#      whether check-config sees it too)
CASES: dict[str, tuple[str, tuple[str, Callable[[Path], None]] | None, str, str, bool]] = {
    "backend url unbalanced [": (
        BASE_TOML.replace("http://127.0.0.1:9001", "http://[::1"),
        None,
        "backends[0].url",
        "'http://[::1' is not a valid URL",
        True,
    ),
    "ledger not sqlite": (
        BASE_TOML.replace(MEMORY_LEDGER, SQLITE_LEDGER),
        ("ledger.db", _noise),
        "ledger.path",
        "is not a sqlite database",
        True,
    ),
    "ledger header damaged": (
        BASE_TOML.replace(MEMORY_LEDGER, SQLITE_LEDGER),
        ("ledger.db", _damaged_header),
        "ledger.path",
        "is a corrupt sqlite database",
        True,
    ),
    "ledger pages damaged": (
        BASE_TOML.replace(MEMORY_LEDGER, SQLITE_LEDGER),
        ("ledger.db", _damaged_pages),
        "ledger.path",
        "the database file is corrupt",
        False,
    ),
    "tls cert garbage": (
        BASE_TOML.replace(
            "[ledger]", f'[server.tls]\ncert = "garbage.pem"\nkey = "{TLS_EXAMPLE / "server.key"}"\n[ledger]'
        ),
        ("garbage.pem", _garbage),
        "server.tls.cert",
        "no PEM certificate found",
        True,
    ),
    "tls key garbage": (
        BASE_TOML.replace(
            "[ledger]", f'[server.tls]\ncert = "{TLS_EXAMPLE / "server.pem"}"\nkey = "garbage.pem"\n[ledger]'
        ),
        ("garbage.pem", _garbage),
        "server.tls.key",
        "not a PEM private key",
        True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_serve_refuses_a_file_that_cannot_run_naming_file_and_key(
    run: Run, tmp_path: Path, case: str
) -> None:
    text, spoil, key, words, checked = CASES[case]
    if spoil is not None:
        name, how = spoil
        how(tmp_path / name)
    config = tmp_path / "nexus.toml"
    config.write_text(text)
    err = refused_at_start(
        run(*CLI, "serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}")
    )
    assert f"{config}: {key}: " in err, err
    assert words in err, err
    check = check_config(config)
    assert "Traceback" not in check.stderr, check.stderr
    if checked:
        assert check.returncode == 1, check.stdout + check.stderr
        assert f"{key}: " in check.stderr and words in check.stderr, check.stderr
    else:
        assert check.returncode == 0, check.stderr  # only opening the file shows its damage


# the first stage drops what lets root write a file its mode forbids (CAP_DAC_OVERRIDE,
# CAP_DAC_READ_SEARCH, CAP_FOWNER) from the bounding set, then execs `nexus-grpc serve`: the
# program runs without them, so file modes apply to it as to any other user
DROP_AND_SERVE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2, 3):
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        print("cannot drop capabilities:", os.strerror(ctypes.get_errno()))
        sys.exit(3)
os.execv(sys.executable, [sys.executable, "-m", "nexus_grpc.cli", *sys.argv[1:]])
"""


def test_serve_refuses_a_read_only_ledger_naming_file_and_key(run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    ledger = folder / "ledger.db"
    conn = sqlite3.connect(ledger)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    config = tmp_path / "nexus.toml"
    config.write_text(BASE_TOML.replace(MEMORY_LEDGER, SQLITE_LEDGER.replace("ledger.db", str(ledger))))
    ledger.chmod(0o444)
    folder.chmod(0o555)
    listen = f"127.0.0.1:{free_port()}"
    try:
        if os.geteuid() == 0:
            script = tmp_path / "drop.py"
            script.write_text(DROP_AND_SERVE)
            proc = run(sys.executable, str(script), "serve", "--config", str(config), "--listen", listen)
            out, err = proc.communicate(timeout=30)
            if proc.returncode == 3:
                pytest.skip(out.strip())  # no CAP_SETPCAP: root cannot be made to meet file modes
        else:
            proc = run(*CLI, "serve", "--config", str(config), "--listen", listen)
            _, err = proc.communicate(timeout=30)
    finally:
        folder.chmod(0o755)
    assert "Traceback" not in err, err
    assert proc.returncode == 2, err
    assert f"{config}: ledger.path: {ledger} is not writable" in err, err


# --- a listen name that starts with 127. and resolves to every interface ---------------------

# runs ARGV in a private mount namespace whose /etc/hosts is HOSTS (the C library's resolver,
# which gRPC binds with, and Python's both read it); nothing outside the namespace sees it
IN_NAMESPACE = 'mount --bind "$0" /etc/hosts && exec "$@"'


def _namespaces_work(hosts: Path) -> str:
    """Why a private mount namespace cannot be made here, or ''."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return "needs root and util-linux unshare"
    probe = subprocess.run(
        [unshare, "-m", "sh", "-c", IN_NAMESPACE, str(hosts), "getent", "hosts", "127.evil.test"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare -m with a bind mount failed: {probe.stderr.strip() or probe.returncode}"
    assert probe.stdout.split()[0] == "0.0.0.0", probe.stdout
    return ""


def test_serve_on_a_127_name_that_resolves_to_the_wildcard_refuses_admin_without_a_token(
    run: Run, tmp_path: Path
) -> None:
    """`--listen 127.evil.test:PORT` where that name resolves to 0.0.0.0: the server binds every
    interface, so it is not loopback-only whatever its name looks like. It warns at start and
    refuses admin mutations without a token; data-plane RPCs are served."""
    hosts = tmp_path / "hosts"
    hosts.write_text("0.0.0.0 127.evil.test\n" + Path("/etc/hosts").read_text())
    why = _namespaces_work(hosts)
    if why:
        pytest.skip(why)
    config = tmp_path / "nexus.toml"
    config.write_text(BASE_TOML)
    port = free_port()
    unshare = shutil.which("unshare")
    assert unshare is not None
    proc = run(
        unshare, "-m", "sh", "-c", IN_NAMESPACE, str(hosts),
        *CLI, "serve", "--config", str(config), "--listen", f"127.evil.test:{port}",
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    wait_serving(target, proc)
    with grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as denied:
            registry_pb2_grpc.RegistryServiceStub(channel).SetBackendState(
                rpb.SetBackendStateRequest(backend_id="local", status=tpb.BACKEND_STATUS_DRAINING), timeout=5
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, denied.value
        decided = decision_pb2_grpc.DecisionServiceStub(channel).Decide(
            dpb.DecideRequest(model="m"), timeout=5
        )
        assert decided.route.backend_id == "local"  # still healthy: the drain was refused
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"listening on 127.evil.test:{port} beyond loopback with no admin token" in err, err
    assert "Traceback" not in err
