"""Serve the platform with daphne, draining gracefully on SIGTERM (the production entry point)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

logger = logging.getLogger("llm_platform.serve")


class Drain:
    """Graceful shutdown for a daphne ``Server``.

    Daphne's own SIGTERM handling stops the Twisted reactor at once, and its shutdown hook
    cancels every running application: streams are cut mid-answer. Here the first SIGTERM
    (or SIGINT) instead:

    1. turns ``/readyz`` to 503 and stops listening, so no new connection is accepted;
    2. closes idle keep-alive connections, and each connection once its response is done;
    3. waits until no request is in flight, or ``timeout`` seconds have passed;
    4. at the deadline, disconnects what is still running (each request still accounts) and stops;
    5. after the loop ends, flushes the usage and audit batch writers and the span exporter.

    A second signal skips the wait.
    """

    def __init__(self, server: Any, timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        self.ports: list[Any] = []
        self.started_at: float | None = None
        self.task: asyncio.Future[None] | None = None

    def listening(self, port: Any) -> None:
        self.ports.append(port)

    def signal(self, signum: int) -> None:
        if self.started_at is not None:
            logger.warning("second %s: stopping now", signal.Signals(signum).name)
            self._stop()
            return
        from llm_platform.ops import Lifecycle
        from observability import metrics

        self.started_at = time.monotonic()
        Lifecycle.draining = True
        metrics.DRAINING.set(1)
        logger.info(
            "%s: draining %d in-flight requests (up to %g s)",
            signal.Signals(signum).name,
            len(self._in_flight()),
            self.timeout,
        )
        for port in self.ports:
            port.stopListening()
        self.task = asyncio.ensure_future(self._wait())

    def _in_flight(self) -> list[Any]:
        busy = []
        for protocol, details in list(self.server.connections.items()):
            instance = details.get("application_instance")
            if instance is not None and not instance.done():
                busy.append(protocol)
        return busy

    def _close_idle(self) -> None:
        busy = set(self._in_flight())
        for protocol, details in list(self.server.connections.items()):
            if protocol not in busy and "disconnected" not in details:
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.loseConnection()

    async def _wait(self) -> None:
        assert self.started_at is not None
        deadline = self.started_at + self.timeout
        while True:
            self._close_idle()
            busy = self._in_flight()
            if not busy:
                logger.info("drained in %.2f s", time.monotonic() - self.started_at)
                break
            if time.monotonic() >= deadline:
                logger.warning("drain deadline reached; disconnecting %d requests", len(busy))
                await self._disconnect(busy)
                break
            await asyncio.sleep(0.05)
        await self._flush_on_loop()
        self._stop()

    async def _disconnect(self, busy: list[Any]) -> None:
        """Close the connections still busy, as if their clients had left, and let them account.

        Daphne's own shutdown would cancel the application only, not the task a consumer
        runs the request on; a disconnect goes through the consumer's ``http_disconnect``,
        which cancels that task so its usage is recorded.
        """
        for protocol in busy:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
        give_up = time.monotonic() + 5
        while self._in_flight() and time.monotonic() < give_up:  # noqa: ASYNC110 - polling daphne's table
            await asyncio.sleep(0.05)

    @staticmethod
    async def _flush_on_loop() -> None:
        """Flush what lives on the loop (quota settlements, routing-state deltas) while it still runs."""
        from core import registry

        try:
            async with asyncio.timeout(5):
                await registry.aflush_all()
        except TimeoutError:  # a store gone: the counters heal when their windows end
            logger.error("flushing on the loop while draining timed out")

    def _stop(self) -> None:
        self.server.stop()


def flush_writers() -> None:
    """Write what the batch writers still hold (run after the event loop has stopped)."""
    from django.utils.module_loading import import_string

    from core import registry

    for path in settings.BATCH_WRITERS:
        import_string(path)  # each writer registers itself when its module is imported
    for name, written in registry.flush_all().items():
        if isinstance(written, int) and written:
            logger.info("flushed %d %s rows", written, name)


class Command(BaseCommand):
    help = "Serve HTTP with daphne; on SIGTERM stop accepting, finish in-flight requests and streams, flush, exit."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("-b", "--bind", default="0.0.0.0", help="Address to listen on (default 0.0.0.0).")
        parser.add_argument("-p", "--port", type=int, default=8000, help="Port to listen on (default 8000).")
        parser.add_argument("--proxy-headers", action="store_true", help="Trust X-Forwarded-For/-Port/-Proto.")
        parser.add_argument(
            "--drain-timeout",
            type=float,
            default=None,
            help="Seconds to let in-flight requests finish after SIGTERM (default DRAIN_TIMEOUT).",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="Also serve /metrics on this port, without a token (default METRICS_PORT; 0 = off).",
        )
        parser.add_argument("--access-log", action="store_true", help="Log every request daphne serves (stdout).")

    def handle(self, *args: Any, **options: Any) -> None:
        # daphne.server installs Twisted's asyncio reactor; it must be imported before the app.
        import daphne.server  # noqa: F401
        from daphne.access import AccessLogGenerator
        from daphne.endpoints import build_endpoint_description_strings

        from llm_platform.asgi import application
        from llm_platform.server import PlatformServer
        from observability import metrics, telemetry

        timeout = settings.DRAIN_TIMEOUT if options["drain_timeout"] is None else options["drain_timeout"]
        metrics_port = settings.METRICS_PORT if options["metrics_port"] is None else options["metrics_port"]
        if metrics_port:
            metrics.serve_port(metrics_port)
        drain: Drain | None = None

        class DrainingServer(PlatformServer):
            def listen_success(self, port: Any) -> None:
                super().listen_success(port)
                assert drain is not None
                drain.listening(port)

        def ready() -> None:
            loop = asyncio.get_event_loop()
            assert drain is not None
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, drain.signal, signum)

        proxy = options["proxy_headers"]
        server = DrainingServer(
            application=application,
            endpoints=build_endpoint_description_strings(host=options["bind"], port=options["port"]),
            signal_handlers=False,
            action_logger=AccessLogGenerator(sys.stdout) if options["access_log"] else None,
            proxy_forwarded_address_header="X-Forwarded-For" if proxy else None,
            proxy_forwarded_port_header="X-Forwarded-Port" if proxy else None,
            proxy_forwarded_proto_header="X-Forwarded-Proto" if proxy else None,
            # After the drain, what is still running gets this long to notice its cancellation.
            application_close_timeout=10,
            ready_callable=ready,
        )
        drain = Drain(server, timeout)
        logger.info("serving on %s:%d (drain timeout %g s)", options["bind"], options["port"], timeout)
        try:
            server.run()
        finally:
            flush_writers()
            telemetry.shutdown()
            metrics.process_exit()
            logger.info("stopped")
