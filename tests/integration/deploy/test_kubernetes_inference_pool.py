"""deploy/kubernetes-overlays/inference-pool/ turns the base into nexus-grpc serving as the endpoint
picker of an InferencePool, and holds together: the overlay's TOML passes `check-config` (the
Secret's mount replaced by the throwaway certificates of docs/examples/tls), the Secret is mounted
where `[server.tls]` reads it, every backend is a pool endpoint by IP:port, the InferencePool names
the nexus-grpc Service's port and fits the upstream v1 CRD's schema (inference_pool_crd_v1.yaml),
the base's Envoy is deleted, and the exec probes, run as written, answer over TLS against a real TLS
server. Where kubectl is installed, the built overlay is checked as a whole and every object but
the InferencePool is validated with kubernetes-validate --strict."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import jsonschema
import pytest
import yaml
from deploy_manifests import K8S, REPO, Manifests, container, load
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.net import wait_until

from nexus_grpc import cli
from nexus_grpc.config.loader import check_config
from nexus_grpc.testing.server import TestServer

OVERLAY = REPO / "deploy" / "kubernetes-overlays" / "inference-pool"
CRD = Path(__file__).with_name("inference_pool_crd_v1.yaml")
EXAMPLE_TLS = REPO / "docs" / "examples" / "tls"
# the Secret's keys, as the mount lays them out, and the example files that stand in for them
EXAMPLE_SECRET = {"tls.crt": "server.pem", "tls.key": "server.key", "ca.crt": "ca.pem"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
FLEET = """
[[backends]]
id = "a"
url = "http://127.0.0.1:9000"
type = "ollama"
[[backends.models]]
id = "m"
"""


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@dataclass(frozen=True)
class Overlay:
    kustomization: dict[str, Any]
    base: Manifests

    def patch(self, kind: str, name: str) -> dict[str, Any]:
        """The document of the patch file that patches kind/name."""
        found = [
            d
            for p in self.kustomization["patches"]
            if "path" in p
            for d in documents(OVERLAY / p["path"])
            if d["kind"] == kind and d["metadata"]["name"] == name
        ]
        assert len(found) == 1, f"patch of {kind}/{name}: {len(found)}"
        return found[0]

    @property
    def deleted(self) -> set[tuple[str, str]]:
        out = set()
        for p in self.kustomization["patches"]:
            inline = yaml.safe_load(p.get("patch", "")) if "patch" in p else None
            if isinstance(inline, dict) and inline.get("$patch") == "delete":
                out.add((inline["kind"], inline["metadata"]["name"]))
        return out

    @property
    def toml_text(self) -> str:
        return str(self.patch("ConfigMap", "nexus-grpc-config")["data"]["nexus.toml"])

    @property
    def toml(self) -> dict[str, Any]:
        return tomllib.loads(self.toml_text)

    @property
    def deployment(self) -> dict[str, Any]:
        return self.patch("Deployment", "nexus-grpc")

    @property
    def container(self) -> dict[str, Any]:
        return container(self.deployment, "nexus-grpc")

    @property
    def pool(self) -> dict[str, Any]:
        (doc,) = documents(OVERLAY / "inference-pool.yaml")
        return doc

    @property
    def tls_mount(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the volumeMount, the volume) of the Secret."""
        (volume,) = [v for v in self.deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        (mount,) = [m for m in self.container["volumeMounts"] if m["name"] == volume["name"]]
        return mount, volume


@pytest.fixture(scope="module")
def o() -> Overlay:
    return Overlay(yaml.safe_load((OVERLAY / "kustomization.yaml").read_text()), load())


def secret_dir(where: Path, files: dict[str, Path]) -> Path:
    """A stand-in for the Secret's mount: its keys as file names."""
    where.mkdir(parents=True, exist_ok=True)
    for key, source in files.items():
        shutil.copy(source, where / key)
    return where


def example_secret(where: Path) -> Path:
    return secret_dir(where, {key: EXAMPLE_TLS / name for key, name in EXAMPLE_SECRET.items()})


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def probe_command(o: Overlay, probe: str) -> list[str]:
    command = o.container[probe]["exec"]["command"]
    return [str(c) for c in command]


def probe_command_name(o: Overlay) -> str:
    """The probes' --tls-name."""
    command = probe_command(o, "readinessProbe")
    return command[command.index("--tls-name") + 1]


def load_resources() -> list[str]:
    return [str(n) for n in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]]


