"""domain.validate.env_var_name and service_url (the config loader's environment variable names
and Redis URLs)."""

from __future__ import annotations

import pytest

from nexus_grpc.domain import validate
from nexus_grpc.errors import FieldError


@pytest.mark.parametrize("name", ["", "NEXUS_ADMIN_TOKEN", "_x", "a1", "X" * 256])
def test_env_var_names(name: str) -> None:
    assert validate.env_var_name(name, "f") == name


@pytest.mark.parametrize("name", ["1ABC", "MY-VAR", "A B", "A=B", "é", "X" * 257, "A\x00"])
def test_bad_env_var_names(name: str) -> None:
    with pytest.raises(FieldError, match="not an environment variable name") as info:
        validate.env_var_name(name, "f")
    assert info.value.field == "f"


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:secret@h:6380/2", "unix:///run/redis.sock", "REDIS://h"]
)
def test_service_urls(url: str) -> None:
    parts = validate.service_url(url, "f", ("redis", "rediss", "unix"))
    assert parts.scheme == url.split(":", 1)[0].lower()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://[::1", "is not a valid URL"),
        ("redis://h:99999", "is not a valid URL"),
        ("redis://h:port", "is not a valid URL"),
        ("http://h", "must start with one of redis://, rediss://"),
        ("redis://h /0", "a space"),
        ("", "required"),
    ],
)
def test_bad_service_urls(url: str, problem: str) -> None:
    with pytest.raises(FieldError, match=problem):
        validate.service_url(url, "f", ("redis", "rediss"))
