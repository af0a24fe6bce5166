"""One attempt of one job in one slot, in four parts that each own one concern.

- `ChildProcess` starts the training child (`python -m worker.child`): its environment, its
  ChildSpec on stdin, its output appended to the job's log; and stops it, as a process group.
- `EventPump` reads the child's events off the pipe and buffers progress and metrics until the
  next flush; it keeps the result or the failure for the end.
- `Lease` renews the job's lease every heartbeat and fences every write; once one finds the job is
  not ours, or the lease cannot be renewed in time, nothing more is written.
- `JobRun` coordinates them until the child ends, and records how the attempt ended (`Ending`).
"""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from enum import Enum
from queue import Empty, Queue
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import Engine

from app import queue
from app.models import JobCreate, JobStatus
from app.settings import JobFiles, Settings
from worker.child import PARENT_PID_ENV
from worker.protocol import ChildSpec, Event, Failure, Progress, Result, WandbStarted, decode
from worker.reporter import REPORT_FD_ENV, first_line
from worker.retries import DatabaseUnavailable, with_retries

if TYPE_CHECKING:
    from worker.supervisor import Slot

log = logging.getLogger("trainboard.worker")

PROGRESS_FLUSH_SECONDS = 1.0
# How long the reports of an exited child may lag behind its exit (a grandchild holding the pipe).
REPORTS_DRAIN_SECONDS = 5.0
LOG_TAIL_LINES = 5
LOG_TAIL_BYTES = 8192
# What a training child may inherit: the system's basics, the GPU stack, threading knobs, proxies
# and certificates for W&B, and W&B's own settings. Nothing else: not the database URL, not the
# dashboard's token, not unrelated secrets of the worker's environment.
CHILD_ENVIRONMENT_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TMPDIR", "TERM", "VIRTUAL_ENV",
    "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
})
CHILD_ENVIRONMENT_PREFIXES = ("LC_", "XDG_", "PYTHON", "CUDA", "NVIDIA_", "NCCL_", "CUBLAS", "CUDNN", "TORCH", "WANDB_")


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value for name, value in parent.items()
        if name in CHILD_ENVIRONMENT_NAMES or name.startswith(CHILD_ENVIRONMENT_PREFIXES)
    }


class Ending(Enum):
    """How a supervised attempt ended, which says what the slot records."""

    EXITED = "exited"  # the child ended by itself: its result, or why it failed
    STOPPED = "stopped"  # the worker is stopping: the job goes back to the queue
    CANCELLED = "cancelled"  # a cancel was asked for: the job ends cancelled
    LOST = "lost"  # the job is no longer ours: nothing more is written


# ---------------------------------------------------------------------------------------------
# Starting and stopping the child
# ---------------------------------------------------------------------------------------------


