"""Finished spans as compact records, shipped to a child process that encodes OTLP protobuf and posts it.

The serving process only builds a tuple per finished span and appends it to a queue; a
thread hands batches to the exporter child over a pipe (each record ``marshal``-ed after its
length, each batch after its length), so encoding and HTTP run outside the serving
process's GIL. A record is::

    (trace_id, span_id, parent_id, parent_remote, name, kind, start_ns, end_ns,
     attributes, status_code, status_message, scope, events, flags, trace_state)

with ``kind`` and ``status_code`` the SDK's enum values, ``events`` a tuple of
``(name, time_ns, attributes)`` and ``trace_state`` its W3C header form.

Run as ``python -m observability.span_export SERVICE``: reads batches on stdin until EOF,
exports each (the OTLP endpoint, headers, timeout and compression come from the usual
``OTEL_EXPORTER_OTLP_*`` variables) and exits after the last one.
"""

from __future__ import annotations

import collections
import logging
import marshal
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

logger = logging.getLogger(__name__)

Record = tuple[Any, ...]

QUEUE_LIMIT = 50_000  # records waiting in the serving process; more are dropped (and counted)
EXPORT_BATCH = 2_048  # records per OTLP request
SEND_AT = 2_048  # queued records that wake the sending thread before its interval is up


def _env_ms(name: str, default: float) -> float:
    try:
        return max(0.01, float(os.environ.get(name, "")) / 1000)
    except ValueError:
        return default / 1000


def record_from_span(span: Any) -> Record:
    """The record of a finished SDK span (from the official instrumentations)."""
    context = span.context
    parent = span.parent
    status = span.status
    scope = span.instrumentation_scope
    return (
        context.trace_id,
        context.span_id,
        parent.span_id if parent is not None else 0,
        bool(parent is not None and parent.is_remote),
        span.name,
        span.kind.value,
        span.start_time,
        span.end_time,
        dict(span.attributes or {}),
        status.status_code.value,
        status.description or "",
        scope.name if scope is not None else "",
        tuple((event.name, event.timestamp, dict(event.attributes or {})) for event in span.events),
        int(context.trace_flags),
        context.trace_state.to_header() if context.trace_state else "",
    )


