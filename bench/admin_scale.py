"""Admin at scale: 100,000 API keys and 1,000,000 request logs on PostgreSQL, pages timed.

    .venv/bin/python bench/admin_scale.py --database postgres://postgres@127.0.0.1:5432/bench

The database must exist; it is emptied. Data is generated with SQL (generate_series), the
hourly rollups are built from it, then each admin page is fetched through Django's test
client as a superuser and as a tenant admin (median of 5 fetches after one warm-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", required=True)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--logs", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=100)
    args = parser.parse_args()
    os.environ.update(
        DATABASE_URL=args.database, SECRET_KEY="bench-only", LOG_LEVEL="WARNING", ALLOWED_HOSTS="testserver"
    )
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from tenants import services
    from tenants.models import ApiKey, Membership, Tenant

    setup_test_environment()
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tenants_tenant (slug, name, is_active, created_at, updated_at) "
            "SELECT 'tenant-' || i, 'Tenant ' || i, true, now(), now() FROM generate_series(1, %s) i",
            [args.tenants],
        )
        cursor.execute(
            "INSERT INTO tenants_apikey (tenant_id, name, prefix, secret_hash, allowed_models, scopes, created_at) "
            "SELECT (SELECT min(id) FROM tenants_tenant) + i %% %s, 'key ' || i, 'sk-' || substr(md5(i::text), 1, 9), "
            "encode(sha256(('secret' || i)::bytea), 'hex'), '[]', '[]', now() - (i || ' seconds')::interval "
            "FROM generate_series(1, %s) i",
            [args.tenants, args.keys],
        )
        cursor.execute(
            "INSERT INTO routing_requestlog (request_id, created_at, tenant_id, api_key_id, key_prefix, endpoint, "
            "model_requested, model_served, stream, status_code, error_type, prompt_tokens, completion_tokens, "
            "total_tokens, usage_estimated, cost_usd, latency_ms, overhead_ms, client_disconnected) "
            "SELECT 'req_' || md5(i::text), now() - ((i %% 2592000) || ' seconds')::interval, k.tenant_id, k.id, "
            "k.prefix, 'chat.completions', CASE WHEN i %% 3 = 0 THEN 'gpt-4o' ELSE 'gpt-4o-mini' END, "
            "'openai/gpt-4o-mini', i %% 2 = 0, CASE WHEN i %% 50 = 0 THEN 502 ELSE 200 END, '', 100, 50, 150, false, "
            "0.0001, 100 + i %% 900, 0.5, false "
            "FROM generate_series(1, %s) i "
            "JOIN tenants_apikey k ON k.id = (SELECT min(id) FROM tenants_apikey) + i %% %s",
            [args.logs, args.keys],
        )
        cursor.execute(
            "INSERT INTO routing_usagerollup (hour, tenant_id, api_key_id, model, requests, errors, prompt_tokens, "
            "completion_tokens, cost_usd, latency_ms_sum, latency_h0, latency_h1, latency_h2, latency_h3, latency_h4, "
            "latency_h5, latency_h6, latency_h7, latency_h8, latency_h9) "
            "SELECT date_trunc('hour', created_at), tenant_id, api_key_id, model_requested, count(*), "
            "count(*) FILTER (WHERE status_code >= 400), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd), "
            "sum(latency_ms), 0, 0, count(*) FILTER (WHERE latency_ms <= 250), "
            "count(*) FILTER (WHERE latency_ms > 250 AND latency_ms <= 500), count(*) FILTER (WHERE latency_ms > 500), "
            "0, 0, 0, 0, 0 FROM routing_requestlog GROUP BY 1, 2, 3, 4"
        )
        cursor.execute("ANALYZE")
    print(f"generated {args.keys} keys, {args.logs} logs in {time.perf_counter() - started:.0f} s")

    root = User.objects.create_superuser("root", "", "pw")
    tenant = Tenant.objects.order_by("id")[5]
    member = User.objects.create_user("member", password="pw")
    services.membership_save(membership=Membership(user=member, tenant=tenant, role="tenant_admin"), actor="bench")
    key = ApiKey.objects.filter(tenant=tenant).first()
    assert key is not None
    pages = [
        ("API keys, list", "/admin/tenants/apikey/"),
        ("API keys, search by prefix", f"/admin/tenants/apikey/?q={key.prefix}"),
        ("API keys, filter active + tenant", f"/admin/tenants/apikey/?status=active&tenant__id__exact={tenant.pk}"),
        ("API key, change page", f"/admin/tenants/apikey/{key.pk}/change/"),
        ("Tenants, list (key counts)", "/admin/tenants/tenant/"),
        ("Request logs, list", "/admin/routing/requestlog/"),
        ("Request logs, filter 502", "/admin/routing/requestlog/?status_code__exact=502"),
        ("Request logs, search by request id", "/admin/routing/requestlog/?q=req_c4ca4238a0b923820dcc509a6f75849b"),
        ("Request logs, search by key prefix", f"/admin/routing/requestlog/?q={key.prefix}"),
        ("Request logs, search by model", "/admin/routing/requestlog/?q=gpt-4o"),
        ("Tenant usage page, 30 days", f"/admin/routing/requestlog/usage/{tenant.pk}/?days=30"),
        ("Tenant usage page, 24 hours", f"/admin/routing/requestlog/usage/{tenant.pk}/?days=1"),
    ]
    rows = []
    for who, user in (("platform admin", root), ("tenant admin", member)):
        client = Client()
        client.force_login(user)
        for name, url in pages:
            response = client.get(url)
            if response.status_code != 200:
                rows.append((who, name, f"HTTP {response.status_code}"))
                continue
            timings = []
            for _ in range(5):
                t = time.perf_counter()
                client.get(url)
                timings.append((time.perf_counter() - t) * 1000)
            rows.append((who, name, f"{statistics.median(timings):.0f} ms"))
    print("| As | Page | Median |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()
