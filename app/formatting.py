"""How values read on the pages: ages and durations, parameters as a person types them, metric
numbers, and a running job's progress with its ETA. Registered as Jinja filters by app/templating.py."""

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from app.models import JobPublic, JobStatus, as_utc, utcnow


def age(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return duration(utcnow() - as_utc(moment)) + " ago"


def short_age(moment: datetime | None) -> str:
    """The largest unit only ("3h ago"): the list has many columns and the exact time is on hover."""
    if moment is None:
        return ""
    seconds = int((utcnow() - as_utc(moment)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


def duration(delta: timedelta | float | None) -> str:
    if delta is None:
        return ""
    seconds = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def run_time(job: JobPublic) -> str:
    if job.started_at is None:
        return ""
    return duration((job.finished_at or utcnow()) - job.started_at)


def param_value(value: Any) -> str:
    """Parameters as a person would type them into the form, not as Python prints them."""
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "none"
    return str(value)


def short_param(value: Any) -> str:
    """A parameter in a table or a chart's hover text: a float to four significant digits, where
    a sampled 0.0068240784270988 would be noise."""
    return f"{value:.4g}" if isinstance(value, float) else param_value(value)


def number(value: float | None, pattern: str) -> str:
    """A metric as text; a missing one (a diverged run's NaN is stored as null) as a dash."""
    if value is None:
        return "\u2014"
    return pattern.format(value) if "{" in pattern else pattern % value


def percent(value: float) -> str:
    return f"{value:.2f}%"


def loss(value: float) -> str:
    return f"{value:.4f}"


# The metrics a sweep can optimise, by the names the job page gives them.
METRIC_LABELS = {"test_accuracy": "Test Accuracy", "test_loss": "Test Loss", "train_loss": "Train loss"}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def metric_format(metric: str) -> Callable[[float], str]:
    """How a metric's value reads: an accuracy in percent, a loss to four decimals."""
    return percent if metric.endswith("accuracy") else loss


def metric_value(value: float | None, metric: str) -> str:
    """A metric's value as text, a missing one as a dash."""
    return "\u2014" if value is None else metric_format(metric)(value)


def epoch_phrase(progress: dict[str, Any], status: str, separator: str = " · ") -> str:
    """Where a job is, counting the epoch in progress: "epoch 2/5 · batch 10/16" inside an epoch,
    "epoch 1/5 done" between two, "epoch 5/5" once it has ended there.

    The worker reports `epoch` as the epochs finished and `batch` of `batches` within the next
    one; batch == batches is the end of an epoch, whose count `epoch` holds once it is evaluated.
    (The report of the last batch comes before the evaluation and still holds the previous count:
    with none finished, that is the first epoch's last batch.)
    """
    epochs = progress.get("epochs") or 1
    epoch = progress.get("epoch") or 0
    batch, batches = progress.get("batch") or 0, progress.get("batches") or 0
    if not batches:
        return "starting" if status == JobStatus.RUNNING else "not started"
    if batch < batches or epoch == 0:
        return f"epoch {epoch + 1}/{epochs}{separator}batch {batch}/{batches}"
    return f"epoch {epoch}/{epochs} done" if status == JobStatus.RUNNING else f"epoch {epoch}/{epochs}"


def progress_view(job: JobPublic) -> dict[str, Any]:
    """Fraction done, where the job is (epoch_phrase), ETA and throughput from the job's progress
    and latest metrics."""
    progress, metrics = job.progress, job.metrics
    epochs = progress.get("epochs") or job.params.get("epochs") or 1
    epoch = progress.get("epoch") or 0
    batch, batches = progress.get("batch") or 0, progress.get("batches") or 0
    within = batch / batches if batches and batch < batches else 0.0
    fraction = 1.0 if job.status == JobStatus.SUCCEEDED else min(1.0, (epoch + within) / epochs)
    eta_seconds = None
    if job.status == JobStatus.RUNNING:
        remaining_epochs = max(0.0, epochs - epoch - within)
        if metrics.get("epoch_seconds"):
            eta_seconds = remaining_epochs * metrics["epoch_seconds"]
        elif fraction > 0 and job.started_at is not None and job.attempts == 1:
            elapsed = (utcnow() - job.started_at).total_seconds()
            eta_seconds = elapsed * (1 - fraction) / fraction
    return {
        "epoch": epoch,
        "epochs": epochs,
        "where": epoch_phrase({**progress, "epochs": epochs}, job.status),
        "percent": round(100 * fraction),
        "eta": duration(eta_seconds) if eta_seconds is not None else None,
        "images_per_second": metrics.get("train_images_per_second"),
    }
