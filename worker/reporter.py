"""Where the training sends its events: the `Reporter` protocol, the pipe to the worker slot that a
training child uses, and a recording reporter for training in-process (benchmarks, tests); and the
slot's request that it checkpoint and stop (`CheckpointRequest`)."""

import os
import threading
from typing import Any, Protocol

from worker.protocol import CheckpointSaved, Event, Examples, Progress, Result, WandbStarted, encode

REPORT_FD_ENV = "TRAINBOARD_REPORT_FD"


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (a reason a job page shows), or its type without one."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Reporter(Protocol):
    """Takes events from the training loop and from the thread that writes checkpoints."""

    def report(self, event: Event) -> None: ...


class CheckpointRequest:
    """The slot's CHECKPOINT_SIGNAL. `ask` is the signal handler, so it only sets a flag: the
    training reads `asked` after each batch and after each evaluation, then checkpoints where it
    is and stops."""

    def __init__(self):
        self.asked = False

    def ask(self, *_signal: object) -> None:
        self.asked = True


class PipeReporter:
    """Events as JSON lines on the pipe the slot named in TRAINBOARD_REPORT_FD."""

    def __init__(self, fd: int):
        self._stream = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()  # one line at a time: checkpoints are reported from their own thread

    @classmethod
    def from_environment(cls) -> "PipeReporter":
        return cls(int(os.environ[REPORT_FD_ENV]))

    def report(self, event: Event) -> None:
        line = encode(event)
        with self._lock:
            self._stream.write(line)

    def close(self) -> None:
        self._stream.close()


class RecordingReporter:
    """Keeps what a training child would send to its worker slot, sorted for reading back."""

    def __init__(self):
        self.epochs: list[dict[str, Any]] = []
        self.train_points: list[dict[str, Any]] = []
        self.wandb_events: list[dict[str, Any]] = []
        self.examples: list[Examples] = []
        self.checkpoints: list[CheckpointSaved] = []
        self.final: dict[str, Any] | None = None

    def report(self, event: Event) -> None:
        if isinstance(event, Progress):
            for kind, _, values in event.points:
                (self.epochs if kind == "epoch" else self.train_points).append(values)
        elif isinstance(event, WandbStarted):
            self.wandb_events.append(event.model_dump(exclude={"event"}))
        elif isinstance(event, Examples):
            self.examples.append(event)
        elif isinstance(event, CheckpointSaved):
            self.checkpoints.append(event)
        elif isinstance(event, Result):
            self.final = {"metrics": event.metrics, "artifacts": event.artifacts}
