"""The valset score as kept rules are added, as an inline SVG (no script, no external asset).

Step ``k`` of the trajectory is the score with the first ``k`` kept rules (``k = 0``: the baseline). Each step
k >= 1 draws the rule's gain as a bar from the previous score, and its paired 95% confidence interval as an error
bar around the top of that bar: previous score + [low, high].
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from html import escape
from typing import Any

from ..records import TrajectoryStep
from ..text import clip_text

WIDTH, HEIGHT = 1000, 360
LEFT, RIGHT, TOP, BOTTOM = 60, 70, 28, 52
BAR = 16  # width of a gain bar, in pixels


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ci(step: TrajectoryStep) -> tuple[float, float] | None:
    ci = step.ci
    if not ci or len(ci) != 2 or not all(_finite(v) for v in ci):
        return None
    return float(ci[0]), float(ci[1])


def _limits(steps: Sequence[TrajectoryStep]) -> tuple[float, float] | None:
    """(0, 1) when every score lies in [0, 1] (a 0-1 metric, as far as one can tell): whiskers stop there, since
    no score can pass them; else None."""
    return (0.0, 1.0) if all(0.0 <= s.score <= 1.0 for s in steps) else None


def _clamp(value: float, limits: tuple[float, float] | None) -> float:
    return value if limits is None else min(max(value, limits[0]), limits[1])


def _domain(steps: Sequence[TrajectoryStep]) -> tuple[float, float]:
    limits = _limits(steps)
    values = [s.score for s in steps]
    for prev, step in itertools.pairwise(steps):
        if (ci := _ci(step)) is not None:
            values += [_clamp(prev.score + ci[0], limits), _clamp(prev.score + ci[1], limits)]
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, 0.05)
    low, high = _clamp(low - pad, limits), _clamp(high + pad, limits)
    room = (high - low) * 0.03  # so a point on a limit is not drawn on the frame
    return low - room, high + room


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def _decimals(ticks: Sequence[float]) -> int:
    """Decimals that tell ticks apart (steps are 1, 2 or 5 times a power of ten)."""
    if len(ticks) < 2:
        return 2
    return max(0, -math.floor(math.log10(ticks[1] - ticks[0]) + 1e-9))


class _Axes:
    def __init__(self, steps: Sequence[TrajectoryStep]) -> None:
        self.n = len(steps)
        self.low, self.high = _domain(steps)
        self.limits = _limits(steps)

    def x(self, k: int) -> float:
        inner = WIDTH - LEFT - RIGHT
        return LEFT + inner / 2 if self.n == 1 else LEFT + 30 + k * (inner - 60) / (self.n - 1)

    def y(self, value: float) -> float:
        inner = HEIGHT - TOP - BOTTOM
        return TOP + inner * (self.high - value) / (self.high - self.low)


def _frame(axes: _Axes, baseline: float) -> list[str]:
    out = []
    ticks = _ticks(axes.low, axes.high)
    places = _decimals(ticks)
    for tick in ticks:
        y = axes.y(tick)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{tick:.{places}f}</text>')
    y0 = axes.y(baseline)
    out.append(f'<line class="baseline" x1="{LEFT}" y1="{y0:.1f}" x2="{WIDTH - RIGHT}" y2="{y0:.1f}"/>'
               f'<text class="note" x="{WIDTH - RIGHT - 4}" y="{y0 - 6:.1f}" text-anchor="end">'
               f'baseline {baseline:.3f}</text>')
    for k in range(axes.n):
        label = "baseline" if k == 0 else f"+R{k}"
        out.append(f'<text class="tick" x="{axes.x(k):.1f}" y="{HEIGHT - BOTTOM + 20}" text-anchor="middle">'
                   f'{label}</text>')
    out.append(f'<text class="axis" x="{(LEFT + WIDTH - RIGHT) / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
               'kept rules, in the order they were added</text>'
               f'<text class="axis" x="14" y="{(TOP + HEIGHT - BOTTOM) / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2:.1f})">valset score</text>')
    return out


def _step(axes: _Axes, k: int, prev: TrajectoryStep, step: TrajectoryStep) -> list[str]:
    x, before, after = axes.x(k), prev.score, step.score
    top, bottom = sorted((axes.y(before), axes.y(after)))
    gain = step.gain
    shown = gain if gain is not None and _finite(gain) else after - before
    title = escape(f"R{k}: {clip_text(step.text or '', 200)}; score {after:.3f}; gain {shown:+.3f}")
    out = [f'<rect class="gain" x="{x - BAR / 2:.1f}" y="{top:.1f}" width="{BAR}" height="{max(bottom - top, 1):.1f}">'
           f'<title>{title}</title></rect>']
    if (ci := _ci(step)) is not None:
        ends = [before + ci[0], before + ci[1]]
        shown_ends = [_clamp(v, axes.limits) for v in ends]
        y_lo, y_hi = (axes.y(v) for v in shown_ends)
        caps = "".join(f'<line x1="{x - 6:.1f}" y1="{y:.1f}" x2="{x + 6:.1f}" y2="{y:.1f}"/>'
                       for y, end, shown_end in zip((y_lo, y_hi), ends, shown_ends, strict=True) if end == shown_end)
        what = f"R{k}: 95% CI of the gain {ci[0]:+.3f} to {ci[1]:+.3f}"
        if shown_ends != ends:
            what += " (drawn up to the score's range; an open end goes beyond it)"
        out.append(f'<g class="ci"><line x1="{x:.1f}" y1="{y_lo:.1f}" x2="{x:.1f}" y2="{y_hi:.1f}"/>{caps}'
                   f"<title>{escape(what)}</title></g>")
    out.append(f'<text class="label" x="{x + BAR / 2 + 4:.1f}" y="{(top + bottom) / 2 + 4:.1f}">{shown:+.3f}</text>')
    return out


def trajectory_svg(trajectory: Sequence[TrajectoryStep]) -> str:
    """The plot, or "" when there is nothing to plot (no measured score, or no kept rule after the baseline)."""
    steps = [s for s in trajectory if _finite(s.score)]
    if len(steps) < 2:
        return ""
    axes = _Axes(steps)
    parts = _frame(axes, steps[0].score)
    for k in range(1, len(steps)):
        parts += _step(axes, k, steps[k - 1], steps[k])
    points = " ".join(f"{axes.x(k):.1f},{axes.y(s.score):.1f}" for k, s in enumerate(steps))
    parts.append(f'<polyline class="path" points="{points}"/>')
    for k, step in enumerate(steps):
        score = step.score
        parts.append(f'<circle class="point" cx="{axes.x(k):.1f}" cy="{axes.y(score):.1f}" r="4.5">'
                     f"<title>{k} rule(s): valset score {score:.3f}</title></circle>")
    label = (f"valset score from {steps[0].score:.3f} to {steps[-1].score:.3f} over {len(steps) - 1} "
             "kept rule(s)")
    return (f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
            f'aria-label="{escape(label)}">' + "".join(parts) + "</svg>")