class ChildProcess:
    """A training child in a process group of its own, reporting on a pipe."""

    def __init__(self, process: subprocess.Popen, report_fd: int):
        self.process = process
        self.report_fd = report_fd

    @classmethod
    def start(cls, settings: Settings, slot: "Slot", claim: queue.Claim, worker_id: str) -> "ChildProcess":
        """Spawn it in the job's folder, its output appended to the job's log, and hand it its
        ChildSpec on stdin."""
        files = settings.job_files(claim.job_id)
        job_dir = files.root.resolve()
        job_dir.mkdir(parents=True, exist_ok=True)
        spec = ChildSpec(
            name=claim.name,
            params=JobCreate.model_validate(claim.params),
            job_dir=job_dir,
            data_dir=settings.data_dir.resolve(),
            cifar_verify=settings.cifar_verify,
        )
        env = child_environment(os.environ)
        env.setdefault("TORCH_HOME", str((settings.data_dir / "torch").resolve()))
        read_fd, write_fd = os.pipe()
        env.update({
            REPORT_FD_ENV: str(write_fd),
            PARENT_PID_ENV: str(os.getpid()),
            "CUDA_VISIBLE_DEVICES": slot.cuda_visible_devices,
            "PYTHONUNBUFFERED": "1",
        })
        try:
            with files.log.resolve().open("ab") as log_file:
                log_file.write(f"==== attempt {claim.attempt} on {worker_id} ({slot.device})\n".encode())
                log_file.flush()
                process = subprocess.Popen(
                    [sys.executable, "-m", "worker.child"],
                    stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,), env=env, cwd=job_dir, start_new_session=True,
                )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            process.stdin.write(spec.model_dump_json().encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died at start; its exit code and log say why
        return cls(process, read_fd)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM to the child's group, SIGKILL after the grace period."""
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        self.process.wait()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


def exit_reason(returncode: int, files: JobFiles) -> str:
    """Why a child that left no result ended: its exit code or signal, and its last output."""
    if returncode < 0:
        how = f"was killed by {_signal_name(-returncode)}"
    else:
        how = f"exited with code {returncode}"
    lines = files.log_tail(LOG_TAIL_BYTES).splitlines()[-LOG_TAIL_LINES:]
    tail = [line.strip() for line in lines if line.strip()]
    last = f"; last output: {' | '.join(tail)[-800:]}" if tail else ""
    hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
    return f"the training process {how}{hint} without a result{last}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # real-time signals have no name
        return f"signal {signum}"


# ---------------------------------------------------------------------------------------------
# The child's events
# ---------------------------------------------------------------------------------------------


class EventPump:
    """What the child has said and the slot has not yet written. A thread reads the pipe; the slot
    takes the events one at a time. Where the W&B run is goes out at once, through `on_wandb`."""

    def __init__(self, report_fd: int, on_wandb: Callable[[WandbStarted], Any], name: str):
        self.on_wandb = on_wandb
        self.progress: dict[str, Any] | None = None
        self.metrics: dict[str, Any] | None = None
        self.points: list[tuple[str, int, dict[str, Any]]] = []
        self.result: Result | None = None
        self.failure: str | None = None
        self.closed = False
        self._events: Queue[Event | None] = Queue()
        threading.Thread(target=self._read, args=(report_fd,), daemon=True, name=name).start()

    def take(self, timeout: float) -> None:
        """Take the next event, waiting at most `timeout` seconds."""
        if self.closed:
            time.sleep(timeout)
            return
        try:
            event = self._events.get(timeout=timeout)
        except Empty:
            return
        if event is None:
            self.closed = True
        elif isinstance(event, Progress):
            self.progress = event.progress
            if event.metrics is not None:
                self.metrics = event.metrics
            self.points.extend(event.points)
        elif isinstance(event, WandbStarted):
            self.on_wandb(event)
        elif isinstance(event, Result):
            self.result = event
        elif isinstance(event, Failure):
            self.failure = event.reason[:2000]

    def drain(self) -> None:
        """After the child exits: its last events (the result) may still be in the pipe."""
        deadline = time.monotonic() + REPORTS_DRAIN_SECONDS
        while not self.closed and (remaining := deadline - time.monotonic()) > 0:
            self.take(timeout=remaining)

    def pending(self) -> tuple[dict[str, Any], dict[str, Any] | None, list[tuple[str, int, dict[str, Any]]]] | None:
        """The buffered progress, metrics and points, handed over once; None when there are none."""
        if self.progress is None and not self.points:
            return None
        pending = (self.progress or {}, self.metrics, self.points)
        self.progress, self.metrics, self.points = None, None, []
        return pending

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                try:
                    self._events.put(decode(line))
                except ValidationError:
                    log.warning("unreadable report from a training child: %r", line[:200])
        self._events.put(None)


# ---------------------------------------------------------------------------------------------
# The lease, and fenced writes
# ---------------------------------------------------------------------------------------------


class Lease:
    """Our hold on one attempt. Past `until` another worker may have taken the job, so the child
    must be stopped by then even when the database cannot tell us (a partition)."""

    def __init__(self, settings: Settings, engine: Engine, claim: queue.Claim):
        self.settings = settings
        self.engine = engine
        self.claim = claim
        self.owned = True
        self.until = time.monotonic() + settings.lease_seconds

    def give_up_at(self) -> float:
        """A heartbeat before the lease ends, so a hung call still ends before the lease does."""
        return self.until - self.settings.heartbeat_seconds

    def write(self, operation: Callable[[], bool]) -> bool:
        """A fenced write; says whether the job is still ours."""
        if self.owned:
            try:
                self.owned = with_retries(operation, self.settings.lease_seconds, deadline=self.give_up_at())
            except DatabaseUnavailable:
                self.owned = False
        return self.owned

    def renew(self) -> Ending | None:
        """Extend the lease. Says CANCELLED when a cancel was asked for, LOST when the job is not ours."""
        if not self.owned:
            return Ending.LOST
        now = time.monotonic()
        try:
            outcome = with_retries(
                lambda: queue.renew(self.engine, self.claim, self.settings.lease_seconds),
                self.settings.lease_seconds, deadline=self.give_up_at(),
            )
        except DatabaseUnavailable:
            outcome = "lost"
        if outcome == "lost":
            self.owned = False
            return Ending.LOST
        self.until = now + self.settings.lease_seconds
        return Ending.CANCELLED if outcome == "cancel" else None


# ---------------------------------------------------------------------------------------------
# The attempt
# ---------------------------------------------------------------------------------------------


class JobRun:
    """One attempt of one job in one slot."""

    def __init__(
        self, settings: Settings, engine: Engine, worker_id: str, slot: "Slot", claim: queue.Claim,
        stopping: threading.Event,
    ):
        self.settings = settings
        self.engine = engine
        self.worker_id = worker_id
        self.slot = slot
        self.claim = claim
        self.stopping = stopping
        # Every line about this attempt carries its ids (fields of their own in JSON logs).
        self.log = logging.LoggerAdapter(log, {
            "job_id": claim.job_id, "attempt": claim.attempt, "worker_id": worker_id, "slot": slot.index,
        })
        self.files = settings.job_files(claim.job_id)
        self.lease = Lease(settings, engine, claim)

    def run(self) -> None:
        if self.stopping.is_set():
            self._release()  # claimed just as the worker began to stop: no child to start
            return
        self.log.info("slot %d: job %d attempt %d starting on %s", self.slot.index, self.claim.job_id, self.claim.attempt, self.slot.device)
        child = None
        try:
            child = ChildProcess.start(self.settings, self.slot, self.claim, self.worker_id)
            events = EventPump(child.report_fd, self._record_wandb, name=f"reports-{self.claim.job_id}")
            ending = self._supervise(child, events)
        except Exception as exc:
            # Never leave an unsupervised child training, nor the job running until its lease ends.
            self.log.exception("job %d: supervising it failed", self.claim.job_id)
            if child is not None and child.running:
                child.kill()
            reason = f"the worker failed while running this job: {type(exc).__name__}: {first_line(exc)}"
            self.lease.write(lambda: queue.finish(self.engine, self.claim, JobStatus.FAILED, error=reason[:2000]))
            return
        if ending is Ending.LOST:
            self.log.warning("job %d is no longer ours (lease lost or taken over); stopped it, writing nothing", self.claim.job_id)
        elif ending is Ending.STOPPED:
            self._release()
        elif ending is Ending.CANCELLED:
            self._flush(events)
            self.lease.write(lambda: queue.finish(self.engine, self.claim, JobStatus.CANCELLED, error="cancelled by request"))
            self.log.info("job %d cancelled", self.claim.job_id)
        else:
            self._finish(child.returncode, events)

    def _supervise(self, child: ChildProcess, events: EventPump) -> Ending:
        """Relay events and renew the lease until the child ends. Says how the attempt ended."""
        next_beat = time.monotonic() + self.settings.heartbeat_seconds
        next_flush = time.monotonic() + PROGRESS_FLUSH_SECONDS
        while child.running:
            events.take(timeout=0.2)
            now = time.monotonic()
            if self.stopping.is_set():
                if not child.running:
                    break  # it finished meanwhile: record its result rather than run it again
                child.stop(self.settings.cancel_grace_seconds)
                return Ending.STOPPED
            if now >= next_flush or events.metrics is not None:
                next_flush = now + PROGRESS_FLUSH_SECONDS
                if not self._flush(events):
                    child.kill()
                    return Ending.LOST
            if now >= self.lease.give_up_at():
                self.log.warning("job %d: its lease could not be renewed in time; stopping it", self.claim.job_id)
                self.lease.owned = False
                child.kill()
                return Ending.LOST
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_seconds
                renewal = self.lease.renew()
                if renewal is Ending.LOST:
                    child.kill()
                    return Ending.LOST
                if renewal is Ending.CANCELLED:
                    if not child.running:
                        break  # it finished meanwhile: record how
                    child.stop(self.settings.cancel_grace_seconds)
                    events.drain()
                    return Ending.CANCELLED
        events.drain()
        return Ending.EXITED

    # ---- What gets written ----------------------------------------------------------------------

    def _record_wandb(self, event: WandbStarted) -> None:
        fields = event.model_dump(exclude={"event"})
        self.lease.write(lambda: queue.record_wandb(self.engine, self.claim, **fields))

    def _flush(self, events: EventPump) -> bool:
        pending = events.pending()
        if pending is None:
            return self.lease.owned
        progress, metrics, points = pending
        return self.lease.write(
            lambda: queue.record_progress(self.engine, self.claim, progress=progress, metrics=metrics, points=points)
        )

    def _release(self) -> None:
        if self.lease.write(lambda: queue.release(self.engine, self.claim)):
            self.log.info("job %d released (worker stopping): queued again, or cancelled if that was asked", self.claim.job_id)

    def _finish(self, returncode: int, events: EventPump) -> None:
        if not self._flush(events):
            return
        result = events.result
        if returncode == 0 and result is not None:
            self.lease.write(lambda: queue.finish(
                self.engine, self.claim, JobStatus.SUCCEEDED, metrics=result.metrics, artifacts=result.artifacts
            ))
            self.log.info("job %d succeeded", self.claim.job_id)
            return
        reason = events.failure or exit_reason(returncode, self.files)
        self.lease.write(lambda: queue.finish(self.engine, self.claim, JobStatus.FAILED, error=reason))
        self.log.info("job %d failed: %s", self.claim.job_id, reason)
