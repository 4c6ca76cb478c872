"""Load a YAML config (LiteLLM's model_list plus tenants and API keys), idempotently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError

from llm_platform.config import ConfigError, config_apply


class Command(BaseCommand):
    help = "Apply a config file: model_list (LiteLLM format) and tenants with api_keys. Safe to run again."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", type=Path)

    def handle(self, *args: Any, file: Path, **options: Any) -> None:
        try:
            data = yaml.safe_load(file.read_text())
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise CommandError(f"{file} is not valid YAML: {exc}") from exc
        try:
            report = config_apply(data, actor=f"config:{file.name}")
        except ConfigError as exc:
            raise CommandError(f"{file}: {exc}") from exc
        for warning in report.warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))
        for label in report.created:
            self.stdout.write(f"created   {label}")
        for label in report.updated:
            self.stdout.write(f"updated   {label}")
        if options["verbosity"] > 1:
            for label in report.unchanged:
                self.stdout.write(f"unchanged {label}")
        for name, secret in report.new_keys.items():
            self.stdout.write(self.style.SUCCESS(f"new API key {name}: {secret}  (shown once; store it now)"))
        self.stdout.write(
            f"{len(report.created)} created, {len(report.updated)} updated, {len(report.unchanged)} unchanged"
        )
