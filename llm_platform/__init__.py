"""The project package: settings, URLs, ASGI entry point, Celery app and the API assembly."""

from llm_platform.celery import app as celery_app

__all__ = ["celery_app"]