# ---- the kustomization ---------------------------------------------------------------------


def test_the_overlay_builds_on_the_base_and_every_file_is_validated(o: Overlay) -> None:
    assert (OVERLAY / o.kustomization["resources"][0]).resolve() == K8S
    done = subprocess.run(
        [sys.executable, "tools/k8s_manifests.py", "deploy/kubernetes", "deploy/kubernetes-overlays"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = set(done.stdout.split())
    patch_files = {
        f"deploy/kubernetes-overlays/inference-pool/{p['path']}"
        for p in o.kustomization["patches"]
        if "path" in p
    }
    assert patch_files == {
        "deploy/kubernetes-overlays/inference-pool/nexus-configmap.yaml",
        "deploy/kubernetes-overlays/inference-pool/nexus-deployment.yaml",
    }
    assert patch_files <= listed  # kubernetes-validate --strict reads them as objects of their kind
    # the custom resource is checked here against its CRD, not there (kubernetes-validate only warns)
    assert "deploy/kubernetes-overlays/inference-pool/inference-pool.yaml" not in listed
    assert {f"deploy/kubernetes/{name}" for name in load_resources()} <= listed


def test_the_base_envoy_is_deleted_and_the_rest_kept(o: Overlay) -> None:
    envoy = {
        (d["kind"], d["metadata"]["name"])
        for name in ("envoy.yaml", "envoy-configmap.yaml")
        for d in documents(K8S / name)
    }
    assert envoy == {
        ("Deployment", "nexus-envoy"),
        ("ConfigMap", "nexus-envoy-config"),
        ("Service", "nexus-envoy"),
    }
    assert o.deleted == envoy
    for kind, name in [
        ("Deployment", "nexus-grpc"),
        ("StatefulSet", "nexus-redis"),
        ("PodDisruptionBudget", "nexus-grpc"),
        ("HorizontalPodAutoscaler", "nexus-grpc"),
        ("Service", "nexus-grpc"),
    ]:
        o.base.get(kind, name)  # in the base, and not deleted
        assert (kind, name) not in o.deleted


# ---- the picker's TOML -----------------------------------------------------------------------


def test_the_configmap_toml_passes_check_config(
    o: Overlay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mount, _ = o.tls_mount
    toml = o.toml
    text = o.toml_text.replace(f"{mount['mountPath']}/", f"{example_secret(tmp_path / 'tls')}/")
    # the journal's directory is the pod's emptyDir; here a writable stand-in
    text = text.replace(toml["ledger"]["path"], str(tmp_path / "journal.db"))
    path = tmp_path / "nexus.toml"
    path.write_text(text)
    assert cli.main(["check-config", "--endpoint-picker", str(path)]) == 0  # every backend by IP:port
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: OK (") and out.rstrip().endswith(", 0 warnings)"), out
    config, errors, warnings = check_config(path)
    assert errors == [] and warnings == [], (errors, warnings)
    assert config is not None and config.server.tls is not None and config.server.tls.client_ca is None
    assert config.envoy.read_body is True  # the one setting a picker needs
    assert config.ledger.kind == "redis" and config.server.watch_config is True
    listen = toml["server"]["listen"]
    assert not listen.startswith(("127.", "localhost", "[::1]")), "the gateway connects from other pods"


def test_the_toml_keeps_the_base_where_the_base_is_checked(o: Overlay) -> None:
    """The base's tests check ports, the ledger, the drain budget and the admin Secret against the
    base TOML; the picker's TOML keeps those values, so those checks hold for it too."""
    base, ours = o.base.nexus_toml, o.toml
    for key in ("listen", "admin_token_env", "drain_seconds", "grace_seconds"):
        assert ours["server"][key] == base["server"][key], key
    assert ours["ledger"] == base["ledger"]
    assert ours["telemetry"] == base["telemetry"]


def test_the_secret_is_mounted_read_only_where_the_toml_reads_it(o: Overlay) -> None:
    mount, volume = o.tls_mount
    assert mount["readOnly"] is True
    secret = volume["secret"]
    assert secret["secretName"] == "nexus-grpc-tls"
    items = {i["key"]: i["path"] for i in secret["items"]}
    assert items == {"tls.crt": "tls.crt", "tls.key": "tls.key", "ca.crt": "ca.crt"}  # kubernetes.io/tls keys
    tls = o.toml["server"]["tls"]
    assert tls["cert"] == f"{mount['mountPath']}/{items['tls.crt']}"
    assert tls["key"] == f"{mount['mountPath']}/{items['tls.key']}"
    assert "client_ca" not in tls  # gateways present no client certificate; the probes neither
    # 0440: the pod's group reads (the kubelet gives the files fsGroup), nobody writes
    assert secret["defaultMode"] == 0o440
    pod = o.base.nexus["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == o.base.nexus_container["securityContext"]["runAsGroup"]
    # not inside another mount (the ConfigMap's /etc/nexus is managed by the kubelet)
    for other in o.base.nexus_container["volumeMounts"]:
        a, b = Path(other["mountPath"]), Path(mount["mountPath"])
        assert not (a.is_relative_to(b) or b.is_relative_to(a)), other


def test_every_backend_is_a_pool_endpoint_by_ip(o: Overlay) -> None:
    ports = {p["number"] for p in o.pool["spec"]["targetPorts"]}
    backends = o.toml["backends"]
    assert len(backends) >= 2
    for backend in backends:
        url = urlsplit(backend["url"])
        assert url.hostname is not None
        ipaddress.ip_address(url.hostname)  # a hostname backend is never named to the gateway
        assert url.scheme == "http" and url.port in ports, backend["id"]
        assert backend["type"] != "openai"


# ---- the InferencePool -----------------------------------------------------------------------


def test_the_pool_targets_the_nexus_service_port(o: Overlay) -> None:
    ref = o.pool["spec"]["endpointPickerRef"]
    assert ref.get("group", "") == "" and ref.get("kind", "Service") == "Service"
    service = o.base.get("Service", ref["name"])
    (port,) = service["spec"]["ports"]
    assert ref["port"]["number"] == port["port"]  # the Service's port, not the target port
    assert port["targetPort"] == "grpc"
    grpc_port = [p for p in o.base.nexus_container["ports"] if p["name"] == "grpc"]
    assert grpc_port[0]["containerPort"] == port_of(o.toml["server"]["listen"])
    assert ref["failureMode"] == "FailClose"  # no decision, no request
    assert o.pool["spec"]["selector"]["matchLabels"]
    # the picker's pods are no pool members
    pool_labels = o.pool["spec"]["selector"]["matchLabels"]
    nexus_labels = o.base.nexus["spec"]["template"]["metadata"]["labels"]
    assert not all(nexus_labels.get(k) == v for k, v in pool_labels.items())


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    return dict(crd)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's schema as the API server applies it with strict field validation (kubectl's
    default): a field the schema does not know is an error, not pruned."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """What the API server would refuse in an InferencePool: the v1 schema, strictly, and its CEL
    rules (the two the fixture holds, written out here)."""
    crd = crd_schema()
    errors = [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in jsonschema.Draft7Validator(strict(crd["openAPIV3Schema"])).iter_errors(doc)
    ]
    if doc.get("apiVersion") != f"{crd['group']}/{crd['version']}" or doc.get("kind") != crd["kind"]:
        errors.append(f"not a {crd['group']}/{crd['version']} {crd['kind']}")
    name = doc.get("metadata", {}).get("name", "")
    if (
        not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name)
        or len(name) > 253
    ):
        errors.append(f"metadata.name {name!r}: not a DNS subdomain")
    spec = doc.get("spec", {})
    ref = spec.get("endpointPickerRef", {})
    if ref.get("kind", "Service") == "Service" and "port" not in ref:
        errors.append("endpointPickerRef: port is required when kind is 'Service'")
    numbers = [p.get("number") for p in spec.get("targetPorts", [])]
    if len(numbers) != len(set(numbers)):
        errors.append("targetPorts: port number must be unique")
    return errors


def test_the_fixture_holds_the_cel_rules_written_out_here() -> None:
    rules = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(r["rule"] for r in node.get("x-kubernetes-validations", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(crd_schema())
    assert sorted(rules) == [
        "self.all(p1, self.exists_one(p2, p1.number==p2.number))",
        "self.kind != 'Service' || has(self.port)",
    ]


def test_the_pool_fits_the_v1_crd(o: Overlay) -> None:
    assert crd_errors(o.pool) == []
    assert o.pool["metadata"].get("namespace") is None  # `kubectl apply -n` places it beside nexus-grpc


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p["spec"]["endpointPickerRef"].update(failureMode="FailClosed"), "failureMode"),
        (lambda p: p["spec"]["endpointPickerRef"].pop("port"), "port is required"),
        (lambda p: p["spec"].update(targetPorts=[{"number": 8000}, {"number": 8000}]), "unique"),
        (lambda p: p["spec"].update(endpointPicker={"name": "x"}), "endpointPicker"),
        (lambda p: p["spec"]["targetPorts"][0].update(number=0), "targetPorts.0.number"),
        (lambda p: p["spec"].pop("selector"), "'selector' is a required property"),
        (lambda p: p.update(apiVersion="inference.networking.x-k8s.io/v1alpha2"), "not a"),
    ],
)
def test_the_crd_check_refuses_what_the_api_server_would(o: Overlay, change: Any, expected: str) -> None:
    pool = copy.deepcopy(o.pool)
    change(pool)
    errors = crd_errors(pool)
    assert any(expected in e for e in errors), errors


# ---- the probes ------------------------------------------------------------------------------


def test_the_probes_are_tls_health_checks_of_the_grpc_port(o: Overlay) -> None:
    mount, volume = o.tls_mount
    listen_port = port_of(o.toml["server"]["listen"])
    for probe in PROBES:
        spec = o.container[probe]
        assert "grpc" in spec and spec["grpc"] is None, f"{probe}: the base's plaintext gRPC probe is removed"
        command = probe_command(o, probe)
        assert command[:2] == ["nexus-grpc", "health"], probe
        args = cli.build_parser().parse_args(command[1:])
        assert args.target == f"127.0.0.1:{listen_port}", probe
        assert Path(args.ca).parent == Path(mount["mountPath"]), probe
        assert Path(args.ca).name in {i["path"] for i in volume["secret"]["items"]}
        # the name of the Service the gateway connects to: the certificate must hold it
        assert args.tls_name == probe_command_name(o) == o.pool["spec"]["endpointPickerRef"]["name"]
        assert spec["timeoutSeconds"] > args.timeout  # the RPC's deadline, plus starting Python
        assert not args.quiet  # a failed probe's event says why
        assert args.service == ("liveness" if probe == "livenessProbe" else ""), probe


def test_the_probes_keep_the_base_timings(o: Overlay) -> None:
    for probe in PROBES:
        ours, base = o.container[probe], o.base.nexus_container[probe]
        for key in ("periodSeconds", "failureThreshold"):
            assert ours[key] == base[key], (probe, key)


@dataclass(frozen=True)
class Certificates:
    name: str
    secret: Path  # the stand-in for the Secret's mount
    tls_name: str  # the name the certificate is for, in place of the probe's --tls-name


@pytest.fixture(
    scope="module",
    params=["examples", "dev-cert"],
    ids=["docs-examples-ca-issued", "dev-cert-self-signed-as-in-docs"],
)
def certificates(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, o: Overlay
) -> Certificates:
    where = tmp_path_factory.mktemp(str(request.param))
    if request.param == "examples":
        # a certificate for localhost, 127.0.0.1, ::1 issued by the example CA: ca.crt is the CA
        return Certificates("examples", example_secret(where / "tls"), "localhost")
    # the trial of docs/deploy.md: `nexus-grpc dev-cert DIR --name nexus-grpc ...`, its
    # certificate also as ca.crt
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: nexus-grpc dev-cert needs it")
    name = probe_command_name(o)
    assert cli.main(["dev-cert", str(where), "--name", name, "--days", "1"]) == 0
    crt, key = where / "nexus-grpc.crt", where / "nexus-grpc.key"
    return Certificates(
        "dev-cert", secret_dir(where / "tls", {"tls.crt": crt, "tls.key": key, "ca.crt": crt}), name
    )


def run_probe(
    command: list[str], substitutions: dict[str, str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The probe's command as the kubelet runs it in the container (`nexus-grpc` is the CLI), with
    only the substitutions given: an argument equal to a key, or a path under a key ending in /."""

    def substitute(arg: str) -> str:
        for old, new in substitutions.items():
            if arg == old:
                return new
            if old.endswith("/") and arg.startswith(old):
                return new + arg[len(old) :]
        return arg

    argv = [substitute(arg) for arg in command[1:]]
    return subprocess.run(
        [sys.executable, "-m", "nexus_grpc.cli", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def cli_env() -> dict[str, str]:
    """The subprocess's environment: this checkout importable, no NEXUS_ variables (NEXUS_TARGET)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def tls_toml(o: Overlay, secret: Path) -> str:
    mount, _ = o.tls_mount
    tls = o.toml["server"]["tls"]
    cert = tls["cert"].replace(f"{mount['mountPath']}/", f"{secret}/")
    key = tls["key"].replace(f"{mount['mountPath']}/", f"{secret}/")
    return f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\n{FLEET}'


@pytest.fixture(scope="module")
def tls_server(o: Overlay, certificates: Certificates) -> Iterator[TestServer]:
    """nexus-grpc with the overlay's [server.tls] on the stand-in Secret, on a free port."""
    with TestServer(config_text=tls_toml(o, certificates.secret)) as server:
        yield server


def substitutions(o: Overlay, server: TestServer, certificates: Certificates) -> dict[str, str]:
    mount, _ = o.tls_mount
    listen_port = port_of(o.toml["server"]["listen"])
    out = {f"127.0.0.1:{listen_port}": server.target, f"{mount['mountPath']}/": f"{certificates.secret}/"}
    name = probe_command_name(o)
    if certificates.tls_name != name:
        out[name] = certificates.tls_name
    return out


def test_the_kubelets_own_grpc_probe_cannot_reach_a_tls_port(tls_server: TestServer) -> None:
    """What `grpc: {port: 50051}` does: plaintext HTTP/2, which the TLS port refuses."""
    with grpc.insecure_channel(tls_server.target) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("probe", PROBES)
def test_the_probe_as_written_passes_over_tls(
    o: Overlay, tls_server: TestServer, certificates: Certificates, cli_env: dict[str, str], probe: str
) -> None:
    done = run_probe(probe_command(o, probe), substitutions(o, tls_server, certificates), cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"nexus-grpc: {tls_server.target} is SERVING\n"


def test_the_probe_checks_the_certificates_name(
    o: Overlay, tls_server: TestServer, certificates: Certificates, cli_env: dict[str, str]
) -> None:
    subs = substitutions(o, tls_server, certificates)
    subs[probe_command_name(o)] = "not-nexus-grpc"
    done = run_probe(probe_command(o, "readinessProbe"), subs, cli_env)
    assert done.returncode == 1
    assert "is not serving: UNAVAILABLE (" in done.stderr, done.stderr


def test_while_draining_readiness_fails_and_liveness_passes(
    o: Overlay, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The probes keep the base's meaning: a draining pod leaves the endpoints, and is not restarted."""
    certificates = Certificates("examples", example_secret(tmp_path / "tls"), "localhost")
    server = TestServer(config_text=tls_toml(o, certificates.secret)).start()
    try:
        subs = substitutions(o, server, certificates)
        server.begin_stop(drain_seconds=2.0, grace_seconds=0.5)
        wait_until_not_serving(server.target, certificates)
        status = {probe: run_probe(probe_command(o, probe), subs, cli_env) for probe in PROBES}
        assert status["readinessProbe"].returncode == 1, status["readinessProbe"].stdout
        assert "is not serving: NOT_SERVING" in status["readinessProbe"].stderr
        assert status["startupProbe"].returncode == 1
        assert status["livenessProbe"].returncode == 0, status["livenessProbe"].stderr
    finally:
        server.stop()


def wait_until_not_serving(target: str, certificates: Certificates) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(certificates.secret / "ca.crt").read_bytes())
    options = [("grpc.ssl_target_name_override", certificates.tls_name)]
    with grpc.secure_channel(target, creds, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        wait_until(
            lambda: (
                stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            "the server starts draining",
            timeout=5,
        )


# ---- the built overlay -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (optional): the overlay is not built")
    done = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_kubectl_kustomize_builds_the_base_without_envoy_plus_the_pool(
    o: Overlay, built: list[dict[str, Any]]
) -> None:
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    expected = {key(d) for d in o.base.docs} - o.deleted | {("InferencePool", o.pool["metadata"]["name"])}
    assert sorted(map(key, built)) == sorted(expected)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nexus-grpc" for d in built)
    assert "nexus-envoy" not in yaml.safe_dump_all(built)  # nothing refers to the deleted Envoy


def test_the_built_objects_carry_the_patches(o: Overlay, built: list[dict[str, Any]]) -> None:
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in built}
    config = by_key[("ConfigMap", "nexus-grpc-config")]
    assert config["data"]["nexus.toml"] == o.toml_text
    nexus = container(by_key[("Deployment", "nexus-grpc")], "nexus-grpc")
    for probe in PROBES:
        assert set(nexus[probe]) - {
            "periodSeconds",
            "timeoutSeconds",
            "failureThreshold",
            "successThreshold",
        } == {"exec"}
        assert nexus[probe]["exec"]["command"] == probe_command(o, probe)
    mount, volume = o.tls_mount
    assert mount in nexus["volumeMounts"]
    assert volume in by_key[("Deployment", "nexus-grpc")]["spec"]["template"]["spec"]["volumes"]
    base = o.base.nexus_container
    assert nexus["image"] == base["image"] and nexus["args"] == base["args"]
    assert nexus["securityContext"] == base["securityContext"]
    for name in ("nexus-grpc", "nexus-grpc-headless"):
        (port,) = by_key[("Service", name)]["spec"]["ports"]
        assert port["appProtocol"] == "http2", name  # gRPC over TLS, not cleartext h2c
    assert crd_errors(by_key[("InferencePool", o.pool["metadata"]["name"])]) == []


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_every_built_object_but_the_pool_validates_strictly(
    built: list[dict[str, Any]], version: str
) -> None:
    import kubernetes_validate

    for doc in built:
        if doc["kind"] == "InferencePool":
            continue
        kubernetes_validate.validate(doc, version, strict=True)
