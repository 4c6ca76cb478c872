"""Admin for routing: deployments, route groups, request logs, usage and ML routing; importing it registers them."""

from routing.admin import deployments, request_logs  # noqa: F401
from routing.ml import admin as ml_admin  # noqa: F401
