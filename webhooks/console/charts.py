"""Charts as plain SVG geometry, drawn by the templates (no script, nothing inline to escape)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH, HEIGHT, PAD = 600, 160, 4


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str
    title: str


@dataclass
class Chart:
    title: str
    peak: str
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    # Polylines as (kind, "x,y x,y ..."), one per series, and a dot on each of their points.
    lines: list[tuple[str, str]] = field(default_factory=list)
    dots: list[Bar] = field(default_factory=list)
    labels: tuple[str, str] = ("", "")


def stacked_bars(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], unit: str
) -> Chart:
    """One bar per label, its series stacked from the bottom (kinds name the CSS classes)."""
    n = max(1, len(labels))
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    slot = WIDTH / n
    chart = Chart(title, f"{max(totals, default=0):g} {unit}", labels=_ends(labels))
    for i, label in enumerate(labels):
        base: float = HEIGHT
        for kind, values in series:
            h = (HEIGHT - PAD) * values[i] / top
            if h <= 0:
                continue
            base -= h
            chart.bars.append(
                Bar(
                    round(i * slot + 1, 1),
                    round(base, 1),
                    round(max(1.0, slot - 2), 1),
                    round(h, 1),
                    kind,
                    f"{label}: {values[i]:g} {kind} {unit}",
                )
            )
    return chart


def lines(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    unit: str,
) -> Chart:
    """One polyline per series; gaps (None) are skipped."""
    n = max(1, len(labels))
    top = max((v for _, values in series for v in values if v is not None), default=0) or 1
    slot = WIDTH / n
    chart = Chart(title, f"{top:g} {unit}" if top != 1 else f"— {unit}", labels=_ends(labels))
    for kind, values in series:
        points = []
        for i, v in enumerate(values):
            if v is None:
                continue
            x, y = round(i * slot + slot / 2, 1), round(HEIGHT - (HEIGHT - PAD) * v / top, 1)
            points.append(f"{x},{y}")
            chart.dots.append(Bar(x, y, 0, 0, kind, f"{labels[i]}: {v:g} {unit} {kind}"))
        if points:
            chart.lines.append((kind, " ".join(points)))
    return chart


def _ends(labels: Sequence[str]) -> tuple[str, str]:
    return (labels[0], labels[-1]) if labels else ("", "")
