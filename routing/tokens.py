"""Token estimates: what a request may use (reserved before the call) and its usage when the provider reports none."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from routing.parsing import COMPLETIONS, EMBEDDINGS, Endpoint, is_token_array, prompt_of
from routing.upstream import Usage

CHARS_PER_TOKEN = 4
CHAT_OUTPUT_LIMITS = ("max_completion_tokens", "max_tokens")


def text_tokens(size: int) -> int:
    """Tokens in ``size`` bytes or characters of text, at about four a token (never fewer than one)."""
    return max(1, size // CHARS_PER_TOKEN)


def output_tokens_limit(payload: dict[str, Any], names: tuple[str, ...] = CHAT_OUTPUT_LIMITS) -> int:
    """Output tokens one completion may generate: the first limit the request sets, else the default."""
    for name in names:
        limit = payload.get(name)
        if limit is not None:
            return int(limit)
    return int(settings.QUOTA_DEFAULT_OUTPUT_TOKENS)


def reservation_estimate(endpoint: Endpoint, payload: dict[str, Any], body_size: int) -> tuple[int, int]:
    """Input and output tokens to reserve before the call: never less than the request can use.

    Output is the per-completion limit times the completions generated: ``n`` for chat,
    ``max(n, best_of)`` for each prompt of a completion (an array of prompts is answered
    prompt by prompt). Embeddings generate no output. Input is ~4 bytes of body a token,
    except token arrays, which count exactly (``[1,2]`` is two tokens in five bytes).
    """
    tokens_in = text_tokens(body_size)
    if endpoint is EMBEDDINGS:
        return max(tokens_in, _token_array_tokens(payload.get("input"))), 0
    if endpoint is COMPLETIONS:
        prompt = payload.get("prompt")
        tokens_in = max(tokens_in, _token_array_tokens(prompt))
        prompts = len(prompt) if isinstance(prompt, list) and prompt and not is_token_array(prompt) else 1
        per_completion = output_tokens_limit(payload, ("max_tokens",))
        completions = prompts * max(payload.get("n") or 1, payload.get("best_of") or 1)
    else:
        per_completion = output_tokens_limit(payload)
        completions = payload.get("n") or 1
    return tokens_in, per_completion * completions


def _token_array_tokens(value: Any) -> int:
    """Tokens in a token array or an array of them; 0 for text (the body size estimates that)."""
    if is_token_array(value):
        return len(value)
    if isinstance(value, list) and value and all(map(is_token_array, value)):
        return sum(map(len, value))
    return 0


def usage_estimate(payload: dict[str, Any], completion_tokens: int) -> Usage:
    """A rough count when the upstream sends none: the prompt at ~4 characters a token, the completion as given."""
    prompt = text_tokens(len(json.dumps(prompt_of(payload))))
    return Usage(prompt, completion_tokens, prompt + completion_tokens, estimated=True)
