"""A worker: one slot per GPU (or one CPU slot), each claiming jobs and supervising a training child.

A slot's child runs in its own process group and reports over a pipe; the slot turns its reports
into fenced writes, renews the job's lease every heartbeat, stops the child on cancel, on a lost
lease or on shutdown, and records how the attempt ended. Transactions stay short: nothing is held
open while a child trains.
"""

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from app import queue
from app.models import Worker
from app.settings import Settings
from worker.child import PARENT_PID_ENV
from worker.gpus import Nvml
from worker.reporter import REPORT_FD_ENV, first_line

log = logging.getLogger("trainboard.worker")
# Errors a retry can fix: a lost connection, a locked SQLite file. Others (a value too long for
# its column, say) would fail the same way every time.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
T = TypeVar("T")

PROGRESS_FLUSH_SECONDS = 1.0
# How long the reports of an exited child may lag behind its exit (a grandchild holding the pipe).
REPORTS_DRAIN_SECONDS = 5.0
LOG_TAIL_LINES = 5
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


def child_environment(parent: dict[str, str]) -> dict[str, str]:
    return {
        name: value for name, value in parent.items()
        if name in CHILD_ENVIRONMENT_NAMES or name.startswith(CHILD_ENVIRONMENT_PREFIXES)
    }


@dataclass
class Slot:
    index: int
    device: str  # "cpu" or "cuda:N" as the host numbers it
    gpu_name: str | None = None
    job_id: int | None = None

    @property
    def cuda_visible_devices(self) -> str:
        return self.device.removeprefix("cuda:") if self.device.startswith("cuda:") else ""

    def public(self, nvml: Nvml | None = None) -> dict[str, Any]:
        """What the workers table shows; with NVML, the GPU's utilisation and memory too."""
        record = {"index": self.index, "device": self.device, "gpu_name": self.gpu_name, "job_id": self.job_id}
        if nvml is not None and self.device.startswith("cuda:"):
            record["gpu"] = nvml.sample(int(self.cuda_visible_devices))
        return record


class DatabaseUnavailable(RuntimeError):
    pass


class Supervisor:
    def __init__(self, settings: Settings, engine: Engine, slots: list[Slot], nvml: Nvml | None = None):
        self.settings = settings
        self.engine = engine
        self.slots = slots
        self.nvml = nvml
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()

    # ---- Lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        queue.register_worker(self.engine, Worker(
            id=self.worker_id, host=socket.gethostname(), pid=os.getpid(), slots=[s.public(self.nvml) for s in self.slots]
        ))
        log.info("worker %s started with %d slot(s): %s", self.worker_id, len(self.slots),
                 ", ".join(s.device for s in self.slots))
        threads = [threading.Thread(target=self._slot_loop, args=(slot,), name=f"slot-{slot.index}") for slot in self.slots]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            try:
                queue.worker_heartbeat(self.engine, self.worker_id, [s.public(self.nvml) for s in self.slots])
                reaped = queue.reap_expired(self.engine)
                if reaped:
                    log.warning("requeued or ended %d job(s) whose worker stopped heartbeating", reaped)
            except TRANSIENT_ERRORS as exc:
                log.warning("database unavailable for the worker heartbeat: %s", first_line(exc))
            for thread in threads:
                thread.join(timeout=self.settings.heartbeat_seconds / len(threads))
        self._quietly(lambda: queue.worker_heartbeat(self.engine, self.worker_id, [s.public(self.nvml) for s in self.slots], stopped=True))
        log.info("worker %s stopped", self.worker_id)

    def stop(self) -> None:
        """Stop claiming; running jobs are stopped and put back in the queue."""
        self.stopping.set()

    # ---- A slot ---------------------------------------------------------------------------------

    def _slot_loop(self, slot: Slot) -> None:
        wakeups = queue.JobWakeups(self.engine)
        try:
            while not self.stopping.is_set():
                wakeups.listen()
                try:
                    claim = self._with_retries(lambda: queue.claim(self.engine, self.worker_id, self.settings.lease_seconds))
                except DatabaseUnavailable:
                    continue
                if claim is None:
                    wakeups.wait(self.settings.poll_seconds, self.stopping)
                    continue
                slot.job_id = claim.job_id
                try:
                    JobRun(self, slot, claim).run()
                except Exception:
                    log.exception("slot %d: supervising job %d failed", slot.index, claim.job_id)
                finally:
                    slot.job_id = None
        finally:
            wakeups.close()

    def _with_retries(self, operation: Callable[[], T], deadline: float | None = None) -> T:
        """Ride out a database that is briefly locked or unreachable, for at most one lease (or
        until `deadline`, a time.monotonic() value)."""
        deadline = min(deadline or math.inf, time.monotonic() + self.settings.lease_seconds)
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

    def _quietly(self, operation: Callable[[], Any]) -> None:
        try:
            operation()
        except TRANSIENT_ERRORS as exc:
            log.warning("database unavailable: %s", first_line(exc))


@dataclass
class _Reports:
    """What the child has said and the slot has not yet written."""

    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    points: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None


