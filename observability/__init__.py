"""Traces, metrics and structured request logs; the bottom layer, like ``audit``: it knows no domain.

Every app may import it. ``telemetry`` and ``metrics`` cost next to nothing when switched
off, so the hot path calls them unconditionally.
"""
