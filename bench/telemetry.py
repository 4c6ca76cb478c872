"""Benchmark: the cost of tracing and metrics on the hot path, against the same setup with tracing off.

    .venv/bin/python bench/telemetry.py [--seconds 6] [--runs 5] [--ratio 1.0]

One fake upstream, one database, and two gateway processes started alike (``manage.py
serve``), except that one has tracing on with every request sampled (OTLP/HTTP to a local
sink that accepts and drops spans) and Prometheus multiprocess mode on. wrk runs against
them back to back, in alternating order, so both see the same machine noise; the change
reported is the median over those pairs (the per-pair values are printed too). Metrics
are always on in both; their own cost per request is measured separately, in process,
and printed too.
Needs `wrk`. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from run import free_port, overhead_header_median, setup, wrk  # noqa: E402

from llm_platform.processes import http_wait  # noqa: E402


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing."""

    spans_bytes = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        Sink.spans_bytes += len(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        return


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its live children (the span exporter), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        pids.extend(int(child) for child in children)
    total = 0.0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def metrics_cost_us(count: int = 20000) -> dict[str, float]:
    """Median cost (µs) of what the chat flow records per request, without and with multiprocess files."""
    code = f"""
import os, statistics, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")
import django; django.setup()
from observability import metrics
samples = []
for i in range({count}):
    t = time.perf_counter()
    with metrics.Active("chat.completions") as active:
        active.stream_started()
    metrics.request_observe(endpoint="chat.completions", tenant="bench", model="gpt-4o-mini", status=200,
        stream=True, latency_s=0.05, overhead_s=0.0007, ttfb_s=0.01, prompt_tokens=12, completion_tokens=20,
        cost_usd=0.00001)
    samples.append(time.perf_counter() - t)
print(statistics.median(samples) * 1e6)
"""
    out = {}
    for name, extra in (("in-memory", {}), ("multiprocess", {"PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp()})):
        env = {name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(SECRET_KEY="bench-only-secret", **extra)
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        out[name] = float(result.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=1.0, help="share of requests traced (default 1: all)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required (Debian: apt-get install wrk)")
    var = Path(tempfile.mkdtemp(prefix="bench-telemetry-"))
    env = {
        **os.environ,
        "VAR_DIR": str(var),
        "LOG_LEVEL": "WARNING",
        "REQUEST_LOG": "false",
        "DEBUG": "false",
        "SECRET_KEY": "bench-only-secret",
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
    }
    for name in list(env):
        if name.startswith("OTEL_") or name in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"):
            env.pop(name)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    up_port = free_port()
    setup(env, f"http://127.0.0.1:{up_port}/v1", quota=False)
    (var / "metrics").mkdir()
    variants = {
        "off": {},
        "on": {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}/v1/traces",
            "OTEL_TRACES_SAMPLER": "always_on" if args.ratio >= 1 else "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(args.ratio),
            "PROMETHEUS_MULTIPROC_DIR": str(var / "metrics"),
        },
    }
    ports = {name: free_port() for name in variants}
    python = sys.executable
    processes = [
        subprocess.Popen(
            [python, "manage.py", "fake_upstream", "--port", str(up_port), "--gap-ms", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    for name, extra in variants.items():
        processes.append(
            subprocess.Popen(
                [python, "manage.py", "serve", "--bind", "127.0.0.1", "--port", str(ports[name])],
                cwd=ROOT,
                env={**env, **extra},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    urls = {name: f"http://127.0.0.1:{port}/v1/chat/completions" for name, port in ports.items()}
    c1: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    c16: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    try:
        http_wait(f"http://127.0.0.1:{up_port}/healthz", processes[0], timeout=120)
        for process, port in zip(processes[1:], ports.values(), strict=True):
            http_wait(f"http://127.0.0.1:{port}/healthz", process, timeout=120)
        for url in urls.values():
            wrk(url, 16, 3)  # warm-up
        servers = dict(zip(variants, processes[1:], strict=True))
        for number in range(args.runs):
            # Back to back, in alternating order (off, on; then on, off), so both variants share
            # the machine's noise and neither always runs first; each pair is compared on its own.
            order = list(variants) if number % 2 == 0 else list(reversed(variants))
            for name in order:
                c1[name].append(wrk(urls[name], 1, args.seconds))
            for name in order:
                before = cpu_seconds(servers[name].pid)
                run = wrk(urls[name], 16, args.seconds)
                run["cpu_us"] = (cpu_seconds(servers[name].pid) - before) / max(1, run["requests"]) * 1e6
                c16[name].append(run)
        headers = {name: overhead_header_median(url) for name, url in urls.items()}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
        sink.shutdown()
        shutil.rmtree(var, ignore_errors=True)
    exported = Sink.spans_bytes
    cost = metrics_cost_us()

    def med(runs: list[dict[str, float]], field: str) -> float:
        return statistics.median(run[field] for run in runs)

    p50 = {name: med(runs, "p50_us") / 1000 for name, runs in c1.items()}
    rps = {name: med(runs, "rps") for name, runs in c16.items()}
    # The change is the median over pairs of back-to-back runs: slow drifts of the machine cancel.
    pair_added = [(on["p50_us"] - off["p50_us"]) / 1000 for off, on in zip(c1["off"], c1["on"], strict=True)]
    pair_ratio = [on["rps"] / off["rps"] for off, on in zip(c16["off"], c16["on"], strict=True)]
    added = statistics.median(pair_added)
    ratio = statistics.median(pair_ratio)
    rows = [
        (
            "Latency c=1, median (ms)",
            f"{p50['off']:.3f}",
            f"{p50['on']:.3f}",
            f"{added:+.3f} ms",
            "≤ +0.3 ms",
            added <= 0.3,
        ),
        ("Requests/s c=16, median", f"{rps['off']:.0f}", f"{rps['on']:.0f}", f"{ratio:.2f}x", "≥ 0.90x", ratio >= 0.9),
        (
            "CPU per request c=16, median (µs, server + its span exporter)",
            f"{med(c16['off'], 'cpu_us'):.0f}",
            f"{med(c16['on'], 'cpu_us'):.0f}",
            f"{med(c16['on'], 'cpu_us') - med(c16['off'], 'cpu_us'):+.0f} µs",
            "",
            None,
        ),
        ("x-gateway-overhead-ms, median", f"{headers['off']:.3f}", f"{headers['on']:.3f}", "", "", None),
        (
            "Metrics recorded per request (µs, in process)",
            f"{cost['in-memory']:.1f}",
            f"{cost['multiprocess']:.1f}",
            "",
            "",
            None,
        ),
    ]
    print(f"| Metric | Tracing off | Tracing on, {args.ratio:.0%} sampled | Change | Target | Met |")
    print("|---|---|---|---|---|---|")
    for name, off, on, change, target, met in rows:
        print(f"| {name} | {off} | {on} | {change} | {target} | {'' if met is None else ('yes' if met else 'no')} |")
    print(
        "\nChange: median over the runs' back-to-back pairs; per pair, c=1 added ms: "
        + ", ".join(f"{value:+.3f}" for value in pair_added)
        + "; c=16 ratio: "
        + ", ".join(f"{value:.2f}" for value in pair_ratio)
    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"spans exported to the sink: {exported} bytes; runs: {args.runs} x {args.seconds:g} s each")


if __name__ == "__main__":
    main()
