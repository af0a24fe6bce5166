"""SVG charts: ticks, a hover title per point, thinning of long series, hostile labels; scatter
charts on a number line, a log scale or in columns."""

import math
import re
import xml.etree.ElementTree as ElementTree

from app.charts import MAX_POINTS, Dot, Series, line_chart, nice_ticks, scatter_chart

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


def dots_of(svg: ElementTree.Element) -> list[tuple[str, float, float, str]]:
    return [
        (circle.get("class"), float(circle.get("cx")), float(circle.get("cy")), circle.find(f"{SVG}title").text)
        for circle in svg.iter(f"{SVG}circle")
    ]


def tick_labels(svg: ElementTree.Element) -> list[str]:
    return [text.text for text in svg.iter(f"{SVG}text") if text.get("class") == "tick" and text.get("text-anchor") == "middle"]


def test_a_series_kind_is_a_class_to_draw_it_by():
    svg = parse(line_chart("c", "Acc", [Series("a", [(1, 1.0), (2, 2.0)]), Series("b", [(1, 1.5)], kind="pruned")],
                           x_label="epoch", value_format=str))
    assert [group.get("class") for group in svg.iter(f"{SVG}g") if "series" in group.get("class")] == [
        "series series-0", "series series-1 pruned"]


def test_a_scatter_places_each_dot_with_its_label_and_kind():
    dots = [Dot(0.5, 10.0, "low"), Dot(2.0, 30.0, "high", "best"), Dot(1.0, 20.0, "cut", "pruned")]
    svg = parse(scatter_chart("s", "Acc by momentum", dots, x_label="momentum", value_format=str))
    placed = {label: (kind, cx, cy) for kind, cx, cy, label in dots_of(svg)}
    assert placed["high"][0] == "dot best" and placed["cut"][0] == "dot pruned" and placed["low"][0] == "dot"
    assert placed["low"][1] < placed["cut"][1] < placed["high"][1]  # left to right by x
    assert placed["high"][2] < placed["cut"][2] < placed["low"][2]  # higher values drawn higher
    assert svg.find(f"{SVG}desc").text == "3 points. Highest: high. Lowest: low."


def test_a_log_scale_spaces_decades_evenly_and_labels_them():
    dots = [Dot(0.001, 1.0, "a"), Dot(0.01, 2.0, "b"), Dot(0.1, 3.0, "c"), Dot(-1.0, 4.0, "not on a log scale")]
    svg = parse(scatter_chart("s", "Acc by lr", dots, x_label="lr", value_format=str, log_x=True))
    xs = [cx for _, cx, _, _ in dots_of(svg)]
    assert len(xs) == 3 and abs((xs[1] - xs[0]) - (xs[2] - xs[1])) < 0.2
    assert tick_labels(svg) == ["0.001", "0.01", "0.1"]
    narrow = parse(scatter_chart("s", "t", [Dot(0.02, 1.0, "a"), Dot(0.05, 2.0, "b")], x_label="lr", value_format=str, log_x=True))
    assert tick_labels(narrow) == ["0.02", "0.05"]


def test_categories_are_columns_in_the_order_given():
    dots = [Dot(1, 5.0, "adamw run"), Dot(0, 7.0, "sgd run"), Dot(1, 6.0, "another adamw run")]
    svg = parse(scatter_chart("s", "Acc by optimizer", dots, x_label="optimizer", value_format=str, categories=["sgd", "adamw"]))
    assert tick_labels(svg) == ["sgd", "adamw"]
    columns = {label: cx for _, cx, _, label in dots_of(svg)}
    assert columns["adamw run"] == columns["another adamw run"] > columns["sgd run"]


def test_a_scatter_without_finite_points_says_so_and_escapes_its_labels():
    assert scatter_chart("s", "t", [Dot(1.0, math.nan, "x")], x_label="x", value_format=str) == (
        '<p class="muted chart-empty" id="s">No points yet.</p>'
    )
    markup = scatter_chart("s", "t", [Dot(1.0, 1.0, '<script>alert("x")</script>')], x_label="<b>", value_format=str)
    assert "<script>" not in markup and "<b>" not in markup
    assert dots_of(parse(markup))[0][3] == '<script>alert("x")</script>'
