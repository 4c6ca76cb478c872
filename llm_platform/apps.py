"""App config for the project package, which hosts cross-app management commands."""

from __future__ import annotations

from django.apps import AppConfig


class LlmPlatformConfig(AppConfig):
    name = "llm_platform"
    verbose_name = "Platform"
