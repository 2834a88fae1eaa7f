"""The exceptions nexus-grpc raises, in one tree. Every edge maps them in one table: the gRPC
servicers to status codes, the Envoy adapters to HTTP statuses, the CLI to exit codes.

    NexusError
    ├── FieldError           a malformed input value, naming the field   INVALID_ARGUMENT / 400
    ├── NotFound             an unknown id                                NOT_FOUND / 404
    ├── FailedPrecondition   valid, but the server's state refuses it     FAILED_PRECONDITION
    ├── Overloaded           shed under load                              RESOURCE_EXHAUSTED / 429
    └── LedgerError          the budget ledger could not store a change   UNAVAILABLE / 503

Configuration problems are `nexus_grpc.config.errors.ConfigError` (also a `NexusError`): a list of
issues, each naming the file, the key path and the problem.
"""

from __future__ import annotations


class NexusError(Exception):
    """Base of every exception nexus-grpc raises on purpose."""


class FieldError(NexusError, ValueError):
    """A malformed input value; `field` names it (a proto field, a header, a config key)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(NexusError, LookupError):
    """An unknown id."""


class FailedPrecondition(NexusError):
    """The request is valid but the server's state refuses it."""


class Overloaded(NexusError):
    """Shed under overload; PRIORITY_HIGH requests are shed last."""


class LedgerError(NexusError):
    """The budget ledger could not durably store a change (full disk, read-only or corrupt file,
    an unexpected store error). The decision that needed it fails cleanly and nothing is held.

    Its text names the store ("sqlite ledger /var/lib/nexus/ledger.db: disk is full") for the
    server log; `for_caller` is what a caller is told, without server paths."""

    def for_caller(self) -> str:
        reason = str(self).rsplit(": ", 1)[-1]
        return (
            f"the budget ledger cannot store changes right now ({reason}); "
            "retry shortly or on another replica"
        )
