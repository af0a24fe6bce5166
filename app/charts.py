"""Line charts as inline SVG, drawn on the server: no JavaScript and no chart library.

Every point carries an SVG <title> with its value, which browsers show on hover and screen
readers can reach. Colours come from the stylesheet (classes series-0 ... series-9), so the
charts follow the page's light or dark scheme.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from app import formatting

WIDTH, HEIGHT = 640, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 12, 36
# More points than this are averaged in buckets: a 500-epoch run logs tens of thousands of
# train-loss points, far more than a chart is pixels wide.
MAX_POINTS = 300
# Past this many points per line, markers would blur into a band: they stay as hover targets
# but are only drawn under the pointer (see .series.dense in the stylesheet).
DENSE_POINTS = 60


# One line on a chart: a label for the legend and hover text, and its points in x order: (x, y),
# or (x, y, count, last x) for the mean of `count` values from x to last x (a bucket already
# averaged by the database).
@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float | None] | tuple[float, float, int, float]]


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


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    value_format: Callable[[float], str],
    max_points: int = MAX_POINTS,
) -> Markup:
    """An SVG line chart with one coloured line per series (up to ten)."""
    finite = [_finite(s.points) for s in series]
    drawn = [_bucket(points, max_points) for points in finite]
    every = [point for points in finite for point in points]
    if not every:
        return Markup(f'<p class="muted chart-empty" id="{escape(chart_id)}">No points yet.</p>')

    x_low, x_high = min(x for x, _, _, _ in every), max(last_x for _, _, _, last_x in every)
    y_low, y_high = min(y for _, y, _, _ in every), max(y for _, y, _, _ in every)
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 1, y_high + 1
    # x is always a count (epoch, batch): ticks between two integers would be meaningless.
    x_ticks = nice_ticks(x_low, x_high, min_step=1) if x_high > x_low else [x_low]
    y_ticks = nice_ticks(y_low, y_high)
    y_low, y_high = min(y_low, y_ticks[0]), max(y_high, y_ticks[-1])
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> str:
        return _number(MARGIN_LEFT + (x - x_low) / (x_high - x_low) * plot_width)

    def sy(y: float) -> str:
        return _number(MARGIN_TOP + (y_high - y) / (y_high - y_low) * plot_height)

    chart_id = str(escape(chart_id))
    last_values = "; ".join(
        f"{s.label}: {value_format(points[-1][1])} at {x_label} {points[-1][3]:g}" for s, points in zip(series, finite) if points
    )
    parts = [
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">Last values: {escape(last_values)}</desc>',
        '<g class="grid">',
    ]
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1
    for tick in y_ticks:
        if y_low <= tick <= y_high:
            parts.append(
                f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{sy(tick)}" y2="{sy(tick)}"/>'
                f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{sy(tick)}" text-anchor="end" dominant-baseline="middle">'
                f"{_tick_label(tick, y_step)}</text>"
            )
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1
    for tick in x_ticks:
        if x_low <= tick <= x_high:
            parts.append(
                f'<text class="tick" x="{sx(tick)}" y="{HEIGHT - MARGIN_BOTTOM + 16}" text-anchor="middle">'
                f"{_tick_label(tick, x_step)}</text>"
            )
    parts.append(
        f'</g><text class="axis-label" x="{MARGIN_LEFT + plot_width / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    for index, (line, points) in enumerate(zip(series, drawn)):
        if not points:
            continue
        label = escape(line.label)
        # A bucket's point sits in the middle of the steps it averages.
        where_points = [(sx((x + last_x) / 2), sy(y), x, y, count, last_x) for x, y, count, last_x in points]
        path = "M" + " L".join(f"{cx},{cy}" for cx, cy, *_ in where_points)
        dense = " dense" if len(points) > DENSE_POINTS else ""
        parts.append(f'<g class="series series-{index % 10}{dense}"><path d="{path}"/>')
        prefix = f"{label}, " if len(series) > 1 else ""
        for cx, cy, x, y, count, last_x in where_points:
            where = f"{x_label} {x:g}" if count == 1 else f"{x_label} {x:g}–{last_x:g} (mean of {count})"
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="3"><title>{prefix}{where}: {escape(value_format(y))}</title></circle>')
        parts.append("</g>")
    parts.append("</svg>")
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


def draw_charts(labelled_points: list[tuple[str, dict[str, list[tuple]]]]) -> list[tuple[str, Markup]]:
    """(caption, SVG) per chart of the catalogue, each series one job's points as app/reads.py's
    metric_points gives them."""
    drawn = []
    for chart_id, title, kind, value, x_label, value_format in CATALOGUE:
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
