"""The channel from a training child to its worker slot: one JSON object per line on a pipe.

The child never touches the database; its slot turns these events into fenced writes.
"""

import json
import math
import os
from typing import Any

REPORT_FD_ENV = "TRAINBOARD_REPORT_FD"


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (a reason a job page shows), or its type without one."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Reporter:
    def __init__(self, fd: int):
        self._stream = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    @classmethod
    def from_environment(cls) -> "Reporter":
        return cls(int(os.environ[REPORT_FD_ENV]))

    def _send(self, event: str, **fields: Any) -> None:
        self._stream.write(json.dumps(_finite({"event": event, **fields}), allow_nan=False) + "\n")

    def wandb(self, *, mode: str, url: str | None, run_id: str | None, run_dir: str | None, note: str | None) -> None:
        self._send("wandb", mode=mode, url=url, run_id=run_id, run_dir=run_dir, note=note)

    def progress(self, progress: dict[str, Any], *, metrics: dict[str, Any] | None = None, points: list | None = None) -> None:
        """points: (kind, step, values) triples stored as the job's metric history."""
        self._send("progress", progress=progress, metrics=metrics, points=points or [])

    def result(self, metrics: dict[str, Any], artifacts: list[dict[str, Any]]) -> None:
        self._send("result", metrics=metrics, artifacts=artifacts)

    def error(self, reason: str) -> None:
        self._send("error", reason=reason)

    def close(self) -> None:
        self._stream.close()


def _finite(value: Any) -> Any:
    """A diverged run's NaN or infinite loss becomes null: JSON, and PostgreSQL's JSON type, have no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
