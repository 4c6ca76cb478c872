"""Training data for routers: the shipped synthetic table plus the platform's own traffic and feedback."""

from __future__ import annotations

import numpy as np

from routing.ml.models import RequestFeedback, RouterSample, SmartGroup
from routing.ml.table import SYNTHETIC_TABLE, TrainingSet, synthetic_table

__all__ = ["SYNTHETIC_TABLE", "TrainingSet", "synthetic_table", "traffic_rows", "training_set"]

GOOD_ANSWER = 0.7  # a feedback score at or above this means the served model's answer was good enough
TOKENS_PER_CHAR = 0.25


def traffic_rows(group: SmartGroup) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labelled prompts from this group's opted-in traffic that has feedback.

    Feedback scores only the model that served, so the label is what that tells us:
    a good weak answer means the strong model was not needed (0); a poor weak answer
    means it was (1); a poor strong answer means the weak one would not have been worse
    (0); a good strong answer suggests it was needed, but weakly (1, half weight).
    """
    samples = {
        sample.request_id: sample
        for sample in RouterSample.objects.filter(group=group)
        .exclude(prompt_text="")
        .only("request_id", "prompt_text", "served_model")
    }
    texts: list[str] = []
    labels: list[float] = []
    weights: list[float] = []
    for request_id, score in RequestFeedback.objects.filter(request_id__in=list(samples)).values_list(
        "request_id", "score"
    ):
        sample = samples[request_id]
        good = score >= GOOD_ANSWER
        if sample.served_model == group.weak_model:
            label, weight = (0.0, 1.0) if good else (1.0, 1.0)
        elif sample.served_model == group.strong_model:
            label, weight = (1.0, 0.5) if good else (0.0, 1.0)
        else:
            continue
        texts.append(sample.prompt_text)
        labels.append(label)
        weights.append(weight)
    return texts, np.array(labels, dtype=np.float32), np.array(weights, dtype=np.float32)


def training_set(group: SmartGroup, *, include_synthetic: bool = True, include_traffic: bool = True) -> TrainingSet:
    base = synthetic_table() if include_synthetic else None
    texts, labels, weights = traffic_rows(group) if include_traffic else ([], np.zeros(0), np.zeros(0))
    if base is None:
        if not texts:
            raise ValueError("no training data: the synthetic table is excluded and no traffic has feedback")
        tokens = np.array([len(t) * TOKENS_PER_CHAR + 200 for t in texts])
        # Traffic rows have one observed quality only; evaluation uses the label as the quality gap.
        return TrainingSet(
            texts,
            labels,
            weights,
            quality_strong=labels.astype(float),
            quality_weak=np.zeros(len(texts)),
            cost_strong=tokens * group.strong_price / 1e6,
            cost_weak=tokens * group.weak_price / 1e6,
            traffic_rows=len(texts),
        )
    if not texts:
        return base
    tokens = np.array([len(t) * TOKENS_PER_CHAR + 200 for t in texts])
    # Traffic rows join the training side only (their qualities are not both observed).
    return TrainingSet(
        base.texts + texts,
        np.concatenate([base.labels, labels]),
        np.concatenate([base.weights, weights]),
        np.concatenate([base.quality_strong, np.full(len(texts), np.nan)]),
        np.concatenate([base.quality_weak, np.full(len(texts), np.nan)]),
        np.concatenate([base.cost_strong, tokens * group.strong_price / 1e6]),
        np.concatenate([base.cost_weak, tokens * group.weak_price / 1e6]),
        traffic_rows=len(texts),
    )
