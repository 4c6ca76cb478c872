# Production image: daphne (web), celery worker and beat all run from it (see compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LITELLM_LOCAL_MODEL_COST_MAP=True VAR_DIR=/var/lib/llm-platform
WORKDIR /app

COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock

COPY . .
RUN useradd --system --home /app platform \
    && mkdir -p "$VAR_DIR" && chown platform "$VAR_DIR" \
    && SECRET_KEY=build-only DATABASE_URL=sqlite:////tmp/build.sqlite3 python manage.py collectstatic --noinput -v0
USER platform

EXPOSE 8000
# `serve` is daphne with a graceful drain on SIGTERM (see docs/operations.md).
CMD ["python", "manage.py", "serve", "--bind", "0.0.0.0", "--port", "8000", "--proxy-headers"]
