"""The composition root: config -> registry/ledger -> pipeline -> engine -> servicers ->
grpc.aio server, run as one serving process.

    serve.py        `serve()`: run a Runtime until a signal; `load_runtime()` from a file or the demo
    runtime.py      `Runtime` (one process's parts and its start/stop) and `ServeOptions`
    grpc_server.py  the grpc.aio server: services behind the gate, binding, TLS, a taken port
    health.py       the gRPC health statuses, the ledger's writability, the degraded reasons
    telemetry.py    tracing, decision log, Prometheus and OTLP metrics; the readings they publish
    upkeep.py       the once-a-second upkeep and the demo fleet's seeding
    reload.py       config reload and the watchers (health probes, config file, workers' changes)
    ledger.py       `make_ledger()`: the ledger `[ledger]` names

serve imports runtime, runtime imports the rest, and those do not import one another (the
`lint-imports` contract in pyproject.toml).
"""

from __future__ import annotations

from nexus_grpc.app.ledger import make_ledger
from nexus_grpc.app.runtime import Runtime, ServeOptions
from nexus_grpc.app.serve import load_runtime, serve

__all__ = ["Runtime", "ServeOptions", "load_runtime", "make_ledger", "serve"]
