"""Training data for routers: the shipped synthetic table plus the platform's own traffic and feedback."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routing.ml.models import RequestFeedback, RouterSample, SmartGroup
from routing.ml.routers import win_labels

SYNTHETIC_TABLE = Path(__file__).parent / "data" / "routerbench_synthetic.csv"
GOOD_ANSWER = 0.7  # a feedback score at or above this means the served model's answer was good enough
TOKENS_PER_CHAR = 0.25


@dataclass
class TrainingSet:
    """Prompts with win labels and weights; held-out rows also carry both models' quality and cost."""

    texts: list[str]
    labels: np.ndarray
    weights: np.ndarray
    quality_strong: np.ndarray
    quality_weak: np.ndarray
    cost_strong: np.ndarray
    cost_weak: np.ndarray
    traffic_rows: int = 0

    def split(self) -> tuple[TrainingSet, TrainingSet]:
        """Deterministic 80/20 split by prompt hash, so one prompt never lands on both sides."""
        # Rows without both qualities (traffic) cannot be scored offline, so they always train.
        held = np.array([hashlib.sha256(t.encode()).digest()[0] % 5 == 0 for t in self.texts]) & np.isfinite(
            self.quality_strong
        )
        train, test = self._take(~held), self._take(held)
        train.traffic_rows = self.traffic_rows
        return train, test

    def _take(self, mask: np.ndarray) -> TrainingSet:
        index = np.flatnonzero(mask)
        return TrainingSet(
            [self.texts[i] for i in index],
            self.labels[index],
            self.weights[index],
            self.quality_strong[index],
            self.quality_weak[index],
            self.cost_strong[index],
            self.cost_weak[index],
        )


def synthetic_table(path: Path = SYNTHETIC_TABLE) -> TrainingSet:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    column = {name: np.array([float(row[name]) for row in rows]) for name in rows[0] if name.startswith(("q", "c"))}
    return TrainingSet(
        texts=[row["prompt"] for row in rows],
        labels=win_labels(column["quality_strong"], column["quality_weak"]),
        weights=np.ones(len(rows), dtype=np.float32),
        quality_strong=column["quality_strong"],
        quality_weak=column["quality_weak"],
        cost_strong=column["cost_strong"],
        cost_weak=column["cost_weak"],
    )


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
