"""The Kubernetes manifests of deploy/kubernetes/ as data, for the tests that check them against each
other and the rehearsal that runs their processes on this machine: every document of every file the
kustomization lists, looked up by kind and name, with the embedded nexus TOML and Envoy YAML."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "kubernetes"
CONTAINERFILE = REPO / "deploy" / "container" / "Containerfile"


@dataclass(frozen=True)
class Manifests:
    docs: list[dict[str, Any]]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
        return found[0]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    @property
    def nexus(self) -> dict[str, Any]:
        return self.get("Deployment", "nexus-grpc")

    @property
    def nexus_container(self) -> dict[str, Any]:
        return container(self.nexus, "nexus-grpc")

    @property
    def nexus_toml_text(self) -> str:
        return str(self.get("ConfigMap", "nexus-grpc-config")["data"]["nexus.toml"])

    @property
    def nexus_toml(self) -> dict[str, Any]:
        return tomllib.loads(self.nexus_toml_text)

    @property
    def envoy_yaml_text(self) -> str:
        return str(self.get("ConfigMap", "nexus-envoy-config")["data"]["envoy.yaml"])

    @property
    def envoy_config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.envoy_yaml_text)
        return loaded

    @property
    def redis_args(self) -> list[str]:
        args = container(self.get("StatefulSet", "nexus-redis"), "redis")["args"]
        return [str(a) for a in args]


def load() -> Manifests:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return Manifests(docs)


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: container {name}: {len(found)}"
    return found[0]


def flag(args: list[str], name: str) -> str:
    """The value after `name` in an argument list (`--config X`, `--dir X`)."""
    assert args.count(name) == 1, f"{name} in {args}"
    return args[args.index(name) + 1]


def clusters(envoy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in envoy["static_resources"]["clusters"]}


def listeners(envoy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in envoy["static_resources"]["listeners"]}


def endpoints(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    out = []
    for group in cluster["load_assignment"]["endpoints"]:
        for lb in group["lb_endpoints"]:
            sock = lb["endpoint"]["address"]["socket_address"]
            out.append((str(sock["address"]), int(sock["port_value"])))
    return out


def connection_manager(listener: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def http_filter(hcm: dict[str, Any], name: str) -> dict[str, Any]:
    found = [f for f in hcm["http_filters"] if f["name"] == name]
    assert len(found) == 1, name
    typed: dict[str, Any] = found[0]["typed_config"]
    return typed
