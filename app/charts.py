"""Line and scatter charts as inline SVG, drawn on the server: no JavaScript and no chart library.

Every point carries an SVG <title> with its value, which browsers show on hover and screen
readers can reach. Colours come from the stylesheet (classes series-0 ... series-9), so the
charts follow the page's light or dark scheme.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from app import formatting
from app.models import JobStatus, SweepTrialPublic
from app.recipes import TUTORIAL, Recipe

WIDTH, HEIGHT = 640, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 12, 36
PLOT_WIDTH = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
PLOT_HEIGHT = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
# More points than this are averaged in buckets: a 500-epoch run logs tens of thousands of
# train-loss points, far more than a chart is pixels wide.
MAX_POINTS = 300
# Past this many points per line, markers would blur into a band: they stay as hover targets
# but are only drawn under the pointer (see .series.dense in the stylesheet).
DENSE_POINTS = 60


# One line on a chart: a label for the legend and hover text, and its points in x order: (x, y),
# or (x, y, count, last x) for the mean of `count` values from x to last x (a bucket already
# averaged by the database). `kind` is a class the stylesheet draws it by ("pruned": dashed, its
# last point filled, where its sweep stopped it).
@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float | None] | tuple[float, float, int, float]]
    kind: str = ""


def nice_ticks(low: float, high: float, count: int = 5, min_step: float = 0.0) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten, at least min_step apart) covering [low, high]."""
    if high <= low:
        high = low + 1
    raw_step = max((high - low) / max(count - 1, 1), min_step)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value < high + step * 0.5:
        ticks.append(round(value, 12))
        value += step
    return ticks


Bucket = tuple[float, float, int, float]


def _finite(points: Sequence[tuple]) -> list[Bucket]:
    buckets = []
    for point in points:
        x, y = point[0], point[1]
        if y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        count, last_x = (point[2], point[3]) if len(point) == 4 else (1, x)
        buckets.append((float(x), float(y), int(count), float(last_x)))
    return buckets


def _bucket(points: list[Bucket], limit: int) -> list[Bucket]:
    """Merge consecutive points into at most `limit`, each the mean of the values it holds."""
    if len(points) <= limit:
        return points
    size = math.ceil(len(points) / limit)
    merged = []
    for start in range(0, len(points), size):
        chunk = points[start:start + size]
        count = sum(c for _, _, c, _ in chunk)
        merged.append((chunk[0][0], sum(y * c for _, y, c, _ in chunk) / count, count, chunk[-1][3]))
    return merged


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"


# A tick on an axis: its value and its label.
Tick = tuple[float, str]


@dataclass(frozen=True)
class _Frame:
    """The values a plot spans; sx and sy place a value in the SVG."""

    x_low: float
    x_high: float
    y_low: float
    y_high: float

    def sx(self, x: float) -> str:
        return _number(MARGIN_LEFT + (x - self.x_low) / (self.x_high - self.x_low) * PLOT_WIDTH)

    def sy(self, y: float) -> str:
        return _number(MARGIN_TOP + (self.y_high - y) / (self.y_high - self.y_low) * PLOT_HEIGHT)


def _y_axis(y_low: float, y_high: float) -> tuple[float, float, list[Tick]]:
    """The y range widened to round ticks (a flat line gets one unit either side), and the ticks."""
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 1, y_high + 1
    ticks = nice_ticks(y_low, y_high)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    return min(y_low, ticks[0]), max(y_high, ticks[-1]), [(tick, _tick_label(tick, step)) for tick in ticks]


def _linear_ticks(low: float, high: float, min_step: float = 0.0) -> list[Tick]:
    ticks = nice_ticks(low, high, min_step=min_step) if high > low else [low]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    return [(tick, _tick_label(tick, step)) for tick in ticks]


