"""nexus-grpc serve | check-config | decide | explain | health | dev-cert."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nexus_grpc import __version__
from nexus_grpc.text import plural

# where decide, explain and health ask; the container image sets NEXUS_TARGET for its HEALTHCHECK
DEFAULT_TARGET = os.environ.get("NEXUS_TARGET") or "127.0.0.1:50051"

if TYPE_CHECKING:
    from nexus_grpc.app import Runtime


def _serve(args: argparse.Namespace) -> int:
    from nexus_grpc.app import ServeOptions, load_runtime, serve
    from nexus_grpc.config.errors import ConfigError
    from nexus_grpc.errors import LedgerError

    try:
        runtime = load_runtime(args.config)
    except ConfigError as exc:
        print(f"nexus-grpc: refusing to start, the configuration is invalid:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nexus-grpc: cannot read the configuration: {exc}", file=sys.stderr)
        return 2
    workers = args.workers or runtime.config.server.workers
    if workers > 1 and not args.reuse_port:
        from nexus_grpc.workers import run_workers

        return run_workers(args, workers)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        pass
    try:
        options = ServeOptions(
            listen=args.listen,
            reuse_port=args.reuse_port,
            admin_sync=Path(args.admin_sync) if args.admin_sync else None,
            on_ready=_announce,
        )
        asyncio.run(serve(runtime, options))
    except LedgerError as exc:
        if runtime.port:  # it served, then failed to flush the ledger at the stop
            print(f"nexus-grpc: {exc}", file=sys.stderr)
            return 1
        # the ledger's file passed the checks but cannot be opened (corrupt pages, a file system
        # that refuses writes): the configuration cannot run, as the loader would have said
        where = f"{args.config}: ledger.path: " if args.config else ""
        print(f"nexus-grpc: refusing to start, the ledger cannot be used:\n{where}{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nexus-grpc: {exc}", file=sys.stderr)
        return 1
    return 0


def _announce(runtime: Runtime) -> None:
    """One line on standard output once the server takes decisions (logs go to standard error)."""
    if runtime.demo:
        hint = "the demo fleet — try: nexus-grpc explain gpt-4 --tokens 1200"
    else:
        config = runtime.config
        hint = f"config {config.version}, {plural(len(config.backends), 'backend')}"
    reached = runtime.listen == DEFAULT_TARGET or runtime.listen.endswith(":50051")
    target = "" if reached else f" (pass --target {runtime.listen})"
    print(f"nexus-grpc: serving on {runtime.listen}{target}, {hint}", flush=True)


def _check(args: argparse.Namespace) -> int:
    from nexus_grpc.config.loader import check_config, endpoint_picker_issues

    config, errors, warnings = check_config(args.file)
    picker = list(endpoint_picker_issues(config)) if config is not None and args.endpoint_picker else []
    for w in warnings:
        print(f"warning: {w}")
    for e in errors + picker:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        print(
            f"{args.file}: {plural(len(errors), 'error')}; the server would refuse to start", file=sys.stderr
        )
        return 1
    if picker:
        print(
            f"{args.file}: {plural(len(picker), 'error')} for an endpoint picker: the server would start, "
            "but an endpoint-picking gateway can never be sent to these backends",
            file=sys.stderr,
        )
        return 1
    assert config is not None
    print(
        f"{args.file}: OK (version {config.version}, {plural(len(config.backends), 'backend')}, "
        f"{plural(len(config.routing.policies), 'policy')}, {plural(len(warnings), 'warning')})"
    )
    return 0


def _dev_cert(args: argparse.Namespace) -> int:
    from nexus_grpc.devcert import DEFAULT_NAMES, DevCertError, write_dev_cert

    names = args.name or list(DEFAULT_NAMES)
    try:
        made = write_dev_cert(Path(args.dir), names, days=args.days, force=args.force)
    except DevCertError as exc:
        print(f"nexus-grpc: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {made.cert} (self-signed certificate, valid {made.days} days for {', '.join(made.names)})")
    print(f"wrote {made.key} (its private key, readable by you only)")
    print("for development only; serve TLS with:")
    print(f'  [server.tls]\n  cert = "{made.cert}"\n  key = "{made.key}"')
    print(f"and let the gateway trust {made.cert} (deploy/envoy/inference-pool.yaml: NEXUS_CA)")
    return 0


def _health(args: argparse.Namespace) -> int:
    from nexus_grpc.client import health

    return health(args)


def _query(args: argparse.Namespace, explain: bool) -> int:
    from nexus_grpc.client import query

    return query(args, explain=explain)


def _tokens(text: str) -> int:
    """A token count for --tokens/--max-output: the same rule as the server's (0..10 000 000)."""
    from nexus_grpc.config.schema import LimitsConfig
    from nexus_grpc.domain import validate
    from nexus_grpc.errors import FieldError

    try:
        return validate.token_count(int(text), "count", LimitsConfig().max_tokens)
    except ValueError as exc:
        problem = exc.problem if isinstance(exc, FieldError) else f"{text!r} is not an integer"
        raise argparse.ArgumentTypeError(problem) from None


