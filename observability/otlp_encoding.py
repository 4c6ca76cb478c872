"""OTLP protobuf (``ExportTraceServiceRequest``) written directly from span records, without message classes.

Field numbers from opentelemetry/proto (trace/v1/trace.proto, common/v1/common.proto). Writing the
wire format by hand, with each attribute's encoding remembered (a request's attributes repeat
from span to span: models, strategies, status codes), costs a fraction of building messages.
``OTEL_FAST_PATH=false`` exports through the SDK's OTLP exporter and its protobuf classes instead.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from observability.span_records import Record

_STRUCT_DOUBLE = struct.Struct("<d")
_STRUCT_FIXED64 = struct.Struct("<Q")
_STRUCT_FIXED32 = struct.Struct("<I")
_ATTRIBUTE_CACHE_LIMIT = 20_000


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field; ``tag`` is the field number shifted, with wire type 2."""
    return _varint(tag) + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _STRUCT_DOUBLE.pack(value)
    if isinstance(value, str):
        return _field(0x0A, value.encode("utf-8", "replace"))
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join(_field(0x0A, _any_value(item)) for item in value))
    return _field(0x0A, str(value).encode("utf-8", "replace"))


_attribute_cache: dict[tuple[int, str, Any, type], bytes] = {}
_name_cache: dict[str, bytes] = {}
# Field 6, the span kind: the SDK counts from INTERNAL = 0, OTLP from UNSPECIFIED = 0.
_KIND = [b"\x30" + _varint(kind + 1) for kind in range(5)]
_TIMES = struct.Struct("<BQBQ")  # start (field 7) and end (field 8), both fixed64


def _key_value(key: str, value: Any, tag: int) -> bytes:
    """One ``KeyValue`` as field ``tag`` (attributes are field 9 of a span, 3 of an event, 1 of a resource).

    A request's attributes repeat from span to span (models, strategies, status codes): each
    hashable one is encoded once and remembered, up to a bound.
    """
    cache_key = (tag, key, value, type(value))  # True and 1 are equal keys, not equal encodings
    try:
        cached = _attribute_cache.get(cache_key)
    except TypeError:  # a list: not hashable, encoded every time
        return _key_value_encode(key, value, tag)
    if cached is None:
        cached = _key_value_encode(key, value, tag)
        if len(_attribute_cache) < _ATTRIBUTE_CACHE_LIMIT:
            _attribute_cache[cache_key] = cached
    return cached


def _key_value_encode(key: str, value: Any, tag: int) -> bytes:
    body = _field(0x0A, key.encode("utf-8", "replace")) + _field(0x12, _any_value(value))
    return _varint(tag) + _varint(len(body)) + body


def _span_name(name: str) -> bytes:
    encoded = _name_cache.get(name)
    if encoded is None:
        encoded = _field(0x2A, name.encode("utf-8", "replace"))
        if len(_name_cache) < _ATTRIBUTE_CACHE_LIMIT:
            _name_cache[name] = encoded
    return encoded


def _span(record: Record) -> bytes:
    trace_id, span_id, parent_id, remote, name, kind, start, end, attributes, code, message = record[:11]
    events, flags, state = record[12:]
    parts = [b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08" + span_id.to_bytes(8, "big")]
    if state:
        parts.append(_field(0x1A, state.encode()))
    if parent_id:
        parts.append(b"\x22\x08" + parent_id.to_bytes(8, "big"))
    parts.append(_span_name(name))
    parts.append(_KIND[kind])
    parts.append(_TIMES.pack(0x39, start, 0x41, end))
    for key, value in attributes.items():
        parts.append(_key_value(key, value, 0x4A))
    for event_name, timestamp, event_attributes in events:
        event = [b"\x09" + _STRUCT_FIXED64.pack(timestamp), _field(0x12, event_name.encode("utf-8", "replace"))]
        event.extend(_key_value(key, value, 0x1A) for key, value in event_attributes.items())
        parts.append(_field(0x5A, b"".join(event)))
    if code:
        status = (_field(0x12, message.encode("utf-8", "replace")) if message else b"") + b"\x18" + _varint(code)
        parts.append(_field(0x7A, status))
    # Bits 0-7 the trace flags, bit 8: the parent's remoteness is known, bit 9: it is remote.
    parts.append(b"\x85\x01" + _STRUCT_FIXED32.pack((flags & 0xFF) | 0x100 | (0x200 if remote else 0)))
    return b"".join(parts)


def encode(records: Iterable[Record], resource_attributes: Mapping[str, Any]) -> bytes:
    """One serialized ``ExportTraceServiceRequest`` for ``records``, grouped by instrumentation scope."""
    by_scope: dict[str, list[bytes]] = {}
    for record in records:
        by_scope.setdefault(record[11], []).append(_field(0x12, _span(record)))
    resource = b"".join(_key_value(key, value, 0x0A) for key, value in resource_attributes.items())
    scopes = b"".join(
        _field(0x12, _field(0x0A, _field(0x0A, scope.encode())) + b"".join(spans)) for scope, spans in by_scope.items()
    )
    return _field(0x0A, _field(0x0A, resource) + scopes)
