"""Benchmark: ML routing decision latency per router kind, and the offline quality/cost table.

    .venv/bin/python bench/ml_route.py [--decisions 2000]

Trains each learned router on the shipped synthetic table (80 % split), then measures in
the same run:

- the decision in its worker thread (featurise, score, threshold, record) per router kind,
  next to the rules router as the in-run baseline;
- ``smart_route`` as the event loop sees it (thread hop included) for a smart group, and
  for an ordinary model name (the cost every other request pays);
- the offline evaluation on the held-out 20 %: quality recovered (RouteLLM's PGR) and cost
  saved against always-strong, at several strong-call shares, plus APGR.

Prints Markdown tables; needs no database (the smart-group cache is filled in memory).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")
os.environ.setdefault("ML_ROUTER_CACHE_TTL", "1000000")

import django  # noqa: E402

django.setup()

from routing.ml import decide as decide_module  # noqa: E402
from routing.ml.decide import decide_sync  # noqa: E402
from routing.ml.evaluation import router_evaluate  # noqa: E402
from routing.ml.routers import calibration_quantiles, router_fit  # noqa: E402
from routing.ml.selectors import ArtifactRef, GroupState, Snapshot, smart_cache  # noqa: E402
from routing.ml.table import synthetic_table  # noqa: E402
from routing.smart import smart_route  # noqa: E402


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def group_state(kind: str, artifact: ArtifactRef | None) -> GroupState:
    return GroupState(
        id=1,
        name=f"auto-{kind}",
        strong_model="strong-model",
        weak_model="weak-model",
        strong_price=10.0,
        weak_price=0.6,
        kind=kind,
        strong_share=0.5,
        rules={"strong_keywords": ["prove", "implement"], "strong_if_chars_over": 400},
        mode="active",
        active=artifact,
        shadow=None,
        ab=None,
        ab_percent=0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    args = parser.parse_args()

    train, held = synthetic_table().split()
    prompts = (held.texts * (args.decisions // len(held.texts) + 1))[: args.decisions]
    groups: dict[str, GroupState] = {"rules": group_state("rules", None)}
    evaluations = {}
    routers = {}
    for artifact_id, (kind, backend) in enumerate(
        [("knn", "hashing"), ("logistic", "hashing"), ("knn", "tfidf"), ("logistic", "tfidf")], start=1
    ):
        name = f"{kind}/{backend}"
        started = time.perf_counter()
        router = router_fit(kind=kind, texts=train.texts, labels=train.labels, backend=backend)
        train_s = time.perf_counter() - started
        scores = router.scores(held.texts)
        routers[artifact_id] = router
        ref = ArtifactRef(artifact_id, f"{kind}@{artifact_id}", kind, tuple(calibration_quantiles(scores)))
        groups[name] = group_state(kind, ref)
        evaluation = router_evaluate(scores, held.quality_strong, held.quality_weak, held.cost_strong, held.cost_weak)
        evaluations[name] = (evaluation, train_s, len(router.to_bytes()))
    gaps = held.quality_strong - held.quality_weak
    evaluations["oracle (knows both qualities)"] = (
        router_evaluate(gaps, held.quality_strong, held.quality_weak, held.cost_strong, held.cost_weak),
        0.0,
        0,
    )

    # Samples are queued in memory on the hot path and written by a background thread;
    # keep them in a list here (same hot-path cost) so the bench needs no database.
    sink: list[object] = []
    decide_module.sample_record = sink.append
    # Fill the per-process cache in memory, as a loaded, verified artifact would be.
    smart_cache._routers = routers
    smart_cache.snapshot = Snapshot({g.name: g for g in groups.values()}, frozenset())
    smart_cache._loaded_at = time.monotonic()

    print(f"ML routing decision latency, {args.decisions} decisions per row (ms)\n")
    print("| router | decision in thread: median | p95 | smart_route on the loop: median | p95 | vs rules (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = {}
    for name, group in groups.items():
        for prompt in prompts[:50]:  # warm-up
            decide_sync(group, prompt, tenant_id=1, request_id="req_warm", max_cost=None, max_tokens=256)
        thread = []
        for index, prompt in enumerate(prompts):
            started = time.perf_counter()
            decide_sync(group, prompt, tenant_id=1, request_id=f"req_{index}", max_cost=None, max_tokens=256)
            thread.append((time.perf_counter() - started) * 1000)

        async def loop_timings(group_name: str = group.name) -> list[float]:
            out = []
            for index, prompt in enumerate(prompts):
                payload = {"model": group_name, "messages": [{"role": "user", "content": prompt}]}
                started = time.perf_counter()
                await smart_route(model=group_name, payload=payload, tenant_id=1, request_id=f"req_{index}")
                out.append((time.perf_counter() - started) * 1000)
            return out

        on_loop = asyncio.run(loop_timings())
        rows[name] = (
            statistics.median(thread),
            percentile(thread, 0.95),
            statistics.median(on_loop),
            percentile(on_loop, 0.95),
        )
    base = rows["rules"][2]
    for name, (median, p95, loop_median, loop_p95) in rows.items():
        print(f"| {name} | {median:.3f} | {p95:.3f} | {loop_median:.3f} | {loop_p95:.3f} | {loop_median / base:.2f}x |")

    async def plain() -> list[float]:
        out = []
        for index in range(args.decisions):
            started = time.perf_counter()
            await smart_route(model="gpt-4o-mini", payload={}, tenant_id=1, request_id=f"req_{index}")
            out.append((time.perf_counter() - started) * 1000)
        return out

    ordinary = asyncio.run(plain())
    print(
        f"| ordinary model name (not smart) | - | - | {statistics.median(ordinary):.4f} | "
        f"{percentile(ordinary, 0.95):.4f} | - |"
    )

    print(f"\nOffline evaluation on {len(held.texts)} held-out prompts of the synthetic table")
    always_strong = next(iter(evaluations.values()))[0]["baselines"]["always_strong"]
    always_weak = next(iter(evaluations.values()))[0]["baselines"]["always_weak"]
    print(
        f"(always-strong: quality {always_strong['quality']:.3f}, cost ${always_strong['cost']:.3f}; "
        f"always-weak: quality {always_weak['quality']:.3f}, cost ${always_weak['cost']:.3f}; "
        "a random router's APGR is about 0.5)\n"
    )
    print(
        "| router | APGR | quality recovered / cost saved at 20 % strong | at 50 % | at 80 % | train s | artifact KB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (evaluation, train_s, size) in evaluations.items():
        cells = []
        for share in (0.2, 0.5, 0.8):
            point = next(p for p in evaluation["curve"] if p["target_share"] == share)
            cells.append(f"{point['quality_recovered']:.0%} / {point['cost_saved']:.0%}")
        print(f"| {name} | {evaluation['apgr']:.3f} | {' | '.join(cells)} | {train_s:.2f} | {size / 1024:.0f} |")


if __name__ == "__main__":
    main()
