"""`nexus_grpc.testing` is public API for people testing their own code against nexus-grpc: it
exports what its docstring names and works from an installed package (nothing from the source
tree: the repository's own test helpers live in tests/support/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nexus_grpc
from nexus_grpc import testing

PACKAGE = Path(nexus_grpc.__file__).resolve().parent
REPO = PACKAGE.parent


def test_every_exported_name_exists_and_the_main_ones_are_exported() -> None:
    assert sorted(testing.__all__) == sorted(set(testing.__all__))
    for name in testing.__all__:
        assert getattr(testing, name) is not None, name
    assert {"FakeClock", "FakeWall", "TestServer", "backend", "config", "engine", "request"} <= set(
        testing.__all__
    )


def test_importing_it_loads_nothing_from_the_source_tree_outside_the_package(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import nexus_grpc.testing\n"
        "print(json.dumps([getattr(m, '__file__', None) or '' for m in list(sys.modules.values())]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    files = [Path(f).resolve() for f in json.loads(out.stdout) if f]
    outside = [f for f in files if f.is_relative_to(REPO) and not f.is_relative_to(PACKAGE)]
    outside = [f for f in outside if ".venv" not in f.parts]
    assert not outside, outside


def test_no_module_of_it_finds_files_relative_to_its_own_source() -> None:
    """A path computed from `__file__` (like `parents[2] / "deploy"`) breaks once installed."""
    for source in sorted((PACKAGE / "testing").glob("*.py")):
        assert "__file__" not in source.read_text(), source.name


def test_the_readme_example_runs() -> None:
    text = (REPO / "README.md").read_text()
    section = text[text.index("**Testing your integration.**") :]
    code = section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    test = namespace["test_gpt4_is_routed"]
    assert callable(test)
    test()
