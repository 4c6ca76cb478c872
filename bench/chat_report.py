"""The Markdown tables bench/run.py prints, from the measurements of chat_load."""

from __future__ import annotations

import statistics

from chat_gateway import GAP_MS
from chat_load import percentile


def quota_compare_table(rounds: dict[str, list[dict[str, float]]], redis: bool) -> list[str]:
    def med(name: str, field: str) -> float:
        return statistics.median(run[field] for run in rounds[name])

    rps_ratio = statistics.median(
        quota["rps"] / none["rps"] for none, quota in zip(rounds["none"], rounds["quota"], strict=True)
    )
    added_p50 = med("quota", "c1_p50_ms") - med("none", "c1_p50_ms")
    rows = [
        ("Latency, c=1, median (ms)", "c1_p50_ms", "{:.2f}", f"+{added_p50:.2f} ms", "≤ 0.5 ms", added_p50 <= 0.5),
        ("Latency, c=1, p95 (ms)", "c1_p95_ms", "{:.2f}", "", "", None),
        ("Latency, c=1, p99 (ms)", "c1_p99_ms", "{:.2f}", "", "", None),
        (
            "Requests/s, c=16",
            "rps",
            "{:.0f}",
            f"{(rps_ratio - 1) * 100:+.0f}% (median of per-round ratios)",
            "within 15%",
            rps_ratio >= 0.85,
        ),
        ("Gateway CPU per request, c=16 (µs)", "cpu_us_per_request", "{:.0f}", None, "", None),
    ]
    if redis:
        rows.append(("Redis server CPU per request, c=16 (µs)", "redis_cpu_us_per_request", "{:.0f}", None, "", None))
    table = ["| Metric | No quotas | With quotas | Added | Target | Met |", "|---|---|---|---|---|---|"]
    for label, field, fmt, added, target, met in rows:
        none, quota = med("none", field), med("quota", field)
        if added is None:
            added = f"{quota - none:+.0f} µs ({(quota / none - 1) * 100:+.0f}%)"
        met_text = "" if met is None else ("yes" if met else "no")
        table.append(f"| {label} | {fmt.format(none)} | {fmt.format(quota)} | {added} | {target} | {met_text} |")
    return table


def durability_compare_table(rounds: dict[str, list[dict[str, float]]]) -> list[str]:
    def med(name: str, field: str) -> float:
        return statistics.median(run[field] for run in rounds[name])

    rps_ratio = statistics.median(
        journal["rps"] / batch["rps"] for batch, journal in zip(rounds["batch"], rounds["journal"], strict=True)
    )
    table = ["| Metric | batch | journal | Added |", "|---|---|---|---|"]
    for label, field, fmt in (
        ("Latency, c=1, median (ms)", "c1_p50_ms", "{:.2f}"),
        ("Latency, c=1, p95 (ms)", "c1_p95_ms", "{:.2f}"),
        ("Latency, c=1, p99 (ms)", "c1_p99_ms", "{:.2f}"),
        ("Requests/s, c=16", "rps", "{:.0f}"),
        ("Gateway CPU per request, c=16 (µs)", "cpu_us_per_request", "{:.0f}"),
    ):
        batch, journal = med("batch", field), med("journal", field)
        if field == "rps":
            added = f"{(rps_ratio - 1) * 100:+.0f}% (median of per-round ratios)"
        elif field.endswith("_ms"):
            added = f"{journal - batch:+.2f} ms"
        else:
            added = f"{journal - batch:+.0f} µs ({(journal / batch - 1) * 100:+.0f}%)"
        table.append(f"| {label} | {fmt.format(batch)} | {fmt.format(journal)} | {added} |")
    return table


def overhead_table(
    c1: dict[str, list[dict[str, float]]],
    c16: dict[str, list[dict[str, float]]],
    header: float,
    streamed_direct: dict[str, list[float]],
    streamed_gateway: dict[str, list[float]],
    stream_concurrency: int,
) -> tuple[list[str], dict[str, object]]:
    """The direct-vs-gateway table, and the figures behind it for the results file."""

    def med(runs: list[dict[str, float]], field: str) -> float:
        return statistics.median(run[field] for run in runs)

    p50_direct, p50_gateway = med(c1["direct"], "p50_us") / 1000, med(c1["gateway"], "p50_us") / 1000
    p95_direct, p95_gateway = med(c1["direct"], "p95_us") / 1000, med(c1["gateway"], "p95_us") / 1000
    rps_direct, rps_gateway = med(c16["direct"], "rps"), med(c16["gateway"], "rps")
    errors = sum(run["non2xx"] + run["errors"] for runs in (c1["gateway"], c16["gateway"]) for run in runs)
    ttfb_d, ttfb_g = streamed_direct["ttfb"], streamed_gateway["ttfb"]
    gap_spread_d = statistics.pstdev(streamed_direct["gaps"]) / GAP_MS * 100
    gap_spread_g = statistics.pstdev(streamed_gateway["gaps"]) / GAP_MS * 100
    ttfb_overhead_p50 = statistics.median(ttfb_g) - statistics.median(ttfb_d)
    ttfb_overhead_p95 = percentile(ttfb_g, 95) - percentile(ttfb_d, 95)
    rows = [
        (
            "Non-streaming latency, c=1, median (ms)",
            f"{p50_direct:.2f}",
            f"{p50_gateway:.2f}",
            f"+{p50_gateway - p50_direct:.2f} ms",
            "≤ 2.5 ms overhead",
            p50_gateway - p50_direct <= 2.5,
        ),
        (
            "Non-streaming latency, c=1, p95 (ms)",
            f"{p95_direct:.2f}",
            f"{p95_gateway:.2f}",
            f"+{p95_gateway - p95_direct:.2f} ms",
            "",
            None,
        ),
        ("Gateway's own x-gateway-overhead-ms, c=1, median", "", f"{header:.3f}", "", "", None),
        (
            "Requests/s, c=16",
            f"{rps_direct:.0f}",
            f"{rps_gateway:.0f}",
            f"{rps_gateway / rps_direct:.2f}x",
            "≥ 450 req/s",
            rps_gateway >= 450,
        ),
        (
            f"Streaming TTFB, median / p95 (ms), c={stream_concurrency}",
            f"{statistics.median(ttfb_d):.2f} / {percentile(ttfb_d, 95):.2f}",
            f"{statistics.median(ttfb_g):.2f} / {percentile(ttfb_g, 95):.2f}",
            f"+{ttfb_overhead_p50:.2f} / +{ttfb_overhead_p95:.2f} ms",
            "p95 overhead ≤ 10 ms",
            ttfb_overhead_p95 <= 10,
        ),
        (
            f"Chunk-gap std, % of the {GAP_MS:g} ms upstream gap",
            f"{gap_spread_d:.1f}%",
            f"{gap_spread_g:.1f}%",
            f"{gap_spread_g - gap_spread_d:+.1f} pts",
            "≤ 5%",
            gap_spread_g <= 5,
        ),
    ]
    table = ["| Metric | Direct | Gateway | Overhead | Target | Met |", "|---|---|---|---|---|---|"]
    for name, d, g, o, target, met in rows:
        table.append(f"| {name} | {d} | {g} | {o} | {target} | {'' if met is None else ('yes' if met else 'no')} |")
    return table, {
        "errors": errors,
        "ttfb_direct": ttfb_d,
        "ttfb_gateway": ttfb_g,
        "gap_spread_direct_pct": gap_spread_d,
        "gap_spread_gateway_pct": gap_spread_g,
    }
