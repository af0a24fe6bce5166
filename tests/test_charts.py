"""SVG line charts: ticks, a hover title per point, thinning of long series, hostile labels."""

import math
import re
import xml.etree.ElementTree as ElementTree

from app.charts import MAX_POINTS, Series, line_chart, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


def loss(value: float) -> str:
    return f"{value:.3f}"


def parse(markup: str) -> ElementTree.Element:
    return ElementTree.fromstring(str(markup).replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.1, 2.3) == [0, 1, 2]
    assert nice_ticks(30.5, 49.2) == [30, 35, 40, 45, 50]
    assert nice_ticks(1, 3, min_step=1) == [1, 2, 3]
    assert nice_ticks(5, 5) == [5, 5.5, 6]


def test_every_point_has_its_value_as_a_title():
    svg = parse(line_chart("c", "Loss", [Series("run", [(1, 2.5), (2, 1.25), (3, 0.5)])], x_label="epoch", value_format=loss))
    assert svg.get("role") == "img" and svg.find(f"{SVG}title").text == "Loss"
    titles = [circle.find(f"{SVG}title").text for circle in svg.iter(f"{SVG}circle")]
    assert titles == ["epoch 1: 2.500", "epoch 2: 1.250", "epoch 3: 0.500"]
    assert "0.500 at epoch 3" in svg.find(f"{SVG}desc").text


def test_higher_values_are_drawn_higher():
    svg = parse(line_chart("c", "Acc", [Series("run", [(1, 10.0), (2, 90.0)])], x_label="epoch", value_format=str))
    low, high = (float(circle.get("cy")) for circle in svg.iter(f"{SVG}circle"))
    assert high < low  # SVG's y grows downwards


def test_long_series_are_averaged_in_buckets():
    points = [(step, float(step)) for step in range(1, 10_001)]
    svg = parse(line_chart("c", "Loss", [Series("run", points)], x_label="batch", value_format=loss))
    titles = [circle.find(f"{SVG}title").text for circle in svg.iter(f"{SVG}circle")]
    assert len(titles) <= MAX_POINTS
    assert titles[0] == "batch 1–34 (mean of 34): 17.500"


def test_non_finite_values_are_left_out_and_an_empty_chart_says_so():
    svg = parse(line_chart("c", "Loss", [Series("run", [(1, 1.0), (2, math.nan), (3, math.inf), (4, None)])],
                           x_label="epoch", value_format=loss))
    assert len(list(svg.iter(f"{SVG}circle"))) == 1
    empty = line_chart("c", "Loss", [Series("run", [])], x_label="epoch", value_format=loss)
    assert empty == '<p class="muted chart-empty" id="c">No points yet.</p>'


def test_several_series_name_themselves_and_labels_are_escaped():
    hostile = '<script>alert("x")</script>'
    markup = line_chart("c", "Loss", [Series(hostile, [(1, 1.0)]), Series("b&c", [(1, 2.0)])],
                        x_label="epoch", value_format=loss)
    assert "<script>" not in markup
    svg = parse(markup)
    titles = [circle.find(f"{SVG}title").text for circle in svg.iter(f"{SVG}circle")]
    assert titles == [f"{hostile}, epoch 1: 1.000", "b&c, epoch 1: 2.000"]
    assert [group.get("class") for group in svg.iter(f"{SVG}g") if "series" in group.get("class")] == [
        "series series-0", "series series-1"]
    assert re.search(r'<path d="M[\d.]+,[\d.]+"/>', markup)