def _frame_parts(chart_id: str, title: str, description: str, frame: _Frame, y_ticks: list[Tick], x_ticks: list[Tick], x_label: str) -> list[str]:
    """The SVG's start: its title and description, the grid with its ticks' labels, the x axis's label."""
    parts = [
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>',
        '<g class="grid">',
    ]
    for tick, label in y_ticks:
        if frame.y_low <= tick <= frame.y_high:
            y = frame.sy(tick)
            parts.append(
                f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y}" y2="{y}"/>'
                f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{y}" text-anchor="end" dominant-baseline="middle">{escape(label)}</text>'
            )
    for tick, label in x_ticks:
        if frame.x_low <= tick <= frame.x_high:
            parts.append(
                f'<text class="tick" x="{frame.sx(tick)}" y="{HEIGHT - MARGIN_BOTTOM + 16}" text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'</g><text class="axis-label" x="{MARGIN_LEFT + PLOT_WIDTH / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    return parts


def _empty(chart_id: str) -> Markup:
    return Markup(f'<p class="muted chart-empty" id="{escape(chart_id)}">No points yet.</p>')


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    value_format: Callable[[float], str],
    max_points: int = MAX_POINTS,
) -> Markup:
    """An SVG line chart with one coloured line per series (ten colours, then they repeat)."""
    finite = [_finite(s.points) for s in series]
    drawn = [_bucket(points, max_points) for points in finite]
    every = [point for points in finite for point in points]
    if not every:
        return _empty(chart_id)

    x_low, x_high = min(x for x, _, _, _ in every), max(last_x for _, _, _, last_x in every)
    y_low, y_high, y_ticks = _y_axis(min(y for _, y, _, _ in every), max(y for _, y, _, _ in every))
    # x is always a count (epoch, batch): ticks between two integers would be meaningless.
    x_ticks = _linear_ticks(x_low, x_high, min_step=1)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    frame = _Frame(x_low, x_high, y_low, y_high)

    chart_id = str(escape(chart_id))
    last_values = "; ".join(
        f"{s.label}: {value_format(points[-1][1])} at {x_label} {points[-1][3]:g}" for s, points in zip(series, finite) if points
    )
    parts = _frame_parts(chart_id, title, f"Last values: {last_values}", frame, y_ticks, x_ticks, x_label)
    for index, (line, points) in enumerate(zip(series, drawn)):
        if not points:
            continue
        label = escape(line.label)
        # A bucket's point sits in the middle of the steps it averages.
        where_points = [(frame.sx((x + last_x) / 2), frame.sy(y), x, y, count, last_x) for x, y, count, last_x in points]
        path = "M" + " L".join(f"{cx},{cy}" for cx, cy, *_ in where_points)
        dense = " dense" if len(points) > DENSE_POINTS else ""
        kind = f" {escape(line.kind)}" if line.kind else ""
        parts.append(f'<g class="series series-{index % 10}{kind}{dense}"><path d="{path}"/>')
        prefix = f"{label}, " if len(series) > 1 else ""
        for cx, cy, x, y, count, last_x in where_points:
            where = f"{x_label} {x:g}" if count == 1 else f"{x_label} {x:g}–{last_x:g} (mean of {count})"
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="3"><title>{prefix}{where}: {escape(value_format(y))}</title></circle>')
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


# One dot on a scatter chart: where it is, its hover text, and a class the stylesheet draws it by
# ("pruned": hollow, as its value is that of the epoch it was stopped at; "best": larger).
@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    label: str
    kind: str = ""


def _padded(low: float, high: float, empty_pad: float) -> tuple[float, float]:
    """A range with room at both ends, so no dot sits on the frame."""
    pad = (high - low) * 0.05 if high > low else empty_pad
    return low - pad, high + pad


def _log_ticks(low: float, high: float) -> list[Tick]:
    """Ticks for a range of log10 values: 1, 2 and 5 times powers of ten, or only the powers when
    they are enough; evenly spaced values when the range is within one of them."""
    decades = range(math.floor(low), math.ceil(high) + 1)
    inside = [m * 10.0**k for k in decades for m in (1, 2, 5) if low <= math.log10(m * 10.0**k) <= high]
    powers = [10.0**k for k in decades if low <= k <= high]
    chosen = powers if len(powers) >= 3 else inside
    if len(chosen) < 2:
        chosen = [value for value in nice_ticks(10**low, 10**high, count=4) if value > 0]
    return [(math.log10(value), f"{value:g}") for value in chosen]


