"""Run the fake OpenAI-compatible upstream (see llm_platform.fake_upstream)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from llm_platform.fake_upstream import Behaviour, fake_upstream_run


class Command(BaseCommand):
    help = "Serve a fake OpenAI-compatible provider for demos, tests and benchmarks."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100)
        parser.add_argument("--chunks", type=int, default=8, help="Content chunks per streamed answer.")
        parser.add_argument("--gap-ms", type=float, default=0.0, help="Pause between streamed chunks.")
        parser.add_argument("--delay-ms", type=float, default=0.0, help="Pause before answering.")
        parser.add_argument("--status", type=int, default=200, help="Answer every request with this status.")
        parser.add_argument("--api-key", default="", help="Require this bearer key (default: accept any).")

    def handle(self, *args: Any, **options: Any) -> None:
        behaviour = Behaviour(
            chunks=options["chunks"], gap_ms=options["gap_ms"], delay_ms=options["delay_ms"], status=options["status"]
        )
        self.stdout.write(f"fake upstream on http://{options['host']}:{options['port']}/v1")
        fake_upstream_run(options["host"], options["port"], behaviour, options["api_key"])
