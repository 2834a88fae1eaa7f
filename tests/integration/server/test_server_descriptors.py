"""ExplainRequest has exactly the fields of DecideRequest: names, numbers, types."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb


def shape(desc: Descriptor) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for f in desc.fields:
        fd: FieldDescriptor = f
        nested: object = None
        if fd.message_type is not None:
            mt = fd.message_type
            # map entries are generated per message (DecideRequest.LabelsEntry): compare their shape
            nested = tuple(sorted(shape(mt).items())) if mt.GetOptions().map_entry else mt.full_name
        elif fd.enum_type is not None:
            nested = fd.enum_type.full_name
        out[fd.name] = (
            fd.number,
            fd.type,
            fd.is_repeated,
            fd.has_presence,
            fd.containing_oneof.name if fd.containing_oneof else None,
            nested,
        )
    return out


def test_explain_request_mirrors_decide_request() -> None:
    decide, explain = shape(dpb.DecideRequest.DESCRIPTOR), shape(dpb.ExplainRequest.DESCRIPTOR)
    assert explain == decide
    assert len(decide) == 14  # request_id .. labels


def test_explain_request_bytes_round_trip() -> None:
    full: Any = dpb.DecideRequest(
        request_id="r",
        model="m",
        estimated_input_tokens=1,
        max_output_tokens=2,
        needs_vision=True,
        needs_tools=True,
        needs_json_mode=True,
        stream=True,
        tier_mode=tpb.TIER_MODE_FLEXIBLE,
        privacy=tpb.PRIVACY_ZONE_RESTRICTED,
        min_tier=3,
        priority=tpb.PRIORITY_HIGH,
        tenant="t",
        labels={"k": "v"},
    )
    for f in dpb.DecideRequest.DESCRIPTOR.fields:
        assert full.HasField(f.name) if f.has_presence else getattr(full, f.name), f.name
    as_explain = dpb.ExplainRequest.FromString(full.SerializeToString())
    assert as_explain.SerializeToString(deterministic=True) == full.SerializeToString(deterministic=True)
    assert len(UnknownFieldSet(as_explain)) == 0
    for f in dpb.DecideRequest.DESCRIPTOR.fields:
        assert getattr(as_explain, f.name) == getattr(full, f.name), f.name
