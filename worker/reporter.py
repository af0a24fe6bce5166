"""Where the training sends its events: the `Reporter` protocol, the pipe to the worker slot that a
training child uses, and a recording reporter for training in-process (benchmarks, tests)."""

import os
from typing import Any, Protocol

from worker.protocol import Event, Progress, Result, WandbStarted, encode

REPORT_FD_ENV = "TRAINBOARD_REPORT_FD"


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (a reason a job page shows), or its type without one."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Reporter(Protocol):
    def report(self, event: Event) -> None: ...


class PipeReporter:
    """Events as JSON lines on the pipe the slot named in TRAINBOARD_REPORT_FD."""

    def __init__(self, fd: int):
        self._stream = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    @classmethod
    def from_environment(cls) -> "PipeReporter":
        return cls(int(os.environ[REPORT_FD_ENV]))

    def report(self, event: Event) -> None:
        self._stream.write(encode(event))

    def close(self) -> None:
        self._stream.close()


class RecordingReporter:
    """Keeps what a training child would send to its worker slot, sorted for reading back."""

    def __init__(self):
        self.epochs: list[dict[str, Any]] = []
        self.train_points: list[dict[str, Any]] = []
        self.wandb_events: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None

    def report(self, event: Event) -> None:
        if isinstance(event, Progress):
            for kind, _, values in event.points:
                (self.epochs if kind == "epoch" else self.train_points).append(values)
        elif isinstance(event, WandbStarted):
            self.wandb_events.append(event.model_dump(exclude={"event"}))
        elif isinstance(event, Result):
            self.final = {"metrics": event.metrics, "artifacts": event.artifacts}