def span_from_record(record: Record, resource: Any) -> Any:
    """A ``ReadableSpan`` from a record, for SDK span processors (tests, the console exporter)."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

    (
        trace_id,
        span_id,
        parent_id,
        remote,
        name,
        kind,
        start,
        end,
        attributes,
        code,
        message,
        scope,
        events,
        flags,
        state,
    ) = record
    trace_state = TraceState.from_header([state]) if state else None
    context = SpanContext(trace_id, span_id, False, TraceFlags(flags), trace_state)
    parent = SpanContext(trace_id, parent_id, remote, TraceFlags(flags), trace_state) if parent_id else None
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=[Event(event_name, event_attributes, timestamp) for event_name, timestamp, event_attributes in events],
        kind=SpanKind(kind),
        instrumentation_scope=InstrumentationScope(scope),
        status=Status(StatusCode(code), message or None),
        start_time=start,
        end_time=end,
    )


class SpanProcessorToSink:
    """An SDK span processor that turns finished SDK spans into records for a sink."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        return None

    def on_end(self, span: Any) -> None:
        if span.context.trace_flags.sampled:
            self.sink.put(record_from_span(span))

    def _on_ending(self, span: Any) -> None:  # the SDK calls this on processors that have it
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class ProviderSink:
    """Records handed to an SDK ``TracerProvider``'s span processors, in process (tests, console)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    def put(self, record: Record) -> None:
        self.provider._active_span_processor.on_end(span_from_record(record, self.provider.resource))

    def flush(self, timeout_s: float = 5.0) -> None:
        self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self.flush(timeout_s)


_dumps = marshal.dumps


class ChildSink:
    """Records queued in this process and exported by a child process (see the module docstring)."""

    def __init__(self, service: str) -> None:
        self.service = service
        # Each record is queued marshalled: bytes are not tracked by the garbage collector, and
        # the span's attribute dict is freed at once instead of aging into the older generations.
        self.queue: collections.deque[bytes] = collections.deque()
        self.dropped = 0
        self._lock = threading.Lock()  # one writer to the pipe at a time
        self._wake = threading.Event()
        self._stopped = False
        self._pid = os.getpid()
        # The batch span processor's variable: how long finished spans may wait (default 5 s).
        self.interval_s = _env_ms("OTEL_BSP_SCHEDULE_DELAY", 5000)
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: IO[bytes] | None = None
        self._start()
        # A forked child (Celery's prefork pool) gets an exporter and a sending thread of its own.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        if self._stopped or self._pipe is None:
            return
        try:
            self._pipe.close()  # the parent's pipe: the parent's exporter must still see EOF at its exit
        except OSError:
            pass
        self.queue = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = os.getpid()
        self._start()

    def _spawn(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "observability.span_export", self.service],
            stdin=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self._pipe = self._process.stdin

    def _start(self) -> None:
        self._spawn()
        threading.Thread(target=self._run, name="span-export", daemon=True).start()

    def _respawn(self) -> None:
        """Replace a dead exporter child (the batch being written when it died is lost)."""
        with self._lock:
            if self._stopped:
                return
            old, pipe = self._process, self._pipe
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
            code = None
            if old is not None:
                try:
                    code = old.wait(1)
                except subprocess.TimeoutExpired:
                    old.kill()
                    old.wait()
            logger.warning("span exporter process is gone (exit code %s); starting a new one", code)
            self._spawn()

    def put(self, record: Record) -> None:
        if len(self.queue) >= QUEUE_LIMIT:
            self.dropped += 1
            return
        data = _dumps(record)
        self.queue.append(len(data).to_bytes(4, "little") + data)
        if len(self.queue) == SEND_AT:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                self._send()
            except OSError:  # the child is gone: start another one, at most once a second
                self._respawn()
                time.sleep(1.0)

    def _send(self) -> None:
        queue = self.queue
        with self._lock:
            while queue and self._pipe is not None:
                batch = []
                popleft = queue.popleft
                try:
                    for _ in range(EXPORT_BATCH):
                        batch.append(popleft())
                except IndexError:
                    pass
                data = b"".join(batch)
                self._pipe.write(len(data).to_bytes(4, "big") + data)
                self._pipe.flush()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Hand everything queued to the child (which exports it as soon as it is read)."""
        if os.getpid() == self._pid:
            self._send()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, close the pipe and wait for the child to export it and exit."""
        if os.getpid() != self._pid or self._process is None:
            return
        self._stopped = True
        try:
            self._send()
        except OSError:
            pass
        with self._lock:
            pipe, self._pipe = self._pipe, None
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("span exporter did not finish within %g s; stopped", timeout_s)
            self._process.kill()
        if self.dropped:
            logger.warning("%d spans were dropped (export queue full)", self.dropped)


# --- the child: OTLP protobuf written directly from records ---------------------------------------------------
# Field numbers from opentelemetry/proto (trace/v1/trace.proto, common/v1/common.proto). Writing the
# wire format by hand, with each attribute's encoding remembered (a request's attributes repeat
# from span to span: models, strategies, status codes), costs a fraction of building messages.

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


def _loads_all(data: bytes) -> list[Record]:
    """The records of one batch: each marshalled, after its length (4 bytes, little-endian).

    ``marshal.load`` on a stream reads an object piece by piece through Python calls (~15 µs
    a record); ``marshal.loads`` on a slice of a ``memoryview`` is one C call (~1.5 µs).
    """
    view = memoryview(data)
    loads = marshal.loads
    records = []
    position, end = 0, len(data)
    while position < end:
        size = int.from_bytes(view[position : position + 4], "little")
        position += 4
        records.append(loads(view[position : position + size]))
        position += size
    return records


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main(service: str) -> None:
    """The exporter child: batches from stdin, exported one OTLP request at a time, until EOF."""
    import signal

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    # The serving process decides when to stop: at EOF on stdin, after the last export.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    resource_attributes = dict(Resource.create(attributes).attributes)
    exporter = OTLPSpanExporter()
    stdin = sys.stdin.buffer
    while True:
        header = _read_exactly(stdin, 4)
        if header is None:
            break
        data = _read_exactly(stdin, int.from_bytes(header, "big"))
        if data is None:
            break
        records = _loads_all(data)
        started = time.monotonic()
        # The SDK exporter's HTTP client: endpoint, headers, TLS, compression, retries, all from OTEL_*.
        result = exporter._client.export(encode(records, resource_attributes))
        if not result.success:
            logger.warning("span export of %d spans failed after %.1f s", len(records), time.monotonic() - started)
    exporter.shutdown()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "llm-platform")