def scatter_chart(
    chart_id: str,
    title: str,
    dots: Sequence[Dot],
    *,
    x_label: str,
    value_format: Callable[[float], str],
    log_x: bool = False,
    categories: Sequence[str] | None = None,
) -> Markup:
    """An SVG scatter chart. x is a number (on a log scale with log_x), or with `categories` the
    index of its category, one column each."""
    usable = [dot for dot in dots if math.isfinite(dot.y) and math.isfinite(dot.x) and (dot.x > 0 or not log_x)]
    if not usable:
        return _empty(chart_id)
    y_low, y_high, y_ticks = _y_axis(min(dot.y for dot in usable), max(dot.y for dot in usable))
    place = math.log10 if log_x else float
    if categories is not None:
        x_low, x_high = -0.5, len(categories) - 0.5
        x_ticks = [(float(index), name) for index, name in enumerate(categories)]
    else:
        x_low, x_high = _padded(min(place(dot.x) for dot in usable), max(place(dot.x) for dot in usable), 0.5 if log_x else 1.0)
        x_ticks = _log_ticks(x_low, x_high) if log_x else _linear_ticks(x_low, x_high)
    frame = _Frame(x_low, x_high, y_low, y_high)

    chart_id = str(escape(chart_id))
    highest, lowest = max(usable, key=lambda dot: dot.y), min(usable, key=lambda dot: dot.y)
    description = f"{len(usable)} points. Highest: {highest.label}. Lowest: {lowest.label}."
    parts = _frame_parts(chart_id, title, description, frame, y_ticks, x_ticks, x_label)
    parts.append('<g class="dots">')
    for dot in usable:
        kind = f" {escape(dot.kind)}" if dot.kind else ""
        parts.append(
            f'<circle class="dot{kind}" cx="{frame.sx(place(dot.x))}" cy="{frame.sy(dot.y)}" r="4">'
            f"<title>{escape(dot.label)}</title></circle>"
        )
    parts.append("</g></svg>")
    return Markup("".join(parts))


# ---------------------------------------------------------------------------------------------
# The charts a job page and the compare page draw
# ---------------------------------------------------------------------------------------------

# (chart id, title, kind, value name, x label, format)
CATALOGUE = (
    ("test-accuracy-chart", "Test Accuracy (%)", "epoch", "test_accuracy", "epoch", formatting.percent),
    ("test-loss-chart", "Test Loss (per sample)", "epoch", "test_loss", "epoch", formatting.loss),
    ("train-loss-chart", "Train loss (epoch mean)", "epoch", "train_loss", "epoch", formatting.loss),
    ("train-loss-steps-chart", "Train loss (every log_interval batches)", "train", "train_loss", "batch", formatting.loss),
)


def catalogue(trained: Sequence[Recipe] = (TUTORIAL,)) -> list[tuple]:
    """The charts of jobs of these recipes: the tutorial's CATALOGUE, or per epoch each metric a
    recipe declares, then the train loss every log_interval batches."""
    if all(recipe is TUTORIAL for recipe in trained):
        return list(CATALOGUE)
    charts = {}
    for metric in (m for recipe in trained for m in recipe.metrics):
        found = next((entry for entry in CATALOGUE if entry[2] == "epoch" and entry[3] == metric.name), None)
        charts.setdefault(metric.name, found or (
            f"{metric.name.replace('_', '-')}-chart", metric.logged_as, "epoch", metric.name, "epoch", lambda v: f"{v:.4g}",
        ))
    return [*charts.values(), CATALOGUE[-1]]


