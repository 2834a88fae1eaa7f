"""Regenerate nexus_grpc/_gen from protos/ with the pinned grpcio-tools and mypy-protobuf.

Usage: python tools/gen_protos.py [--check]

--check regenerates into a temporary folder and fails when anything differs from the
committed files (CI's drift check).
"""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "nexus_grpc" / "_gen"
PKG = "nexus_grpc._gen"


def _generate(out: Path) -> None:
    import grpc_tools  # noqa: F401 - fail early with a clear message

    bindir = Path(sys.executable).parent
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    subprocess.run(cmd, check=True)
    # Generated modules import each other as `nexus.v1.x`; make them package-relative.
    for path in out.rglob("*.py*"):
        text = path.read_text()
        text = re.sub(r"^from nexus\.v1 import", f"from {PKG}.nexus.v1 import", text, flags=re.M)
        text = re.sub(r"^import nexus\.v1\.(\w+)", rf"import {PKG}.nexus.v1.\1", text, flags=re.M)
        text = text.replace("nexus.v1.types_pb2.", f"{PKG}.nexus.v1.types_pb2.")
        path.write_text(text)
    for d in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").write_text("")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "_gen"
        out.mkdir()
        _generate(out)
        if check:
            new, old = _tree(out), _tree(TARGET)
            diff = sorted(new ^ old) + sorted(
                f for f in new & old if not filecmp.cmp(out / f, TARGET / f, shallow=False)
            )
            if diff:
                print("generated code is out of date; run: python tools/gen_protos.py", file=sys.stderr)
                for f in diff:
                    print(f"  differs: nexus_grpc/_gen/{f}", file=sys.stderr)
                return 1
            print("generated code is up to date")
            return 0
        shutil.rmtree(TARGET, ignore_errors=True)
        shutil.copytree(out, TARGET)
    print(f"generated {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
