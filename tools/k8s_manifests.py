"""Print the manifest files a kustomization lists, one a line, for `kubernetes-validate`; fail when
a YAML file in the directory is not listed (it would be validated by nothing and applied by nobody).

    python tools/k8s_manifests.py deploy/kubernetes
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def manifests(directory: Path) -> list[Path]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = [directory / name for name in kustomization["resources"]]
    missing = [str(p) for p in listed if not p.is_file()]
    if missing:
        raise SystemExit(f"kustomization.yaml lists files that do not exist: {', '.join(missing)}")
    present = {p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
    unlisted = sorted(str(p) for p in present - set(listed))
    if unlisted:
        raise SystemExit(f"not in kustomization.yaml resources: {', '.join(unlisted)}")
    return listed


if __name__ == "__main__":
    for path in manifests(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes")):
        print(path)
