"""Prompts any router should tell apart: hard ones for the strong model, easy ones for the weak."""

from __future__ import annotations

HARD_PROMPTS = [
    "prove that the square root of 2 is irrational. Be rigorous and consider edge cases.",
    "solve step by step: find all integer solutions of 3x + 7y = 1",
    "implement in rust a program that merges overlapping intervals with lower time complexity",
]
EASY_PROMPTS = [
    "hi there, how are you today?",
    "translate 'good evening' into French",
    "thanks a lot, have a great day",
]
