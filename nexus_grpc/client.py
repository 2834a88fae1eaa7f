"""The synchronous client behind `nexus-grpc decide|explain|health`: request building, tables,
exit statuses.

`decide` exits with the verdict, for scripts: 0 Route, 3 Queue, 4 Reject; 1 when the RPC failed
(2 is argparse's usage error). `explain` exits 0 whatever it explains; `health` 0 when SERVING
(over TLS with `--ca` / `--tls-name`: a Kubernetes exec probe of a `[server.tls]` server)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from nexus_grpc import text
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb

EXIT_ROUTE = 0
EXIT_ERROR = 1
EXIT_QUEUE = 3
EXIT_REJECT = 4
EXIT_STATUS = {"route": EXIT_ROUTE, "queue": EXIT_QUEUE, "reject": EXIT_REJECT}


def build_request(args: argparse.Namespace) -> dpb.DecideRequest:
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return dpb.DecideRequest(
        request_id=args.request_id,
        model=args.model,
        estimated_input_tokens=args.tokens,
        max_output_tokens=args.max_output,
        needs_vision=args.vision,
        needs_tools=args.tools,
        needs_json_mode=args.json_mode,
        stream=args.stream,
        tier_mode=tpb.TIER_MODE_FLEXIBLE if args.flexible else tpb.TIER_MODE_UNSPECIFIED,
        privacy={"restricted": tpb.PRIVACY_ZONE_RESTRICTED, "open": tpb.PRIVACY_ZONE_OPEN}.get(
            args.privacy or "", tpb.PRIVACY_ZONE_UNSPECIFIED
        ),
        min_tier=args.min_tier,
        priority=tpb.PRIORITY_HIGH if args.priority == "high" else tpb.PRIORITY_UNSPECIFIED,
        tenant=args.tenant,
        labels=labels,
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _enum(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)


def render_decision(resp: dpb.DecideResponse) -> str:
    out = [f"request {resp.request_id}: {resp.requested_model} (resolved {resp.resolved_model})"]
    kind = resp.WhichOneof("decision")
    if kind == "route":
        r = resp.route
        zone = _enum(tpb.PrivacyZone, r.privacy_zone, "PRIVACY_ZONE_")
        out.append(f"ROUTE  -> {r.backend_id} ({r.backend_type}, {zone})")
        out.append(f"  url {r.url}  model {r.model}  reason {r.reason}  score {r.score}")
        if r.fallback_used:
            out.append("  fallback used")
        if r.alternates:
            out.append(f"  alternates: {', '.join(r.alternates)}")
    elif kind == "queue":
        q = resp.queue
        out.append(f"QUEUE  model {q.model}: {q.reason}; retry in {text.ms(q.retry_after_ms)}")
    else:
        j = resp.reject
        out.append(f"REJECT {_enum(tpb.RejectCode, j.code, 'REJECT_CODE_')}: {j.message}")
        if j.retry_after_ms:
            out.append(f"  retry after {text.ms(j.retry_after_ms)}")
    est, b = resp.cost_estimate, resp.budget
    out.append(f"cost estimate: {est.input_tokens} in / {est.output_tokens} out tokens = ${est.cost_usd:.6f}")
    out.append(
        f"budget [{b.scope} {b.month}]: {_enum(tpb.BudgetStatus, b.status, 'BUDGET_STATUS_')} "
        f"spent ${b.spent_usd:.2f} + reserved ${b.reserved_usd:.2f} of ${b.limit_usd:.2f} "
        f"({b.utilization_percent:.1f}%)"
    )
    if resp.exclusions:
        out.append("")
        out.append(
            table(
                ["backend", "model", "stage", "code", "reason", "suggested action"],
                [
                    [
                        e.backend_id,
                        e.model,
                        e.reconciler,
                        _enum(tpb.ExclusionCode, e.code, "EXCLUSION_CODE_"),
                        e.reason,
                        e.suggested_action,
                    ]
                    for e in resp.exclusions
                ],
            )
        )
        if resp.exclusions_omitted:
            out.append(f"... and {text.plural(resp.exclusions_omitted, 'exclusion')} more")
    return "\n".join(out)


def render_explain(resp: dpb.ExplainResponse) -> str:
    out = [render_decision(resp.decision), ""]
    out.append(
        table(
            ["model", "stage", "in", "out", "us", "notes"],
            [
                [
                    s.model,
                    s.reconciler,
                    s.candidates_in,
                    s.candidates_out,
                    s.duration_us,
                    ", ".join(f"{k}={v}" for k, v in sorted(s.notes.items())),
                ]
                for s in resp.stages
            ],
        )
    )
    if resp.scores:
        out.append("")
        out.append(
            table(
                ["model", "backend", "score", "priority", "load", "latency", "adjustments"],
                [
                    [
                        s.model,
                        s.backend_id,
                        s.score,
                        s.priority_score,
                        s.load_score,
                        s.latency_score,
                        ", ".join(s.adjustments),
                    ]
                    for s in resp.scores
                ],
            )
        )
    return "\n".join(out)


def _fail(args: argparse.Namespace, exc: grpc.RpcError) -> int:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = getattr(code, "name", str(code))
    print(f"nexus-grpc: {name}: {details}", file=sys.stderr)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        print(
            f"nexus-grpc: is a server running on {args.target}? Start one with `nexus-grpc serve` "
            "(or `./dev serve` in a checkout); `nexus-grpc health --wait 30` waits for it",
            file=sys.stderr,
        )
    if getattr(args, "json", False):
        print(json.dumps({"error": {"code": name, "message": details}}))
    return EXIT_ERROR


def query(args: argparse.Namespace, *, explain: bool) -> int:
    request = build_request(args)
    metadata: tuple[tuple[str, str | bytes], ...] | None = (
        (("authorization", f"Bearer {args.token}"),) if args.token else None
    )
    with grpc.insecure_channel(args.target) as channel:
        stub = dgrpc.DecisionServiceStub(channel)
        try:
            if explain:
                eresp: dpb.ExplainResponse = stub.Explain(
                    dpb.ExplainRequest.FromString(request.SerializeToString()),
                    timeout=args.timeout,
                    metadata=metadata,
                )
                rendered = render_explain(eresp)
                message: Any = eresp
                status = EXIT_ROUTE
            else:
                dresp: dpb.DecideResponse = stub.Decide(request, timeout=args.timeout, metadata=metadata)
                rendered = render_decision(dresp)
                message = dresp
                status = EXIT_STATUS.get(dresp.WhichOneof("decision") or "", EXIT_ERROR)
        except grpc.RpcError as exc:
            return _fail(args, exc)
    if args.json:
        print(json_format.MessageToJson(message, preserving_proto_field_name=True))
    else:
        print(rendered)
    return status


class TlsOptionError(ValueError):
    """`--ca` names a file that cannot be read or holds no PEM certificate."""


def health_channel(args: argparse.Namespace) -> grpc.Channel:
    """Plaintext, or TLS when `--ca` or `--tls-name` is given: the server's certificate must chain to
    a certificate of the `--ca` file (gRPC's own roots without it) and be valid for `--tls-name`
    (default: the target's host). The `--ca` file may hold the server's own certificate: gRPC
    accepts it as its trust anchor, CA-issued or self-signed."""
    ca, name = args.ca, args.tls_name
    if ca is None and not name:
        return grpc.insecure_channel(args.target)
    roots = None
    if ca is not None:
        try:
            roots = Path(ca).read_bytes()
        except OSError as exc:
            raise TlsOptionError(f"--ca {ca}: cannot read it: {exc.strerror or exc}") from None
        if b"-----BEGIN CERTIFICATE-----" not in roots:
            raise TlsOptionError(f"--ca {ca}: no PEM certificate in it")
    options = [("grpc.ssl_target_name_override", name)] if name else []
    creds = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.secure_channel(args.target, creds, options=options)


def health(args: argparse.Namespace) -> int:
    """`nexus-grpc health`: the gRPC health status of a server; with `--wait`, poll until SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving = health_pb2.HealthCheckResponse.SERVING
    started = time.monotonic()
    deadline = started + args.wait
    last = "no answer"
    try:
        channel = health_channel(args)
    except TlsOptionError as exc:
        if not args.quiet:
            print(f"nexus-grpc: {exc}", file=sys.stderr)
        return 1
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                if answer.status == serving:
                    if not args.quiet:
                        took = time.monotonic() - started
                        after = f" (after {text.duration(round(took * 1000))})" if took >= 1 else ""
                        print(f"nexus-grpc: {args.target} is SERVING{after}")
                    return 0
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                details = exc.details() if hasattr(exc, "details") else ""
                # the details say why a TLS handshake failed (name, trust), for a probe's event
                last = getattr(code, "name", "no answer") + (f" ({details})" if details else "")
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    if not args.quiet:
        waited = f" after waiting {text.duration(round(args.wait * 1000))}" if args.wait else ""
        print(f"nexus-grpc: {args.target} is not serving{waited}: {last}", file=sys.stderr)
    return 1
