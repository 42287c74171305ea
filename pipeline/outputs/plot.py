"""loss.svg: the training and eval loss curves of a run, drawn as a small SVG by hand.

Written at the end of every run, so it must cost nothing: importing a plotting library takes longer (~0.6 s) than
everything else a run adds to the libraries' own work. Any browser, editor or GitHub shows the file.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

WIDTH, HEIGHT = 700, 400
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 40, 50  # margins around the plot area, in pixels
COLOURS = {"loss": "#1f77b4", "eval_loss": "#ff7f0e"}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def loss_svg(series: dict[str, list[tuple[float, float]]], title: str) -> str:
    """An SVG document: one polyline (or, for a few points, dots) per named series of (step, loss) points."""
    points = [p for values in series.values() for p in values]
    xs, ys = nice_ticks(0, max(x for x, _ in points)), nice_ticks(min(y for _, y in points), max(y for _, y in points))
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> str:  # pixel column of step x
        return f"{LEFT + width * (x - xs[0]) / (xs[-1] - xs[0]):.1f}"

    def sy(y: float) -> str:  # pixel row of loss y
        return f"{TOP + height * (1 - (y - ys[0]) / (ys[-1] - ys[0])):.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
             f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for x in xs:
        parts.append(f'<line x1="{sx(x)}" y1="{TOP}" x2="{sx(x)}" y2="{TOP + height}" stroke="#ddd"/>'
                     f'<text x="{sx(x)}" y="{TOP + height + 16}" text-anchor="middle">{label(x)}</text>')
    for y in ys:
        parts.append(f'<line x1="{LEFT}" y1="{sy(y)}" x2="{LEFT + width}" y2="{sy(y)}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 6}" y="{sy(y)}" text-anchor="end" dominant-baseline="middle">{label(y)}</text>')
    parts.append(f'<text x="{LEFT + width / 2}" y="{HEIGHT - 12}" text-anchor="middle">optimizer step</text>'
                 f'<text x="16" y="{TOP + height / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 16 {TOP + height / 2})">loss</text>')
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS.get(name, "#2ca02c")
        if len(values) > 3:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                         f'points="{" ".join(f"{sx(x)},{sy(y)}" for x, y in values)}"/>')
        else:  # a few eval points: dots
            parts += [f'<circle cx="{sx(x)}" cy="{sy(y)}" r="3.5" fill="{colour}"/>' for x, y in values]
        parts.append(f'<rect x="{WIDTH - RIGHT - 110}" y="{TOP + 8 + 18 * i}" width="12" height="3" fill="{colour}"/>'
                     f'<text x="{WIDTH - RIGHT - 92}" y="{TOP + 13 + 18 * i}">{name.replace("_", " ")}</text>')
    return "\n".join([*parts, "</svg>\n"])


def write_loss_svg(path: Path, series: dict[str, list[tuple[float, float]]], title: str) -> None:
    """loss.svg from the series that have points; nothing when no series has any."""
    series = {name: values for name, values in series.items() if values}
    if series:
        path.write_text(loss_svg(series, title))
