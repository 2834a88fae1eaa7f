"""deploy/kubernetes/ is one coherent deployment, not only valid documents: the embedded TOML passes
`check-config` and the embedded Envoy config `envoy --mode validate`; ports, names, selectors,
mount paths, the `--config` path, the drain budget, the security settings and the Envoy routes
agree with each other and with the Containerfile. (`./dev check` validates each document's schema
with `kubernetes-validate --strict`, and yamllint.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_manifests import (
    CONTAINERFILE,
    K8S,
    REPO,
    Manifests,
    clusters,
    connection_manager,
    container,
    endpoints,
    flag,
    http_filter,
    listeners,
    load,
)
from support import envoy as envoy_testing

from nexus_grpc import cli
from nexus_grpc.config.loader import check_config


@pytest.fixture(scope="module")
def m() -> Manifests:
    return load()


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def named_port(c: dict[str, Any], name: str) -> int:
    found = [p["containerPort"] for p in c.get("ports", []) if p["name"] == name]
    assert len(found) == 1, f"{c['name']}: port {name}"
    return int(found[0])


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def workloads(m: Manifests) -> list[dict[str, Any]]:
    return m.of_kind("Deployment") + m.of_kind("StatefulSet")


def test_the_configmap_toml_passes_check_config(
    m: Manifests, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = m.nexus_toml_text
    journal = m.nexus_toml["ledger"]["path"]
    # the journal's directory is the pod's emptyDir; here a writable stand-in
    path = tmp_path / "nexus.toml"
    path.write_text(text.replace(journal, str(tmp_path / "journal.db")))
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: OK (") and out.rstrip().endswith(", 0 warnings)"), out
    config, errors, warnings = check_config(path)
    assert errors == [] and warnings == [], (errors, warnings)
    assert config is not None and config.ledger.kind == "redis"


def test_the_embedded_envoy_config_validates(m: Manifests) -> None:
    done = envoy_testing.validate(m.envoy_yaml_text)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Deprecated" not in done.stderr


def test_nexus_config_is_mounted_where_serve_reads_it(m: Manifests) -> None:
    c = m.nexus_container
    config_path = Path(flag(c["args"], "--config"))
    mount = next(v for v in c["volumeMounts"] if v["mountPath"] == str(config_path.parent))
    assert mount.get("readOnly") is True
    volume = next(v for v in m.nexus["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    item = next(i for i in volume["configMap"]["items"] if i["path"] == config_path.name)
    cm = m.get("ConfigMap", volume["configMap"]["name"])
    assert item["key"] in cm["data"]


def test_one_grpc_port_for_listen_probes_services_and_envoy(m: Manifests) -> None:
    toml, c = m.nexus_toml, m.nexus_container
    listen = toml["server"]["listen"]
    assert not listen.startswith(("127.", "localhost", "[::1]")), "the pod must listen beyond loopback"
    port = port_of(listen)
    assert named_port(c, "grpc") == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == port, probe
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"  # not restarted while draining
    assert "service" not in c["readinessProbe"]["grpc"]  # the whole server's readiness
    for name in ("nexus-grpc", "nexus-grpc-headless"):
        service = m.get("Service", name)
        assert matches(service["spec"]["selector"], pod_labels(m.nexus))
        (sp,) = service["spec"]["ports"]
        assert sp["targetPort"] == "grpc" and sp["port"] == port
    assert m.get("Service", "nexus-grpc-headless")["spec"]["clusterIP"] == "None"
    nexus_cluster = clusters(m.envoy_config)["nexus_grpc"]
    assert endpoints(nexus_cluster) == [("nexus-grpc-headless", port)]
    options = nexus_cluster["typed_extension_protocol_options"]
    assert "http2_protocol_options" in next(iter(options.values()))["explicit_http_config"]
    assert "grpc_health_check" in nexus_cluster["health_checks"][0]
    metrics = port_of(toml["telemetry"]["prometheus_listen"])
    assert named_port(c, "metrics") == metrics
    assert m.nexus["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(metrics)


def test_ledger_points_at_redis_and_journals_on_an_emptydir(m: Manifests) -> None:
    ledger, c = m.nexus_toml["ledger"], m.nexus_container
    url = urlsplit(ledger["url"])
    redis_service = m.get("Service", url.hostname or "")
    redis = m.get("StatefulSet", "nexus-redis")
    assert redis["spec"]["serviceName"] == redis_service["metadata"]["name"]
    assert matches(redis_service["spec"]["selector"], pod_labels(redis))
    (sp,) = redis_service["spec"]["ports"]
    assert sp["port"] == url.port == int(flag(m.redis_args, "--port"))
    assert named_port(container(redis, "redis"), sp["targetPort"]) == url.port
    journal_dir = str(Path(ledger["path"]).parent)
    mount = next(v for v in c["volumeMounts"] if v["mountPath"] == journal_dir)
    volumes = {v["name"]: v for v in m.nexus["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]


def test_redis_persists_and_never_evicts(m: Manifests) -> None:
    args = m.redis_args
    assert flag(args, "--appendonly") == "yes"
    assert flag(args, "--maxmemory-policy") == "noeviction"
    redis = m.get("StatefulSet", "nexus-redis")
    mounts = {v["mountPath"]: v["name"] for v in container(redis, "redis")["volumeMounts"]}
    data = mounts[flag(args, "--dir")]
    assert data in {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    policy = m.get("NetworkPolicy", "nexus-redis")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis))
    (rule,) = policy["spec"]["ingress"]
    assert matches(rule["from"][0]["podSelector"]["matchLabels"], pod_labels(m.nexus))


def test_admin_token_comes_from_a_secret(m: Manifests) -> None:
    env = {e["name"]: e for e in m.nexus_container["env"]}
    var = m.nexus_toml["server"]["admin_token_env"]
    assert "secretKeyRef" in env[var]["valueFrom"]


def test_termination_grace_covers_drain_and_grace(m: Manifests) -> None:
    server = m.nexus_toml["server"]
    budget = server["drain_seconds"] + server["grace_seconds"]
    tgps = m.nexus["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert budget < tgps <= budget + 10


def test_scaling_and_disruptions(m: Manifests) -> None:
    hpa = m.get("HorizontalPodAutoscaler", "nexus-grpc")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", m.nexus["metadata"]["name"])
    assert "replicas" not in m.nexus["spec"], "the HPA owns the replica count"
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Resource"
        assert metric["resource"]["name"] in m.nexus_container["resources"]["requests"]
    pdb = m.get("PodDisruptionBudget", "nexus-grpc")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels(m.nexus))
    spec = pdb["spec"]
    if "maxUnavailable" in spec:
        assert int(spec["maxUnavailable"]) >= 1
    else:
        assert int(spec["minAvailable"]) < hpa["spec"]["minReplicas"]  # evictions stay possible
    assert hpa["spec"]["minReplicas"] >= 2
    for spread in m.nexus["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert matches(spread["labelSelector"]["matchLabels"], pod_labels(m.nexus))


def test_every_selector_selects_its_workload(m: Manifests) -> None:
    for w in workloads(m):
        assert matches(w["spec"]["selector"]["matchLabels"], pod_labels(w)), w["metadata"]["name"]
    for service in m.of_kind("Service"):
        selected = [w for w in workloads(m) if matches(service["spec"]["selector"], pod_labels(w))]
        assert len(selected) == 1, service["metadata"]["name"]
        for sp in service["spec"]["ports"]:
            target = sp["targetPort"]
            c = selected[0]["spec"]["template"]["spec"]["containers"][0]
            assert isinstance(target, str) and named_port(c, target)


def test_every_container_is_locked_down(m: Manifests) -> None:
    user = re.search(r"^USER (\d+):(\d+)$", CONTAINERFILE.read_text(), re.M)
    assert user is not None
    assert m.nexus_container["securityContext"]["runAsUser"] == int(user[1])
    for w in workloads(m):
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0
            assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "limits" in c["resources"] and "requests" in c["resources"]
            assert ":" in c["image"] and not c["image"].endswith(":latest")


def test_envoy_routes_every_backend_and_mounts_its_config(m: Manifests) -> None:
    envoy_deploy = m.get("Deployment", "nexus-envoy")
    c = container(envoy_deploy, "envoy")
    config_path = Path(flag(c["args"], "-c"))
    mount = next(v for v in c["volumeMounts"] if v["mountPath"] == str(config_path.parent))
    volume = next(
        v for v in envoy_deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    assert volume["configMap"]["name"] == "nexus-envoy-config"
    assert volume["configMap"]["items"] == [{"key": "envoy.yaml", "path": config_path.name}]

    config = m.envoy_config
    by_name = listeners(config)
    ingress = by_name["llm_ingress"]
    assert ingress["address"]["socket_address"]["port_value"] == named_port(c, "http")
    assert by_name["health"]["address"]["socket_address"]["port_value"] == named_port(c, "health")
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"  # never exposed

    hcm = connection_manager(ingress)
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    by_backend = {
        h["string_match"]["exact"]: r["route"]["cluster"]
        for r in routes
        for h in r["match"].get("headers", [])
        if h["name"] == "x-nexus-backend"
    }
    all_clusters = clusters(config)
    for backend in m.nexus_toml["backends"]:
        url = urlsplit(backend["url"])
        assert by_backend[backend["id"]] == backend["id"]
        port = url.port or (443 if url.scheme == "https" else 80)
        assert endpoints(all_clusters[backend["id"]]) == [(url.hostname, port)], backend["id"]
        if url.scheme == "https":
            assert "transport_socket" in all_clusters[backend["id"]]
    ext_proc = http_filter(hcm, "envoy.filters.http.ext_proc")
    assert ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"] == "nexus_grpc"
    queue_ms = m.nexus_toml["queue"]["max_wait_ms"]
    assert float(ext_proc["max_message_timeout"].rstrip("s")) * 1000 >= queue_ms + 2000
    service = m.get("Service", "nexus-envoy")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_envoy_keeps_the_shipped_ext_proc_settings(m: Manifests) -> None:
    """The cluster's Envoy is deploy/envoy/ext_proc.yaml filled in: the filter, the header strip list
    and the connection manager's limits are the shipped ones."""
    shipped_text = envoy_testing.render(
        REPO / "deploy" / "envoy" / "ext_proc.yaml",
        {k: 1 for k in ("ENVOY_PORT", "ADMIN_PORT", "NEXUS_HOST", "NEXUS_PORT", "CLOUD_HOST", "CLOUD_PORT")},
    )
    shipped = connection_manager(listeners(yaml.safe_load(shipped_text))["llm_ingress"])
    ours = connection_manager(listeners(m.envoy_config)["llm_ingress"])
    for key in set(shipped) - {"route_config", "http_filters"}:
        assert ours[key] == shipped[key], key
    theirs = http_filter(shipped, "envoy.filters.http.ext_proc")
    mine = http_filter(ours, "envoy.filters.http.ext_proc")
    assert {k: v for k, v in mine.items() if k != "grpc_service"} == {
        k: v for k, v in theirs.items() if k != "grpc_service"
    }
    assert mine["grpc_service"]["envoy_grpc"] == theirs["grpc_service"]["envoy_grpc"]


def test_the_toml_keys_the_rehearsal_substitutes_exist(m: Manifests) -> None:
    toml = tomllib.loads(m.nexus_toml_text)
    assert {"listen", "drain_seconds", "grace_seconds"} <= set(toml["server"])
    assert {"url", "path"} <= set(toml["ledger"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (optional)")
def test_kubectl_kustomize_builds_the_same_objects(m: Manifests) -> None:
    """What `kubectl apply -k` would send: every object once, labelled as part of nexus-grpc."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, built)) == sorted(map(key, m.docs))
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nexus-grpc" for d in built)
