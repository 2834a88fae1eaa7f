"""`nexus-grpc health --ca FILE --tls-name NAME`: the health check of a `[server.tls]` server (what
a Kubernetes exec probe runs, since the kubelet's own gRPC probe speaks plaintext only), against a
real TLS server on the throwaway certificates of docs/examples/tls (a server certificate for
localhost, 127.0.0.1 and ::1, issued by an example CA)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_grpc import cli
from nexus_grpc.testing.server import TestServer

TLS = Path(__file__).resolve().parents[3] / "docs" / "examples" / "tls"
CA, CERT, KEY = TLS / "ca.pem", TLS / "server.pem", TLS / "server.key"

FLEET = """
[[backends]]
id = "a"
url = "http://127.0.0.1:9000"
type = "ollama"
[[backends.models]]
id = "m"
"""


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TestServer]:
    with TestServer(config_text=f'[server.tls]\ncert = "{CERT}"\nkey = "{KEY}"\n{FLEET}') as server:
        yield server


def health(target: str, *args: str) -> int:
    return cli.main(["health", "--target", target, "--timeout", "3", *args])


def test_health_over_tls_trusting_the_ca_or_the_servers_own_certificate(
    tls_server: TestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tls_server.target
    assert health(target, "--ca", str(CA)) == 0  # 127.0.0.1 is in the certificate
    assert f"{target} is SERVING" in capsys.readouterr().out
    # the certificate the server presents as the trust anchor: no CA file needed
    assert health(target, "--ca", str(CERT)) == 0
    assert health(target, "--ca", str(CA), "--tls-name", "localhost") == 0
    assert health(target, "--ca", str(CERT), "--tls-name", "localhost", "--service", "liveness") == 0
    assert health(target, "--ca", str(CERT), "--service", "envoy.service.ext_proc.v3.ExternalProcessor") == 0


def test_the_name_and_the_trust_are_checked(
    tls_server: TestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tls_server.target
    capsys.readouterr()
    assert health(target, "--ca", str(CA), "--tls-name", "nexus-grpc") == 1  # not a name of the certificate
    err = capsys.readouterr().err
    assert f"{target} is not serving: UNAVAILABLE (" in err and "Hostname" in err, err
    assert health(target, "--tls-name", "localhost") == 1  # gRPC's public roots do not know the example CA
    assert "is not serving: UNAVAILABLE" in capsys.readouterr().err
    assert health(target) == 1  # plaintext against a TLS port: what the kubelet's gRPC probe would do
    assert "is not serving: UNAVAILABLE" in capsys.readouterr().err


def test_tls_against_a_plaintext_server_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with TestServer(config_text=FLEET) as plain:
        assert health(plain.target) == 0
        assert health(plain.target, "--ca", str(CA)) == 1
    assert "is not serving: UNAVAILABLE" in capsys.readouterr().err


def test_a_bad_ca_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.pem"
    assert health("127.0.0.1:1", "--ca", str(missing)) == 1
    assert capsys.readouterr().err.startswith(f"nexus-grpc: --ca {missing}: cannot read it: ")
    assert health("127.0.0.1:1", "--ca", str(KEY)) == 1  # a key, not a certificate
    assert capsys.readouterr().err == f"nexus-grpc: --ca {KEY}: no PEM certificate in it\n"
    assert health("127.0.0.1:1", "-q", "--ca", str(missing)) == 1
    assert capsys.readouterr() == ("", "")


def test_the_command_line_as_a_probe_runs_it(tls_server: TestServer, cli_env: dict[str, str]) -> None:
    command = ["health", "--target", tls_server.target, "--ca", str(CA), "--tls-name", "localhost"]
    done = subprocess.run(
        [sys.executable, "-m", "nexus_grpc.cli", *command],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"nexus-grpc: {tls_server.target} is SERVING\n"
