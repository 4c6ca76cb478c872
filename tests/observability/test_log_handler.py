"""The log handler writes on its own thread: a blocked stream never blocks the code that logs."""

from __future__ import annotations

import io
import json
import logging
import os
import threading

from observability.logs import BackgroundStreamHandler, JsonFormatter, request_log


class BlockedStream(io.StringIO):
    """A stream that takes no line until it is released, like a full pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def write(self, text: str) -> int:
        self.released.wait(timeout=30)
        return super().write(text)


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_logging_returns_while_the_stream_is_blocked_and_every_line_arrives_in_order_once_released():
    stream = BlockedStream()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = _logger(handler, "tests.blocked")
    for number in range(50):  # would hang here if the caller did the writing
        logger.info("line %d", number)
    assert stream.getvalue() == ""
    stream.released.set()
    handler.flush()
    assert stream.getvalue().splitlines() == [f"line {number}" for number in range(50)]
    handler.stop()


def test_a_full_queue_drops_records_and_says_how_many_when_the_stream_recovers():
    stream = BlockedStream()
    handler = BackgroundStreamHandler(stream, capacity=5)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = _logger(handler, "tests.full")
    for number in range(20):
        logger.info("line %d", number)
    stream.released.set()
    handler.flush()
    lines = stream.getvalue().splitlines()
    written = [line for line in lines if line.startswith("INFO")]
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(written) <= 6  # the queue's 5 and the one the writer held while blocked
    assert warnings == [f"WARNING {20 - len(written)} log records were dropped: the log stream did not keep up"]
    handler.stop()


def test_the_request_line_is_one_json_object_with_its_fields():
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("llm_platform.requests")
    saved = logger.handlers[:], logger.propagate, logger.level
    _logger(handler, "llm_platform.requests")
    try:
        request_log(
            request_id="req_1",
            endpoint="chat.completions",
            tenant="acme",
            key_prefix="llmp_ab",
            model="gpt-4o-mini",
            status=200,
            overhead_ms=0.12,
            latency_ms=3.4,
            trace_id="0af7651916cd43dd8448eb211c80319c",
        )
        handler.flush()
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved
        handler.stop()
    line = json.loads(stream.getvalue())
    assert line["message"] == "request" and line["logger"] == "llm_platform.requests" and line["level"] == "INFO"
    assert {key: line[key] for key in ("request_id", "tenant", "key_prefix", "model", "status", "trace_id")} == {
        "request_id": "req_1",
        "tenant": "acme",
        "key_prefix": "llmp_ab",
        "model": "gpt-4o-mini",
        "status": 200,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
    }
    assert (line["overhead_ms"], line["latency_ms"], line["stream"]) == (0.12, 3.4, False)


def test_a_forked_child_writes_through_its_own_writer_thread(tmp_path):
    path = tmp_path / "child.log"
    with path.open("w") as stream:
        handler = BackgroundStreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
        logger = _logger(handler, "tests.fork")
        logger.info("parent before fork")
        handler.flush()
        pid = os.fork()
        if pid == 0:  # the child: a Celery prefork worker, say
            try:
                logger.info("child")
                handler.flush()
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        logger.info("parent after fork")
        handler.stop()
    lines = path.read_text().splitlines()
    assert lines[0].endswith("parent before fork")
    assert f"{pid} child" in lines
    assert lines[-1].endswith("parent after fork")


def test_after_stop_a_record_is_written_at_once_and_flush_does_not_wait():
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = _logger(handler, "tests.late")
    handler.stop()
    logger.info("logged by an exit hook after the writer ended")
    handler.flush()  # would wait forever on a queue nobody reads
    assert stream.getvalue() == "logged by an exit hook after the writer ended\n"
