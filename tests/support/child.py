"""A training child (`python -m worker.child`) spawned as a worker slot spawns it: its ChildSpec on
stdin, its events read off a pipe. For tests/test_training.py and bench/checkpoint_cost.py."""

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from worker.child import PARENT_PID_ENV
from worker.protocol import ChildSpec, Event, decode
from worker.reporter import REPORT_FD_ENV

ROOT = Path(__file__).resolve().parent.parent.parent


class SpawnedChild:
    """Its output goes to `output` (discarded without one). Closing it kills it."""

    def __init__(self, spec: ChildSpec, output: Path | None = None):
        read_fd, write_fd = os.pipe()
        env = {**os.environ, REPORT_FD_ENV: str(write_fd), PARENT_PID_ENV: str(os.getpid())}
        try:
            with open(output or os.devnull, "wb") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "worker.child"], stdin=subprocess.PIPE, stdout=log,
                    stderr=subprocess.STDOUT, pass_fds=(write_fd,), env=env, cwd=ROOT,
                )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._pipe = read_fd
        self.process.stdin.write(spec.model_dump_json().encode())
        self.process.stdin.close()

    def events(self, timeout: float) -> Iterator[Event]:
        """Its events as they come, until it closes the pipe; TimeoutError once `timeout` seconds
        have passed without the end."""
        deadline = time.monotonic() + timeout
        pending = b""
        while True:
            ready, _, _ = select.select([self._pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"the training child's events did not end within {timeout}s")
            chunk = os.read(self._pipe, 65536)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            yield from (decode(line) for line in lines)

    def close(self) -> None:
        os.close(self._pipe)
        self.process.kill()
        self.process.wait()

    def __enter__(self) -> "SpawnedChild":
        return self

    def __exit__(self, *_exception: object) -> None:
        self.close()
