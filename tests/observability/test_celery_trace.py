"""A Celery task queued while a request is traced continues that request's trace (official Celery instrumentation)."""

from __future__ import annotations

import threading

from celery import Celery
from celery.contrib.testing.worker import start_worker
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from observability import telemetry

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"

app = Celery("trace-test", broker="memory://", set_as_current=False)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)
seen: list[tuple[int, int]] = []
ran = threading.Event()


@app.task(name="tests.observability.note_trace")
def note_trace() -> None:
    """Notes the trace and span current while the task runs (in the worker's thread)."""
    context = trace.get_current_span().get_span_context()
    seen.append((context.trace_id, context.span_id))
    ran.set()


def test_a_task_queued_in_a_traced_request_continues_its_trace(spans):
    seen.clear()
    ran.clear()
    headers = {b"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01".encode()}
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        request = telemetry.server_span("/admin/train", "POST", headers)
        assert request is not None
        with telemetry.span("router.train.queue"):
            note_trace.delay()
        request.end(202)
        assert ran.wait(20), "the worker did not run the task"
    finished = {span.name: span for span in spans.get_finished_spans()}
    server = finished["POST /admin/train"]
    queued = finished["router.train.queue"]
    publish = finished["apply_async/tests.observability.note_trace"]
    run = finished["run/tests.observability.note_trace"]
    assert publish.kind is SpanKind.PRODUCER and run.kind is SpanKind.CONSUMER
    # One trace from the caller to the worker: caller → request → our span → publish → run.
    for span in (server, queued, publish, run):
        assert format(span.context.trace_id, "032x") == TRACE_ID, span.name
    assert queued.parent is not None and queued.parent.span_id == server.context.span_id
    assert publish.parent is not None and publish.parent.span_id == queued.context.span_id
    assert run.parent is not None and run.parent.span_id == publish.context.span_id
    assert run.parent.is_remote, "the run span's parent came in through the message headers"
    # The task's own code runs inside the run span.
    assert seen == [(run.context.trace_id, run.context.span_id)]
