"""Router models: from prompt features to a predicted strong-model win rate, and back from arrays.

Every learned router is plain arrays (numpy, saved with ``allow_pickle=False``) plus a
few scalars; ``router_from_arrays`` rebuilds it without unpickling anything. A router's
``score`` is the predicted probability that the strong model answers meaningfully better
than the weak one; the group sends the request to the strong model when the score is at
least the calibrated threshold.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routing.ml.features import Embedder, embedding_backend

LEARNED_KINDS = ("knn", "logistic")
WIN_MARGIN = 0.05  # the strong model "wins" when its quality is higher by more than this
WIN_SOFTNESS = 0.05  # width of the soft boundary around the margin


def win_labels(quality_strong: np.ndarray, quality_weak: np.ndarray) -> np.ndarray:
    """Soft labels: how clearly the strong model won (0..1), 0.5 exactly at the margin.

    Soft rather than 0/1 so the kNN's win rates spread out instead of piling up at 0 and
    1, which keeps calibrated shares accurate; the classifier trains on them rounded.
    """
    gap = quality_strong - quality_weak - WIN_MARGIN
    return (1.0 / (1.0 + np.exp(-gap / WIN_SOFTNESS))).astype(np.float32)


@dataclass
class LearnedRouter:
    """A trained router: its kind, the embedding it was trained with, and its arrays."""

    kind: str
    backend: str
    arrays: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)
    embedder: Embedder | None = None

    def __post_init__(self) -> None:
        backend = embedding_backend(self.backend)
        state = {name.removeprefix("emb_"): value for name, value in self.arrays.items() if name.startswith("emb_")}
        self.embedder = backend.build(state)
        if self.kind == "knn":
            import scipy.sparse as sp  # not at module level: keeps the web process's start-up light

            self._neighbours = sp.csr_matrix(
                (self.arrays["knn_data"], self.arrays["knn_indices"], self.arrays["knn_indptr"]),
                shape=tuple(int(n) for n in self.arrays["knn_shape"]),
            )
            self._neighbours_t = self._neighbours.T.tocsr()
            self._labels = self.arrays["knn_labels"]
            self._weights = self.arrays["knn_weights"]
            self._k = int(self.params.get("k", 25))
        elif self.kind == "logistic":
            self._coef = self.arrays["lr_coef"].astype(np.float32)
            self._intercept = float(self.arrays["lr_intercept"][0])
        else:
            raise ValueError(f"unknown router kind {self.kind!r}")

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        assert self.embedder is not None
        features = self.embedder.transform(texts)
        if self.kind == "logistic":
            logits = features @ self._coef + self._intercept
            return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
        similarity = (features @ self._neighbours_t).toarray()
        return np.array([self._knn_vote(row) for row in similarity])

    def _knn_vote(self, similarity: np.ndarray) -> float:
        k = min(self._k, len(similarity))
        top = np.argpartition(-similarity, k - 1)[:k]
        weight = np.maximum(similarity[top], 1e-6) * self._weights[top]
        return float(weight @ self._labels[top] / weight.sum())

    def score(self, text: str) -> float:
        """One prompt's predicted win rate: the request-path version of ``scores``."""
        assert self.embedder is not None
        indices, values = self.embedder.one(text)
        if self.kind == "logistic":
            logit = float(values @ self._coef[indices]) + self._intercept
            return 1.0 / (1.0 + float(np.exp(-logit)))
        # Similarity to every neighbour = the columns of the transposed matrix at the prompt's features.
        similarity = values @ self._neighbours_t[indices]
        return self._knn_vote(np.asarray(similarity).ravel())

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.arrays)  # type: ignore[arg-type]  # numpy stubs type **kwds too narrowly
        return buffer.getvalue()


def router_fit(
    *,
    kind: str,
    texts: Sequence[str],
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    backend: str = "hashing",
    k: int = 25,
) -> LearnedRouter:
    """Train a router of ``kind`` on prompts and their strong-wins labels (0/1, optionally weighted)."""
    weights = np.ones(len(texts), dtype=np.float32) if weights is None else weights.astype(np.float32)
    state = embedding_backend(backend).fit(texts)
    embedder = embedding_backend(backend).build(state)
    features = embedder.transform(texts)
    arrays: dict[str, np.ndarray] = {f"emb_{name}": value for name, value in state.items()}
    params: dict[str, Any] = {}
    if kind == "knn":
        arrays.update(
            knn_data=features.data.astype(np.float32),
            knn_indices=features.indices.astype(np.int32),
            knn_indptr=features.indptr.astype(np.int64),
            knn_shape=np.array(features.shape, dtype=np.int64),
            knn_labels=labels.astype(np.float32),
            knn_weights=weights,
        )
        params["k"] = k
    elif kind == "logistic":
        from sklearn.linear_model import LogisticRegression  # training only: keep it off start-up

        classes = (labels >= 0.5).astype(int)
        if len(set(classes.tolist())) < 2:
            raise ValueError("a logistic router needs examples where each model wins")
        model = LogisticRegression(C=4.0, max_iter=1000)
        model.fit(features, classes, sample_weight=weights)
        arrays.update(lr_coef=model.coef_[0].astype(np.float32), lr_intercept=model.intercept_.astype(np.float64))
    else:
        raise ValueError(f"unknown router kind {kind!r}; expected one of {', '.join(LEARNED_KINDS)}")
    return LearnedRouter(kind=kind, backend=backend, arrays=arrays, params=params)


def router_from_bytes(blob: bytes, *, kind: str, backend: str, params: dict[str, Any]) -> LearnedRouter:
    """Rebuild a router from verified artifact bytes; object arrays (pickles) are refused by numpy."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return LearnedRouter(kind=kind, backend=backend, arrays=arrays, params=params)


def calibration_quantiles(scores: np.ndarray, points: int = 201) -> list[float]:
    """Quantiles of predicted win rates, from which a threshold for any strong share is read."""
    return [round(float(q), 6) for q in np.quantile(scores, np.linspace(0.0, 1.0, points))]


def threshold_for_share(quantiles: Sequence[float], strong_share: float) -> float:
    """RouteLLM's calibration: the (1 - share) quantile of win rates sends ``share`` of calls to strong."""
    share = min(1.0, max(0.0, strong_share))
    if share >= 1.0:
        return float("-inf")
    if share <= 0.0:
        return float("inf")
    positions = np.linspace(0.0, 1.0, len(quantiles))
    return float(np.interp(1.0 - share, positions, np.asarray(quantiles)))