class JobRun:
    """One attempt of one job in one slot."""

    def __init__(self, supervisor: Supervisor, slot: Slot, claim: queue.Claim):
        self.supervisor = supervisor
        self.settings = supervisor.settings
        self.engine = supervisor.engine
        self.slot = slot
        self.claim = claim
        # Every line about this attempt carries its ids (fields of their own in JSON logs).
        self.log = logging.LoggerAdapter(log, {
            "job_id": claim.job_id, "attempt": claim.attempt, "worker_id": supervisor.worker_id, "slot": slot.index,
        })
        self.job_dir = self.settings.job_dir(claim.job_id).resolve()
        self.log_path = self.settings.job_files(claim.job_id).log.resolve()
        self.reports = _Reports()
        self.reports_closed = False
        self.owned = True
        # Our own view of the lease: past it another worker may have taken the job, so the
        # child must be stopped by then even when the database cannot tell us (a partition).
        self.lease_until = time.monotonic() + self.settings.lease_seconds

    def run(self) -> None:
        if self.supervisor.stopping.is_set():
            self._release()  # claimed just as the worker began to stop: no child to start
            return
        self.log.info("slot %d: job %d attempt %d starting on %s", self.slot.index, self.claim.job_id, self.claim.attempt, self.slot.device)
        events: Queue[dict[str, Any] | None] = Queue()
        child = None
        try:
            self.job_dir.mkdir(parents=True, exist_ok=True)
            child = self._spawn(events)
            ending = self._supervise(child, events)
        except Exception as exc:
            # Never leave an unsupervised child training, nor the job running until its lease ends.
            self.log.exception("job %d: supervising it failed", self.claim.job_id)
            if child is not None and child.poll() is None:
                self._kill_child(child)
            reason = f"the worker failed while running this job: {type(exc).__name__}: {first_line(exc)}"
            self._write(lambda: queue.finish(self.engine, self.claim, "failed", error=reason[:2000]))
            return
        if ending == "lost":
            self.log.warning("job %d is no longer ours (lease lost or taken over); stopped it, writing nothing", self.claim.job_id)
        elif ending == "stop":
            self._release()
        elif ending == "cancel":
            self._flush()
            self._write(lambda: queue.finish(self.engine, self.claim, "cancelled", error="cancelled by request"))
            self.log.info("job %d cancelled", self.claim.job_id)
        else:
            self._finish(child.returncode)

    def _release(self) -> None:
        if self._write(lambda: queue.release(self.engine, self.claim)):
            self.log.info("job %d released (worker stopping): queued again, or cancelled if that was asked", self.claim.job_id)

    # ---- The child ------------------------------------------------------------------------------

    def _spawn(self, events: Queue) -> subprocess.Popen:
        read_fd, write_fd = os.pipe()
        env = child_environment(dict(os.environ))
        env.update({
            REPORT_FD_ENV: str(write_fd),
            PARENT_PID_ENV: str(os.getpid()),
            "CUDA_VISIBLE_DEVICES": self.slot.cuda_visible_devices,
            "PYTHONUNBUFFERED": "1",
        })
        env.setdefault("TORCH_HOME", str((self.settings.data_dir / "torch").resolve()))
        spec = {
            "name": self.claim.name,
            "params": self.claim.params,
            "job_dir": str(self.job_dir),
            "data_dir": str(self.settings.data_dir.resolve()),
            "cifar_verify": self.settings.cifar_verify,
        }
        try:
            with self.log_path.open("ab") as log_file:
                log_file.write(f"==== attempt {self.claim.attempt} on {self.supervisor.worker_id} ({self.slot.device})\n".encode())
                log_file.flush()
                child = subprocess.Popen(
                    [sys.executable, "-m", "worker.child"],
                    stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,), env=env, cwd=self.job_dir, start_new_session=True,
                )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            child.stdin.write(json.dumps(spec).encode())
            child.stdin.close()
        except BrokenPipeError:
            pass  # it died at start; its exit code and log say why
        threading.Thread(target=_read_reports, args=(read_fd, events), daemon=True, name=f"reports-{self.claim.job_id}").start()
        return child

    def _supervise(self, child: subprocess.Popen, events: Queue) -> str:
        """Relay reports and renew the lease until the child ends. Says how the attempt ended."""
        next_beat = time.monotonic() + self.settings.heartbeat_seconds
        next_flush = time.monotonic() + PROGRESS_FLUSH_SECONDS
        while child.poll() is None:
            self._relay(events, timeout=0.2)
            now = time.monotonic()
            if self.supervisor.stopping.is_set():
                if child.poll() is not None:
                    break  # it finished meanwhile: record its result rather than run it again
                self._stop_child(child)
                return "stop"
            if now >= next_flush or self.reports.metrics is not None:
                next_flush = now + PROGRESS_FLUSH_SECONDS
                if not self._flush():
                    self._kill_child(child)
                    return "lost"
            if now >= self._give_up_at():
                self.log.warning("job %d: its lease could not be renewed in time; stopping it", self.claim.job_id)
                self.owned = False
                self._kill_child(child)
                return "lost"
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_seconds
                outcome = self._write(lambda: queue.renew(self.engine, self.claim, self.settings.lease_seconds), "lost")
                if outcome in ("ok", "cancel"):
                    self.lease_until = now + self.settings.lease_seconds
                if outcome == "lost":
                    self._kill_child(child)
                    return "lost"
                if outcome == "cancel":
                    if child.poll() is not None:
                        break  # it finished meanwhile: record how
                    self._stop_child(child)
                    self._drain(events)
                    return "cancel"
        self._drain(events)
        return "exited"

    def _stop_child(self, child: subprocess.Popen) -> None:
        """SIGTERM to the child's group, SIGKILL after the grace period."""
        _signal_group(child, signal.SIGTERM)
        try:
            child.wait(timeout=self.settings.cancel_grace_seconds)
        except subprocess.TimeoutExpired:
            self._kill_child(child)

    def _kill_child(self, child: subprocess.Popen) -> None:
        _signal_group(child, signal.SIGKILL)
        child.wait()

    # ---- Reports to fenced writes ---------------------------------------------------------------

    def _take(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.reports.progress = event["progress"]
            if event.get("metrics") is not None:
                self.reports.metrics = event["metrics"]
            self.reports.points.extend(tuple(point) for point in event.get("points", []))
        elif kind == "wandb":
            fields = {key: event.get(key) for key in ("mode", "url", "run_id", "run_dir", "note")}
            self._write(lambda: queue.record_wandb(self.engine, self.claim, **fields), False)
        elif kind == "result":
            self.reports.result = event
        elif kind == "error":
            self.reports.error = str(event.get("reason", ""))[:2000]

    def _relay(self, events: Queue, timeout: float) -> None:
        """Take the next report, waiting at most `timeout` seconds."""
        if self.reports_closed:
            time.sleep(timeout)
            return
        try:
            event = events.get(timeout=timeout)
        except Empty:
            return
        if event is None:
            self.reports_closed = True
        else:
            self._take(event)

    def _drain(self, events: Queue) -> None:
        """After the child exits: its last reports (the result) may still be in the pipe."""
        deadline = time.monotonic() + REPORTS_DRAIN_SECONDS
        while not self.reports_closed and (remaining := deadline - time.monotonic()) > 0:
            self._relay(events, timeout=remaining)

    def _flush(self) -> bool:
        reports = self.reports
        if reports.progress is None and not reports.points:
            return self.owned
        progress, metrics, points = reports.progress or {}, reports.metrics, reports.points
        reports.progress, reports.metrics, reports.points = None, None, []
        return self._write(
            lambda: queue.record_progress(self.engine, self.claim, progress=progress, metrics=metrics, points=points), False
        )

    def _finish(self, returncode: int) -> None:
        if not self._flush():
            return
        result = self.reports.result
        if returncode == 0 and result is not None:
            self._write(lambda: queue.finish(
                self.engine, self.claim, "succeeded", metrics=result["metrics"], artifacts=result["artifacts"]
            ))
            self.log.info("job %d succeeded", self.claim.job_id)
            return
        reason = self.reports.error or self._exit_reason(returncode)
        self._write(lambda: queue.finish(self.engine, self.claim, "failed", error=reason))
        self.log.info("job %d failed: %s", self.claim.job_id, reason)

    def _exit_reason(self, returncode: int) -> str:
        if returncode < 0:
            how = f"was killed by {_signal_name(-returncode)}"
        else:
            how = f"exited with code {returncode}"
        tail = [line.strip() for line in _tail_lines(self.log_path, LOG_TAIL_LINES) if line.strip()]
        last = f"; last output: {' | '.join(tail)[-800:]}" if tail else ""
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return f"the training process {how}{hint} without a result{last}"

    def _give_up_at(self) -> float:
        """A heartbeat before the lease ends, so a hung call still ends before the lease does."""
        return self.lease_until - self.settings.heartbeat_seconds

    def _write(self, operation: Callable[[], T], lost: T = False) -> T:
        """A fenced write; once one finds the job is not ours, nothing more is written."""
        if not self.owned:
            return lost
        try:
            outcome = self.supervisor._with_retries(operation, deadline=self._give_up_at())
        except DatabaseUnavailable:
            outcome = lost
        if outcome is False or outcome == "lost":
            self.owned = False
        return outcome


def _read_reports(fd: int, events: Queue) -> None:
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as stream:
        for line in stream:
            try:
                events.put(json.loads(line))
            except json.JSONDecodeError:
                log.warning("unreadable report from a training child: %r", line[:200])
    events.put(None)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # real-time signals have no name
        return f"signal {signum}"


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass


def _tail_lines(path: Path, count: int) -> list[str]:
    try:
        with path.open("rb") as stream:
            stream.seek(0, 2)
            stream.seek(max(0, stream.tell() - 8192))
            return stream.read().decode("utf-8", errors="replace").splitlines()[-count:]
    except FileNotFoundError:
        return []
