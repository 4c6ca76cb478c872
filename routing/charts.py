"""Small server-rendered SVG charts for the admin: no JavaScript, no CDN, readable offline."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, LEFT, BOTTOM, TOP, RIGHT = 560, 180, 56, 24, 12, 24


def _number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1_000:
        return f"{value / 1_000:.1f}k"
    if value and value < 0.01:
        return f"{value:.2g}"  # e.g. a spend of 6e-06 USD, rather than 0.0000
    return f"{value:.2f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"


def line_chart(
    labels: Sequence[str], series: Sequence[tuple[str, Sequence[float], str]], *, unit: str = ""
) -> SafeString:
    """A line chart of one or more series (name, values, colour) over shared x labels."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max([max(values, default=0) for _, values, _ in series] + [0]) or 1
    count = max(len(labels), 1)

    def x(index: int) -> float:
        return LEFT + (plot_w * index / (count - 1) if count > 1 else plot_w / 2)

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * value / top

    parts = [
        f'<svg class="usage-chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="10">'
    ]
    for step in range(5):
        value = top * step / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 4}" y="{y(value) + 3:.1f}" text-anchor="end" fill="#666">'
            f"{escape(_number(value))}{escape(unit)}</text>"
        )
    stride = max(1, count // 6)
    for index in range(0, len(labels), stride):
        parts.append(
            f'<text x="{x(index):.1f}" y="{HEIGHT - 6}" text-anchor="middle" fill="#666">{escape(labels[index])}</text>'
        )
    for name, values, colour in series:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        for i, v in enumerate(values):
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(name)} {escape(labels[i])}: {escape(_number(v))}{escape(unit)}</title></circle>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated text above is escaped


def gauge(used: float, limit: float) -> SafeString:
    """A horizontal bar: share of a limit in use, green → amber → red."""
    share = min(1.0, used / limit) if limit else 0.0
    colour = "#2e7d32" if share < 0.7 else "#f9a825" if share < 0.9 else "#c62828"
    return mark_safe(
        '<svg viewBox="0 0 200 14" width="200" height="14" role="img">'
        '<rect width="200" height="14" rx="3" fill="#eee"/>'
        f'<rect width="{200 * share:.1f}" height="14" rx="3" fill="{colour}"/>'
        f"<title>{share * 100:.0f}% used</title></svg>"
    )
