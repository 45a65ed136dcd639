"""Stacked bars per day, by model: the usage page's chart, as numbers for an SVG template.

The chart is laid out here (bars, axis ticks, labels, in the SVG's own units); the template
(``chart.html``) writes the elements, so every label from the logs is escaped like any other
text. No script: each bar segment has a ``<title>`` that browsers show on hover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

WIDTH, HEIGHT = 640, 240  # two fit side by side; labels stay legible when the chart is scaled down
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 12, 26
# Colour-blind safe (Okabe & Ito), then greys for the rest.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#7F7F7F")
MOST_SERIES = len(PALETTE) - 1  # the rest are summed as "other"


@dataclass
class Segment:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass
class Tick:
    position: float
    label: str


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    segments: list[Segment] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (colour, name)
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM

    @property
    def empty(self) -> bool:
        return not self.segments


def nice_step(top: float, ticks: int = 4) -> float:
    """A round step (1, 2 or 5 times a power of ten) that covers ``top`` in about ``ticks``."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def stacked(days: list[str], series: dict[str, list[float]], shown: Callable[[float], str],
            order: list[str] | None = None) -> Chart:
    """Bars for ``days`` stacked by series (``name → value per day``), the first of ``order``
    (default: the biggest series) at the bottom and in the first colour, so that charts drawn
    with the same order colour each series alike; ``shown`` formats ticks and titles."""
    chart = Chart()
    if not days:
        return chart
    ranked = [name for name in order if name in series] if order else sorted(series, key=lambda n: -sum(series[n]))
    if len(ranked) > MOST_SERIES + 1:
        rest = ranked[MOST_SERIES:]
        series = {**{n: series[n] for n in ranked[:MOST_SERIES]},
                  "other": [sum(series[n][i] for n in rest) for i in range(len(days))]}
        ranked = ranked[:MOST_SERIES] + ["other"]
    totals = [sum(series[name][i] for name in ranked) for i in range(len(days))]
    step = nice_step(max(totals))
    top = step * max(1, math.ceil(max(totals) / step))
    plot_width, plot_height = chart.right - chart.left, chart.bottom - chart.top
    slot = plot_width / len(days)
    bar = max(1.0, min(slot * 0.72, 48.0))
    colours = {name: PALETTE[i] for i, name in enumerate(ranked)}
    for i, day in enumerate(days):
        y = float(chart.bottom)
        for name in ranked:
            value = series[name][i]
            if value <= 0:
                continue
            height = value / top * plot_height
            y -= height
            chart.segments.append(Segment(round(chart.left + i * slot + (slot - bar) / 2, 2), round(y, 2),
                                          round(bar, 2), round(max(height, 0.5), 2), colours[name],
                                          f"{day} · {name}: {shown(value)}"))
    chart.y_ticks = [Tick(round(chart.bottom - k * step / top * plot_height, 2), shown(k * step))
                     for k in range(int(round(top / step)) + 1)]
    every = max(1, math.ceil(len(days) / 10))
    chart.x_ticks = [Tick(round(chart.left + (i + 0.5) * slot, 2), day[5:] if len(days) > 1 else day)
                     for i, day in enumerate(days) if i % every == 0]
    chart.legend = [(colours[name], name) for name in ranked]
    return chart
