"""Backends an endpoint-picking gateway can never be sent to: a URL whose host is a name. Whether a
gateway picks endpoints is known per request, so by default the loader keeps them (the same server
may serve an Envoy that routes them by name); `[envoy] endpoint_picker = true` says the server is a
picker's and refuses them at load, and `check-config --endpoint-picker` checks any file as a
picker's; both name the backend and its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_grpc.cli import main
from nexus_grpc.config.errors import ConfigError
from nexus_grpc.config.loader import endpoint_picker_issues, load_config_text

POOL = """
[[backends]]
id = "gpu-1"
url = "http://10.0.0.7:8000"
type = "vllm"
[[backends.models]]
id = "m"

[[backends]]
id = "gpu-v6"
url = "http://[fd00::7]:8000"
type = "vllm"
[[backends.models]]
id = "m"
"""
CLOUD = """
[[backends]]
id = "cloud"
url = "https://api.openai.com"
type = "openai"
[[backends.models]]
id = "m"
"""


def test_ip_literal_backends_are_pool_endpoints() -> None:
    assert endpoint_picker_issues(load_config_text(POOL)) == ()


def test_a_hostname_backend_is_named_with_its_key() -> None:
    config = load_config_text(POOL + CLOUD, source="pool.toml")
    [issue] = endpoint_picker_issues(config)
    assert issue.startswith("pool.toml: backends[2].url: backend 'cloud': ")
    assert "'https://api.openai.com' is a name, not an IP literal" in issue
    assert "give it the model server's IP:port" in issue
    # not a load warning: the same file is right for an Envoy routing the cloud by name
    assert config.warnings == ()


def check(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_check_config_endpoint_picker_refuses_hostname_backends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(POOL + CLOUD)
    code, out, err = check([str(path)], capsys)
    assert code == 0 and out.startswith(f"{path}: OK") and err == ""  # fine for ext_proc by name
    code, out, err = check(["--endpoint-picker", str(path)], capsys)
    assert (code, out) == (1, "")
    first, summary = err.splitlines()
    assert first.startswith(f"error: {path}: backends[2].url: backend 'cloud': the host of ")
    assert summary == (
        f"{path}: 1 error for an endpoint picker: the server would start, but an endpoint-picking "
        "gateway can never be sent to these backends"
    )
    path.write_text(POOL)
    code, out, err = check(["--endpoint-picker", str(path)], capsys)
    assert code == 0 and out.startswith(f"{path}: OK") and err == ""


def test_check_config_endpoint_picker_still_reports_load_errors_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(CLOUD + "[queue]\nmax_wait = 1\n")
    code, _, err = check(["--endpoint-picker", str(path)], capsys)
    assert code == 1
    assert err.splitlines()[-1] == f"{path}: 1 error; the server would refuse to start"


PICKER = """
[envoy]
read_body = true
endpoint_picker = true
"""


def test_a_pickers_config_refuses_a_hostname_backend_at_load() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(PICKER + POOL + CLOUD, source="pool.toml")
    [issue] = info.value.issues
    assert (issue.file, issue.key_path) == ("pool.toml", "backends[2].url")
    assert "backend 'cloud'" in issue.problem and "is a name, not an IP literal" in issue.problem


def test_a_pickers_config_of_ip_endpoints_loads() -> None:
    config = load_config_text(PICKER + POOL)
    assert config.envoy.endpoint_picker and len(config.backends) == 2
