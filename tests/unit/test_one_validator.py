"""One validator for every edge: a backend (or a request value) is refused by the config loader
exactly when the admin API refuses it, and vice versa — the same rules, the same field named."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.config.errors import ConfigError
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.errors import FieldError
from nexus_grpc.servicers.convert import backend_from_proto

BASE = {"id": "b1", "url": "http://127.0.0.1:9000", "type": "ollama", "models": [{"id": "m"}]}
BUDGET = "[routing.budget]\nmonthly_limit_usd = 10\n"

CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("good", {}, True),
    ("id with a space", {"id": "gpu 1"}, False),
    ("id with a bidi mark", {"id": "gpu\u200f1"}, False),
    ("id with DEL", {"id": "gpu\x7f"}, False),
    ("id too long", {"id": "b" * 129}, False),
    ("url without host", {"url": "http://"}, False),
    ("url unparseable", {"url": "http://[::1"}, False),
    ("url with credentials", {"url": "http://u:p@h:1"}, False),
    ("url not http", {"url": "ftp://h"}, False),
    ("tier 0", {"tier": 0}, False),
    ("tier 6", {"tier": 6}, False),
    ("priority 101", {"priority": 101}, False),
    ("duplicate models", {"models": [{"id": "m"}, {"id": "m"}]}, False),
    ("model with a space", {"models": [{"id": "a b"}]}, False),
    ("context length 0", {"models": [{"id": "m", "context_length": 0}]}, False),
    ("price too high", {"pricing": (1e300, 0.0)}, False),
    ("price negative", {"pricing": (-1.0, 0.0)}, False),
    ("price finer than nano", {"pricing": (0.0000001, 0.0)}, False),
    ("unpriced cloud model under a budget", {"type": "openai", "models": [{"id": "mystery"}]}, False),
    ("priced cloud model under a budget", {"type": "openai", "models": [{"id": "gpt-4"}]}, True),
    ("generic without zone", {"type": "generic"}, False),
    ("unknown type", {"type": "bogus"}, False),
]


def toml(fields: dict[str, Any]) -> str:
    b = {**BASE, **fields}
    lines = ["[[backends]]"]
    for key in ("id", "url", "type"):
        lines.append(f"{key} = {_q(b[key])}")
    for key in ("tier", "priority"):
        if key in b:
            lines.append(f"{key} = {b[key]}")
    if "pricing" in b:
        lines += [
            "[backends.pricing]",
            f"input_per_1k = {b['pricing'][0]!r}",
            f"output_per_1k = {b['pricing'][1]!r}",
        ]
    for m in b["models"]:
        lines += ["[[backends.models]]", f"id = {_q(m['id'])}"]
        if "context_length" in m:
            lines.append(f"context_length = {m['context_length']}")
    return BUDGET + "\n".join(lines) + "\n"


def _q(text: str) -> str:
    escaped = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else f"\\u{ord(c):04x}" for c in text)
    return f'"{escaped}"'


def proto(fields: dict[str, Any]) -> tpb.Backend:
    b = {**BASE, **fields}
    msg = tpb.Backend(id=b["id"], url=b["url"], type=b["type"])
    for key in ("tier", "priority"):
        if key in b:
            setattr(msg, key, b[key])
    if "pricing" in b:
        msg.pricing.CopyFrom(tpb.Pricing(input_per_1k=b["pricing"][0], output_per_1k=b["pricing"][1]))
    for m in b["models"]:
        model = msg.models.add(id=m["id"])
        if "context_length" in m:
            model.context_length = m["context_length"]
    return msg


@pytest.mark.parametrize(("name", "fields", "valid"), CASES, ids=[c[0] for c in CASES])
def test_the_loader_and_the_admin_api_agree(name: str, fields: dict[str, Any], valid: bool) -> None:
    base = load_config_text(BUDGET + toml({}).removeprefix(BUDGET), source="<base>")
    try:
        load_config_text(toml(fields), source="<case>")
        loaded = True
    except ConfigError:
        loaded = False
    try:
        backend_from_proto(proto(fields), base)
        upserted = True
    except FieldError:
        upserted = False
    assert (loaded, upserted) == (valid, valid)
