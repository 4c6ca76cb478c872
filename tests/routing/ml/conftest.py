"""Fixtures for ML routing: smart groups, routers trained once on the shipped synthetic table."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from routing.ml.models import SmartGroup
from routing.ml.routers import LearnedRouter, router_fit
from routing.ml.selectors import smart_cache
from routing.ml.services import smart_group_save
from routing.ml.table import TrainingSet, synthetic_table


@pytest.fixture(scope="session")
def table_split() -> tuple[TrainingSet, TrainingSet]:
    return synthetic_table().split()


@pytest.fixture(scope="session")
def trained(table_split: tuple[TrainingSet, TrainingSet]) -> dict[str, LearnedRouter]:
    train, _ = table_split
    return {
        kind: router_fit(kind=kind, texts=train.texts, labels=train.labels, weights=train.weights)
        for kind in ("knn", "logistic")
    }


@pytest.fixture(autouse=True)
def fresh_smart_cache() -> Iterator[None]:
    smart_cache.clear()
    yield
    smart_cache.clear()


@pytest.fixture
def group_factory(transactional_db: None) -> Callable[..., SmartGroup]:
    def make(name: str = "auto", **fields: object) -> SmartGroup:
        fields.setdefault("strong_model", "strong-model")
        fields.setdefault("weak_model", "weak-model")
        return smart_group_save(group=SmartGroup(name=name, **fields), actor="test")

    return make
