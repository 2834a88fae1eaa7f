"""TLS and mutual TLS on the gRPC port ([server.tls]), with certificates made by openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc.testing.server import TestServer

FLEET = """
[[backends]]
id = "a"
url = "http://127.0.0.1:9000"
type = "ollama"
[[backends.models]]
id = "m"
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("openssl"), "openssl is needed to make test certificates"
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=nexus-test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem", cwd=d)  # fmt: skip
    return d


def _config(pki: Path, *, mutual: bool) -> str:
    ca = f'client_ca = "{pki / "ca.pem"}"\n' if mutual else ""
    return f'[server.tls]\ncert = "{pki / "server.pem"}"\nkey = "{pki / "server.key"}"\n{ca}{FLEET}'


def _decide(target: str, creds: grpc.ChannelCredentials) -> dpb.DecideResponse:
    with grpc.secure_channel(target, creds) as channel:
        resp: dpb.DecideResponse = dgrpc.DecisionServiceStub(channel).Decide(
            dpb.DecideRequest(model="m"), timeout=5
        )
        return resp


def test_tls_serves_clients_that_trust_the_ca(pki: Path) -> None:
    with TestServer(config_text=_config(pki, mutual=False)) as server:
        creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        assert _decide(server.target, creds).route.backend_id == "a"
        with grpc.insecure_channel(server.target) as plain:  # no plaintext on a TLS port
            with pytest.raises(grpc.RpcError) as info:
                dgrpc.DecisionServiceStub(plain).Decide(dpb.DecideRequest(model="m"), timeout=3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(pki: Path) -> None:
    with TestServer(config_text=_config(pki, mutual=True)) as server:
        ca = (pki / "ca.pem").read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        assert _decide(server.target, with_cert).route.backend_id == "a"
        with pytest.raises(grpc.RpcError) as info:
            _decide(server.target, grpc.ssl_channel_credentials(root_certificates=ca))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
