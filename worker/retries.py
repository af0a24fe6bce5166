"""Riding out a database that is briefly locked or unreachable: which errors a retry can fix, and
the retry loop the worker's calls go through."""

import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from worker.reporter import first_line

log = logging.getLogger("trainboard.worker")
# Errors a retry can fix: a lost connection, a locked SQLite file. Others (a value too long for
# its column, say) would fail the same way every time.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    pass


def with_retries(operation: Callable[[], T], lease_seconds: float, deadline: float | None = None) -> T:
    """Retry `operation` for at most one lease (or until `deadline`, a time.monotonic() value),
    backing off; past that, DatabaseUnavailable."""
    deadline = min(deadline or math.inf, time.monotonic() + lease_seconds)
    delay = 0.2
    while True:
        try:
            return operation()
        except TRANSIENT_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(first_line(exc)) from exc
            log.warning("database unavailable, retrying in %.1fs: %s", delay, first_line(exc))
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
