from __future__ import annotations

from nexus_grpc.config.errors import ConfigError, ConfigIssue


def test_issue_str_names_file_key_path_and_problem() -> None:
    issue = ConfigIssue("nexus.toml", "routing.weights.speed", "unknown key")
    assert str(issue) == "nexus.toml: routing.weights.speed: unknown key"


def test_error_lists_every_issue_one_per_line() -> None:
    issues = (
        ConfigIssue("a.toml", "server.workers", "0 is out of range (must be 1..1024)"),
        ConfigIssue("a.toml", "backends[0].tier", "6 is out of range (must be 1..5)"),
    )
    error = ConfigError(issues)
    assert error.issues == issues
    assert str(error).splitlines() == [str(i) for i in issues]
