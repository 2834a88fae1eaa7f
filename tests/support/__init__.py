"""Helpers shared by test directories (on the path as `support`: see `pythonpath` in
pyproject.toml), repository-only: they may use the source tree (deploy/, the test venv's envoy).

    net            free_port(), wait_until() / async_wait_until(): poll with a deadline
    servers        the stubs of a channel, a `nexus-grpc serve` process's env, wait_serving()
    envoy          the real Envoy on a deploy/envoy/ config (also a CLI that renders one)
    upstream       stand-in HTTP backends (also a CLI: `python tests/support/upstream.py ...`)
    redis_server   a throw-away redis-server
    otlp           a stand-in OpenTelemetry collector
    doc_blocks     a Markdown file's shell blocks, run as written (README tour, Envoy quick starts)
    probes         health-probe fixtures: a registry on a fake clock, probe results, status()

Fixtures stay in each directory's conftest.py; what tests import lives here. The public test API
for users is `nexus_grpc.testing`."""