def _tier(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= 5:
        raise argparse.ArgumentTypeError(f"{value} is out of range 0..5")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus-grpc", description="gRPC decision engine for LLM routing")
    parser.add_argument("--version", action="version", version=f"nexus-grpc {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve decisions (the built-in demo fleet without --config)")
    s.add_argument("--config", help="TOML configuration file")
    s.add_argument("--listen", help="address to listen on, e.g. 127.0.0.1:50051 (overrides [server] listen)")
    s.add_argument("--workers", type=int, default=0, help="processes sharing the port")
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--admin-sync", help=argparse.SUPPRESS)
    s.set_defaults(func=_serve)

    c = sub.add_parser("check-config", help="validate a configuration file")
    c.add_argument("file")
    c.add_argument(
        "--endpoint-picker",
        action="store_true",
        help="check it as an InferencePool endpoint picker's: every backend must be an IP:port "
        "pool endpoint (a backend whose URL host is a name is an error)",
    )
    c.set_defaults(func=_check)

    d = sub.add_parser(
        "dev-cert", help="write a self-signed TLS certificate and key for development (uses openssl)"
    )
    d.add_argument("dir", help="directory to write nexus-grpc.crt and nexus-grpc.key into")
    d.add_argument(
        "--name",
        action="append",
        help="a DNS name or IP address the certificate is valid for (repeatable; "
        "default: localhost, 127.0.0.1, ::1)",
    )
    d.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    d.add_argument("--force", action="store_true", help="replace existing files")
    d.set_defaults(func=_dev_cert)

    h = sub.add_parser(
        "health",
        help="ask a server's gRPC health service; exit 0 when SERVING",
        description="Exit status 0 when the server reports SERVING, else 1. Plaintext unless --ca or "
        "--tls-name is given (a [server.tls] server, e.g. from a Kubernetes exec probe).",
    )
    h.add_argument("--target", default=DEFAULT_TARGET)
    h.add_argument("--service", default="", help="a service name (default: the whole server)")
    h.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="poll until SERVING, at most this long"
    )
    h.add_argument("--timeout", type=float, default=2.0, help="seconds per check")
    h.add_argument("--quiet", "-q", action="store_true", help="print nothing, only the exit status")
    h.add_argument(
        "--ca",
        metavar="FILE",
        help="connect with TLS, trusting the PEM certificates in FILE (a CA, or the server's own "
        "certificate)",
    )
    h.add_argument(
        "--tls-name",
        metavar="NAME",
        help="connect with TLS; the name the server's certificate must be valid for (default: the "
        "target's host)",
    )
    h.set_defaults(func=_health)

    for name, explain in (("decide", False), ("explain", True)):
        q = sub.add_parser(
            name,
            help=f"{'explain' if explain else 'ask for'} a decision and print it",
            description=(
                "Exit status: 0 Route, 3 Queue, 4 Reject, 1 when the call failed."
                if not explain
                else "Exit status 0 whatever the decision; 1 when the call failed."
            ),
        )
        q.add_argument("model")
        q.add_argument("--target", default=DEFAULT_TARGET)
        q.add_argument("--tokens", type=_tokens, default=0, help="estimated input tokens")
        q.add_argument("--max-output", type=_tokens, default=0, help="max output tokens")
        q.add_argument("--tenant", default="")
        q.add_argument("--request-id", default="")
        q.add_argument("--privacy", choices=["restricted", "open"])
        q.add_argument("--min-tier", type=_tier, default=0)
        q.add_argument("--flexible", action="store_true", help="accept a tier downgrade")
        q.add_argument("--priority", choices=["normal", "high"])
        q.add_argument("--vision", action="store_true")
        q.add_argument("--tools", action="store_true")
        q.add_argument("--json-mode", action="store_true")
        q.add_argument("--stream", action="store_true")
        q.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
        q.add_argument("--token", default="", help="bearer token (client_token_env)")
        q.add_argument("--json", action="store_true", help="print the response as JSON")
        q.add_argument("--timeout", type=float, default=5.0)
        q.set_defaults(func=lambda a, e=explain: _query(a, e))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `nexus-grpc decide ... | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