def draw_charts(
    labelled_points: list[tuple[str, dict[str, list[tuple]]]], trained: Sequence[Recipe] = (TUTORIAL,),
) -> list[tuple[str, Markup]]:
    """(caption, SVG) per chart of the jobs' recipes' catalogue, each series one job's points as
    app/reads.py's metric_points gives them."""
    drawn = []
    for chart_id, title, kind, value, x_label, value_format in catalogue(trained):
        if kind == "train":
            series = [Series(label, points["train"]) for label, points in labelled_points]
        else:
            series = [
                Series(label, [(step, values.get(value)) for step, values in points["epoch"]])
                for label, points in labelled_points
            ]
        # Every epoch keeps its own point (JobCreate bounds epochs at 1000); train-loss points are thinned.
        max_points = MAX_POINTS if kind == "train" else 1000
        drawn.append((title, line_chart(chart_id, title, series, x_label=x_label, value_format=value_format, max_points=max_points)))
    return drawn


# ---------------------------------------------------------------------------------------------
# The charts a sweep's page draws
# ---------------------------------------------------------------------------------------------

# The metric chart draws the first trials in the page's order (best first): past this many,
# lines are a blur and the page grows heavy.
MAX_TRIAL_LINES = 100
# A positive parameter whose values span this factor or more is drawn on a log scale.
LOG_SCALE_SPAN = 100


def trial_label(trial: SweepTrialPublic) -> str:
    pruned = f" (pruned at epoch {trial.pruned_at_epoch})" if trial.status == JobStatus.PRUNED else ""
    return f"trial {trial.trial_number}{pruned}"


def sweep_metric_chart(trials: Sequence[SweepTrialPublic], curves: dict[int, dict[int, float]], metric: str) -> Markup:
    """The metric after each epoch, one line per trial in the trials' order (its colour is its
    place), a pruned trial's line dashed and ending where it was stopped."""
    series = [
        Series(trial_label(trial), sorted(curves.get(trial.id, {}).items()), kind="pruned" if trial.status == JobStatus.PRUNED else "")
        for trial in trials[:MAX_TRIAL_LINES]
    ]
    title = f"{formatting.metric_label(metric)} after each epoch, by trial"
    return line_chart("sweep-metric-chart", title, series, x_label="epoch", value_format=formatting.metric_format(metric), max_points=1000)


def parameter_charts(
    trials: Sequence[SweepTrialPublic], parameters: dict[str, Any], metric: str, best_job_id: int | None,
) -> list[tuple[str, Markup]]:
    """(parameter, SVG) per swept parameter: each scored trial's value of it against its metric.
    Numbers on a number line (a log scale for a log distribution or a wide positive range),
    anything else one column per value in the config's order."""
    value_format = formatting.metric_format(metric)
    scored = [trial for trial in trials if trial.value is not None]
    names = list(dict.fromkeys(name for trial in trials for name in trial.params))
    drawn = []
    for name in names:
        spec = parameters.get(name) if isinstance(parameters.get(name), dict) else {}
        values = [trial.params.get(name) for trial in scored]
        numeric = all(isinstance(value, int | float) and not isinstance(value, bool) for value in values)
        log_x = numeric and bool(values) and min(values) > 0 and (
            "log" in str(spec.get("distribution", "")) or max(values) >= LOG_SCALE_SPAN * min(values)
        )
        categories = None
        if not numeric:
            configured = [formatting.param_value(value) for value in spec.get("values") or []]
            categories = list(dict.fromkeys([*configured, *(formatting.param_value(value) for value in values)]))
        dots = [
            Dot(
                categories.index(formatting.param_value(value)) if categories is not None else float(value),
                trial.value,
                f"{trial_label(trial)}: {name} {formatting.short_param(value)}, {metric} {value_format(trial.value)}",
                "best" if trial.id == best_job_id else "pruned" if trial.status == JobStatus.PRUNED else "",
            )
            for trial, value in zip(scored, values)
        ]
        title = f"{formatting.metric_label(metric)} by {name}"
        x_label = f"{name} (log scale)" if log_x else name
        drawn.append((name, scatter_chart(
            f"param-{name}-chart", title, dots, x_label=x_label, value_format=value_format, log_x=log_x, categories=categories,
        )))
    return drawn
