"""Print the manifest files the kustomizations under each directory name, one a line, for
`kubernetes-validate`; fail when a YAML file is named by no kustomization (it would be validated by
nothing and applied by nobody).

    python tools/k8s_manifests.py deploy/kubernetes deploy/kubernetes-overlays

Every directory holding a `kustomization.yaml` (at any depth) is read: its `resources` files and
its `patches` files (a patch file is written as an object of its kind, so that it validates on its
own: a Deployment patch repeats the selector). A resource that is a directory is another
kustomization, which must be one of those read. Inline patches are part of `kustomization.yaml`
(yamllint reads it; `kubectl kustomize` builds them in the tests).

Custom resources have no schema in kubernetes-validate, which only warns about them and passes:
the files of the kinds in CUSTOM_KINDS are left out of the list, each checked by the test named
there against its CRD's schema; a file that mixes them with other kinds is an error. Any other kind
kubernetes-validate does not know makes it warn, which `./dev check` treats as a failure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = ("deploy/kubernetes", "deploy/kubernetes-overlays")

# (apiVersion, kind) -> the test that validates it against the CRD's published schema
CUSTOM_KINDS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): (
        "tests/integration/deploy/test_kubernetes_inference_pool.py"
    ),
}


def _kinds(path: Path) -> set[tuple[str, str]]:
    docs: list[Any] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return {(str(d.get("apiVersion")), str(d.get("kind"))) for d in docs if isinstance(d, dict)}


def kustomization_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """(the files `directory/kustomization.yaml` names, the kustomization directories it builds on)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    files: list[Path] = []
    bases: list[Path] = []
    for name in kustomization.get("resources", []):
        path = (directory / name).resolve()
        if path.is_dir():
            if not (path / "kustomization.yaml").is_file():
                raise SystemExit(
                    f"{directory}/kustomization.yaml: {name} is a directory without kustomization.yaml"
                )
            bases.append(path)
        else:
            files.append(path)
    for patch in kustomization.get("patches", []):
        if "path" in patch:
            files.append((directory / patch["path"]).resolve())
    for key in ("patchesStrategicMerge", "patchesJson6902", "bases"):
        if key in kustomization:
            raise SystemExit(f"{directory}/kustomization.yaml: {key} is deprecated; use resources or patches")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise SystemExit(
            f"{directory}/kustomization.yaml names files that do not exist: {', '.join(missing)}"
        )
    return files, bases


def manifests(*roots: Path) -> list[Path]:
    """Every file the kustomizations under `roots` name, except the custom resources' files."""
    kustomizations = sorted({p.parent.resolve() for root in roots for p in root.rglob("kustomization.yaml")})
    if not kustomizations:
        raise SystemExit(f"no kustomization.yaml under {', '.join(map(str, roots))}")
    listed: list[Path] = []
    for directory in kustomizations:
        files, bases = kustomization_files(directory)
        outside = [str(b) for b in bases if b not in kustomizations]
        if outside:
            raise SystemExit(
                f"{directory}/kustomization.yaml builds on {', '.join(outside)}, not checked here"
            )
        listed += [f for f in files if f not in listed]
    present = {
        p.resolve()
        for root in roots
        for pattern in ("*.yaml", "*.yml")
        for p in root.rglob(pattern)
        if p.name != "kustomization.yaml"
    }
    unlisted = sorted(str(p) for p in present - set(listed))
    if unlisted:
        raise SystemExit(f"not named by any kustomization.yaml: {', '.join(unlisted)}")
    out: list[Path] = []
    for path in listed:
        kinds = _kinds(path)
        custom = {k for k in kinds if k in CUSTOM_KINDS}
        if custom and custom != kinds:
            raise SystemExit(
                f"{path}: custom resources ({', '.join(k for _, k in custom)}) and other kinds in one file"
            )
        for kind in custom:
            if not (ROOT / CUSTOM_KINDS[kind]).is_file():
                raise SystemExit(
                    f"{path}: {kind[1]} is to be checked by {CUSTOM_KINDS[kind]}, which is missing"
                )
        if not custom:
            out.append(path)
    return out


if __name__ == "__main__":
    dirs = sys.argv[1:] or [str(ROOT / d) for d in DEFAULT_DIRS]
    cwd = Path.cwd().resolve()
    for path in manifests(*(Path(d) for d in dirs)):
        print(path.relative_to(cwd) if path.is_relative_to(cwd) else path)
