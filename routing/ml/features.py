"""Prompt features for the router models, from pluggable embedding backends that work offline.

A backend turns prompt texts into L2-normalised sparse rows. ``fit`` returns the arrays
the backend needs later (stored in the router artifact next to the router's own), and
``build`` recreates a ready transformer from them, so an artifact carries everything its
features depend on and nothing is downloaded at run time. Register another backend (for
example a local sentence-embedding model) with ``embedding_backend_register``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

HASH_FEATURES = 2**12
LENGTH_BUCKETS = (16, 64, 256, 1024, 4096)  # characters; one indicator feature per bucket


class Embedder(Protocol):
    width: int

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix: ...

    def one(self, text: str) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class EmbeddingBackend:
    name: str
    fit: Callable[[Sequence[str]], dict[str, np.ndarray]]
    build: Callable[[dict[str, np.ndarray]], Embedder]


_BACKENDS: dict[str, EmbeddingBackend] = {}


def embedding_backend_register(backend: EmbeddingBackend) -> None:
    _BACKENDS[backend.name] = backend


def embedding_backend(name: str) -> EmbeddingBackend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown embedding backend {name!r}; registered: {', '.join(sorted(_BACKENDS))}") from None


def embedding_backend_names() -> list[str]:
    return sorted(_BACKENDS)


def _length_block(texts: Sequence[str]) -> sp.csr_matrix:
    import scipy.sparse as sp

    # Length matters to routing (long prompts tend to be harder) and hashing loses it.
    rows = np.zeros((len(texts), len(LENGTH_BUCKETS) + 1), dtype=np.float32)
    for index, text in enumerate(texts):
        rows[index, np.searchsorted(LENGTH_BUCKETS, len(text))] = 0.5
    return sp.csr_matrix(rows)


TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern


class HashingEmbedder:
    """Word unigrams and bigrams hashed into a fixed space, optionally IDF-weighted; no vocabulary.

    ``transform`` (batches: training, evaluation) uses scikit-learn's HashingVectorizer;
    ``one`` (a single prompt on the request path) computes the same features with the
    same hash function, without the vectorizer's per-call overhead.
    """

    width = HASH_FEATURES + len(LENGTH_BUCKETS) + 1

    def __init__(self, idf: np.ndarray | None = None) -> None:
        # scikit-learn is imported here, not at module level: the web process imports this
        # module at start-up and only needs scikit-learn once a smart group routes.
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.utils import murmurhash3_32

        self.vectorizer = HashingVectorizer(
            n_features=HASH_FEATURES, ngram_range=(1, 2), alternate_sign=False, norm=None, dtype=np.float32
        )
        self._hash = murmurhash3_32
        self.idf_vector = None if idf is None else idf.astype(np.float32)

    def one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        tokens = TOKEN.findall(text.lower())
        counts: dict[int, int] = {}
        for gram in (*tokens, *(f"{a} {b}" for a, b in pairwise(tokens))):
            index = abs(self._hash(gram, positive=False)) % HASH_FEATURES
            counts[index] = counts.get(index, 0) + 1
        indices = np.fromiter(counts, dtype=np.int32, count=len(counts))
        values = np.log1p(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
        if self.idf_vector is not None:
            values *= self.idf_vector[indices]
        norm = float(np.sqrt(values @ values))
        if norm:
            values /= norm
        bucket = HASH_FEATURES + int(np.searchsorted(LENGTH_BUCKETS, len(text)))
        return np.append(indices, bucket), np.append(values, np.float32(0.5))

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        import scipy.sparse as sp
        from sklearn.preprocessing import normalize

        counts = self.vectorizer.transform(texts)
        counts.data = np.log1p(counts.data)
        if self.idf_vector is not None:
            counts = counts @ sp.diags(self.idf_vector)
        words = normalize(counts, copy=False)
        return sp.hstack([words, _length_block(texts)], format="csr", dtype=np.float32)


def _hashing_fit(texts: Sequence[str]) -> dict[str, np.ndarray]:
    return {}


def _tfidf_fit(texts: Sequence[str]) -> dict[str, np.ndarray]:
    counts = HashingEmbedder().vectorizer.transform(texts)
    document_frequency = np.bincount(counts.indices, minlength=HASH_FEATURES)
    idf = np.log((1 + len(texts)) / (1 + document_frequency)) + 1.0
    return {"idf": idf.astype(np.float32)}


def _build(state: dict[str, Any]) -> Embedder:
    return HashingEmbedder(state.get("idf"))


embedding_backend_register(EmbeddingBackend("hashing", _hashing_fit, _build))
embedding_backend_register(EmbeddingBackend("tfidf", _tfidf_fit, _build))


def prompt_text(payload: dict[str, Any], *, limit: int = 8000) -> str:
    """The text a router looks at: system and user message content (text parts), newest last."""
    parts: list[str] = []
    for message in payload.get("messages") or ():
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user"):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                part["text"]
                for part in content
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            )
    text = "\n".join(parts)
    # The end of a long conversation says most about what is being asked now.
    return text[-limit:]
