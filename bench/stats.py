"""Summaries of timings that the benchmarks print."""


def percentile(values: list[float], fraction: float) -> float:
    """Linearly interpolated between the two nearest ranks (fraction 0.5: the median)."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
