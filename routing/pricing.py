"""Token prices from litellm's bundled price map, read as data (importing litellm costs seconds)."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

PRICE_MAP_FILE = "model_prices_and_context_window_backup.json"
_TIER = re.compile(r"^input_cost_per_token_above_(\d+)k_tokens$")


@dataclass(frozen=True)
class Prices:
    input: float
    output: float
    # (threshold in prompt tokens, input, output): above the threshold the whole request
    # is priced at the tier's rates, as providers with long-context pricing do.
    tiers: tuple[tuple[int, float, float], ...] = ()

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        rate_in, rate_out = self.input, self.output
        for threshold, tier_in, tier_out in self.tiers:
            if prompt_tokens > threshold:
                rate_in, rate_out = tier_in, tier_out
        return prompt_tokens * rate_in + completion_tokens * rate_out


@lru_cache(maxsize=1)
def _price_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / PRICE_MAP_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _prices_from(entry: dict[str, Any]) -> Prices | None:
    if "input_cost_per_token" not in entry and "output_cost_per_token" not in entry:
        return None
    tiers = []
    for key, value in entry.items():
        match = _TIER.match(key)
        if match:
            threshold = int(match.group(1)) * 1000
            out = entry.get(
                f"output_cost_per_token_above_{match.group(1)}k_tokens", entry.get("output_cost_per_token", 0)
            )
            tiers.append((threshold, float(value), float(out or 0)))
    return Prices(
        float(entry.get("input_cost_per_token") or 0),
        float(entry.get("output_cost_per_token") or 0),
        tuple(sorted(tiers)),
    )


@lru_cache(maxsize=4096)
def token_prices(model: str) -> Prices | None:
    """Prices for a litellm model string (``openai/gpt-4o-mini``), or None if the map lacks it."""
    prices = _price_map()
    for name in (model, model.split("/", 1)[1] if "/" in model else None):
        entry = prices.get(name) if name else None
        if isinstance(entry, dict):
            found = _prices_from(entry)
            if found is not None:
                return found
    return None


def usage_cost(model: str, prompt_tokens: int, completion_tokens: int, overrides: dict[str, Any] | None) -> Decimal:
    """Cost in USD: the deployment's own per-token prices when set, else litellm's price map."""
    if not prompt_tokens and not completion_tokens:
        return Decimal(0)
    overrides = overrides or {}
    if "input_cost_per_token" in overrides or "output_cost_per_token" in overrides:
        prices: Prices | None = Prices(
            float(overrides.get("input_cost_per_token") or 0), float(overrides.get("output_cost_per_token") or 0)
        )
    else:
        prices = token_prices(model)
    if prices is None:
        return Decimal(0)
    return Decimal(str(round(prices.cost(prompt_tokens, completion_tokens), 10))).quantize(Decimal("1e-8"))
