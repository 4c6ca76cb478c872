"""Run the whole platform on one machine with no services: SQLite, in-process fallbacks, the fake upstream."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from llm_platform.beat import embedded_scheduler_start
from llm_platform.celery import app as celery_app
from llm_platform.private_files import PRIVATE_UMASK, private_secret
from llm_platform.processes import NotReady, die_with_parent, http_wait

ROOT = Path(__file__).resolve().parents[3]


def _persistent_secret(name: str, make: str) -> str:
    return private_secret(settings.VAR_DIR / name, make)


class Command(BaseCommand):
    help = (
        "Migrate, create the admin user, load the demo config, and run server, fake upstream and worker; "
        "periodic jobs run in this process on the schedule edited in the admin (Periodic tasks)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--upstream-port", type=int, default=int(os.environ.get("FAKE_UPSTREAM_PORT", "9100")))
        parser.add_argument("--config", type=Path, default=ROOT / "demo" / "config.yaml")
        parser.add_argument(
            "--no-worker", action="store_true", help="Do not start the Celery worker nor the periodic jobs."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # The settings set it already; said again here because the children (server, worker) inherit it.
        os.umask(PRIVATE_UMASK)
        call_command("migrate", interactive=False, verbosity=0)
        username = os.environ.get("ADMIN_USERNAME", "admin")
        password = os.environ.get("ADMIN_PASSWORD") or _persistent_secret("admin_password", secrets.token_urlsafe(12))
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            user_model.objects.create_superuser(username=username, email="", password=password)
        elif not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        demo_key = os.environ.get("DEMO_API_KEY") or _persistent_secret(
            "demo_api_key", "sk-demo-" + secrets.token_urlsafe(24)
        )
        upstream_url = f"http://127.0.0.1:{options['upstream_port']}/v1"
        env = {**os.environ, "FAKE_UPSTREAM_URL": upstream_url, "DEMO_API_KEY": demo_key, "PYTHONUNBUFFERED": "1"}
        os.environ.update(FAKE_UPSTREAM_URL=upstream_url, DEMO_API_KEY=demo_key)
        call_command("loadconfig", str(options["config"]), verbosity=0)

        python = sys.executable
        commands = {
            "fake upstream": [
                python,
                "manage.py",
                "fake_upstream",
                "--port",
                str(options["upstream_port"]),
                "--chunks",
                "12",
                "--gap-ms",
                "40",
            ],
            # The production server (daphne with flow control and a graceful drain).
            "web (serve)": [
                python,
                "manage.py",
                "serve",
                "--bind",
                options["host"],
                "--port",
                str(options["port"]),
            ],
        }
        if not options["no_worker"]:
            commands["worker + beat (celery)"] = [
                python,
                "-m",
                "celery",
                "-A",
                "llm_platform",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "warning",
            ]
        logs = settings.VAR_DIR / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        children: dict[str, subprocess.Popen[bytes]] = {}
        scheduler = None
        try:
            for name, command in commands.items():
                log = (logs / f"{name.split()[0]}.log").open("ab")
                children[name] = subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
                )
            base = f"http://{options['host']}:{options['port']}"
            self._wait(f"{upstream_url[:-3]}/healthz", children["fake upstream"])
            self._wait(f"{base}/admin/login/", children["web (serve)"])
            if not options["no_worker"]:
                scheduler = embedded_scheduler_start(celery_app)
            self._banner(base, username, password, demo_key, logs)
            self._supervise(children)
        finally:
            if scheduler is not None:
                scheduler.stop()
            for process in children.values():
                if process.poll() is None:
                    process.terminate()
            for process in children.values():
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()

    def _wait(self, url: str, process: subprocess.Popen[bytes]) -> None:
        try:
            http_wait(url, process, timeout=60)
        except NotReady as exc:
            raise CommandError(f"{exc}; see var/logs/") from exc

    def _banner(self, base: str, username: str, password: str, key: str, logs: Path) -> None:
        curl = (
            f"curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Hello!"}]}\''
        )
        self.stdout.write(
            "\n".join(
                [
                    "",
                    self.style.SUCCESS("The LLM platform is running (embedded mode: SQLite, no Redis needed)."),
                    "  Jobs:       usage prune, audit export and secret rotation run in this process "
                    "(schedule: admin > Periodic tasks)",
                    f"  Admin:      {base}/admin/   login: {username} / {password}",
                    f"  API:        {base}/v1   (OpenAI-compatible; API docs at {base}/v1/docs)",
                    f"  API key:    {key}",
                    f"  Logs:       {logs}",
                    "",
                    "Try it:",
                    f"  {curl}",
                    "",
                    "Or with the OpenAI SDK:",
                    f"  OpenAI(base_url='{base}/v1', api_key='{key}').chat.completions.create(",
                    "      model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'Hello!'}])",
                    "",
                    "Press Ctrl-C to stop.",
                    "",
                ]
            )
        )

    def _supervise(self, children: dict[str, subprocess.Popen[bytes]]) -> None:
        stop = {"now": False}

        def request_stop(signum: int, frame: Any) -> None:
            stop["now"] = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        while not stop["now"]:
            for name, process in children.items():
                if process.poll() is not None:
                    raise CommandError(f"{name} exited with {process.returncode}; see var/logs/")
            time.sleep(0.5)
        self.stdout.write("stopping…")
