"""Configuration errors: every problem names the file, the key path and what is wrong."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nexus_grpc.errors import NexusError


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem (or warning) found in a configuration file."""

    file: str
    key_path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key_path}: {self.problem}"


class ConfigError(NexusError):
    """A configuration that must not be used; `issues` lists every problem of the failing phase."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)
