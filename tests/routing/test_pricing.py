"""Costs come from litellm's price map (read as data) and agree with litellm's own calculator."""

from __future__ import annotations

from decimal import Decimal

import litellm
import pytest

from routing.pricing import token_prices, usage_cost


@pytest.mark.parametrize(
    ("model", "prompt", "completion"),
    [
        ("openai/gpt-4o-mini", 20, 8),
        ("openai/gpt-4o", 1000, 500),
        ("anthropic/claude-sonnet-4-20250514", 100, 10),
        ("gemini/gemini-2.5-pro", 300_000, 10),  # above the long-context tier
        ("gemini/gemini-2.5-pro", 1_000, 10),
    ],
)
def test_cost_matches_litellm_cost_per_token(model, prompt, completion):
    expected = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion))
    assert usage_cost(model, prompt, completion, None) == Decimal(str(round(expected, 8))).quantize(Decimal("1e-8"))


def test_deployment_price_override_wins_over_the_price_map():
    overrides = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}
    assert usage_cost("openai/gpt-4o-mini", 10, 5, overrides) == Decimal("0.02000000")


def test_unknown_private_model_costs_nothing_rather_than_failing():
    assert token_prices("hosted_vllm/my-private-llama") is None
    assert usage_cost("hosted_vllm/my-private-llama", 100, 100, None) == Decimal(0)
