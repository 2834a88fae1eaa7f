"""`nexus-grpc dev-cert DIR`: writes a self-signed certificate and key only when asked, says
what it wrote, never overwrites without --force, fails clearly without openssl; a server on that
pair serves TLS, health included (what an endpoint-picking gateway checks), to a client that
trusts the certificate, and nothing in plaintext."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc.testing.server import TestServer

FLEET = """
[[backends]]
id = "a"
url = "http://127.0.0.1:9000"
type = "ollama"
[[backends.models]]
id = "m"
"""


def dev_cert(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexus_grpc.cli", "dev-cert", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_dev_cert_writes_says_what_and_refuses_to_overwrite(tmp_path: Path, cli_env: dict[str, str]) -> None:
    target = tmp_path / "tls"
    done = dev_cert(cli_env, str(target))
    assert done.returncode == 0, done.stderr
    cert, key = target / "nexus-grpc.crt", target / "nexus-grpc.key"
    assert f"wrote {cert}" in done.stdout and f"wrote {key}" in done.stdout
    assert "localhost, 127.0.0.1, ::1" in done.stdout and "development" in done.stdout
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = cert.read_bytes()
    again = dev_cert(cli_env, str(target))
    assert again.returncode == 1 and "already exist" in again.stderr and "--force" in again.stderr
    assert cert.read_bytes() == before
    forced = dev_cert(cli_env, str(target), "--force", "--name", "nexus-grpc.inference.svc", "--days", "2")
    assert forced.returncode == 0, forced.stderr
    assert cert.read_bytes() != before and "nexus-grpc.inference.svc" in forced.stdout
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-text"], capture_output=True, text=True, check=True
    ).stdout
    assert "DNS:nexus-grpc.inference.svc" in text


def test_dev_cert_without_openssl_fails_with_a_clear_message(tmp_path: Path, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "PATH": str(tmp_path / "empty")}
    done = dev_cert(env, str(tmp_path / "tls"))
    assert done.returncode == 1
    assert "openssl command was not found" in done.stderr and "apt-get install openssl" in done.stderr
    assert not (tmp_path / "tls").exists()


@pytest.mark.parametrize("bad", [["--days", "0"], ["--name", "a b"]])
def test_dev_cert_refuses_bad_arguments(tmp_path: Path, cli_env: dict[str, str], bad: list[str]) -> None:
    done = dev_cert(cli_env, str(tmp_path / "tls"), *bad)
    assert done.returncode == 1 and done.stderr.startswith("nexus-grpc: ")


def test_a_server_on_the_dev_cert_serves_tls_and_health(tmp_path: Path, cli_env: dict[str, str]) -> None:
    assert dev_cert(cli_env, str(tmp_path)).returncode == 0
    cert, key = tmp_path / "nexus-grpc.crt", tmp_path / "nexus-grpc.key"
    config = f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\n{FLEET}'
    with TestServer(config_text=config) as server:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(server.target, creds) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("envoy.service.ext_proc.v3.ExternalProcessor", "liveness", "readiness"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
        with grpc.insecure_channel(server.target) as plain:
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
