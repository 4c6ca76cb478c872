"""RouteLLM calibration: the threshold read from win-rate quantiles yields the target strong share."""

from __future__ import annotations

import numpy as np
import pytest

from routing.ml.data.generate import rows
from routing.ml.routers import calibration_quantiles, threshold_for_share


@pytest.fixture(scope="module")
def fresh_traffic() -> list[str]:
    """Prompts the router never saw: the same generator with another seed (2,400 prompts)."""
    return [str(row["prompt"]) for row in rows(seed=7)]


@pytest.mark.parametrize("kind", ["knn", "logistic"])
@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.8])
def test_threshold_yields_target_share_on_unseen_prompts(kind, target, trained, table_split, fresh_traffic):
    _, held = table_split
    # Calibrated on the held-out prompts, as training does; measured on new traffic.
    threshold = threshold_for_share(calibration_quantiles(trained[kind].scores(held.texts)), target)
    share = float(np.mean(trained[kind].scores(fresh_traffic) >= threshold))
    assert share == pytest.approx(target, abs=0.05), (kind, target, share)


def test_share_extremes_route_everything_one_way():
    quantiles = calibration_quantiles(np.linspace(0, 1, 100))
    assert threshold_for_share(quantiles, 1.0) == float("-inf")
    assert threshold_for_share(quantiles, 0.0) == float("inf")
    assert threshold_for_share(quantiles, 0.25) == pytest.approx(0.75, abs=0.01)
