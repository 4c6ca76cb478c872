"""The training table: prompts, win labels and both models' quality and cost (no Django needed)."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routing.ml.routers import win_labels

SYNTHETIC_TABLE = Path(__file__).parent / "data" / "routerbench_synthetic.csv"


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
    column = {
        name: np.array([float(row[name]) for row in rows]) for name in rows[0] if name.startswith(("quality_", "cost_"))
    }
    return TrainingSet(
        texts=[row["prompt"] for row in rows],
        labels=win_labels(column["quality_strong"], column["quality_weak"]),
        weights=np.ones(len(rows), dtype=np.float32),
        quality_strong=column["quality_strong"],
        quality_weak=column["quality_weak"],
        cost_strong=column["cost_strong"],
        cost_weak=column["cost_weak"],
    )
