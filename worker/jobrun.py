"""One attempt of one job in one slot, in parts that each own one concern.

- `ChildProcess` starts a training child (`python -m worker.child`) with the slot's environment,
  hands it one job (its ChildSpec on stdin), and stops it, as a process group, or asks it to
  checkpoint where it is and exit. `ChildLauncher` gives each attempt its own process, started
  ahead of the claim (warm: its imports done) unless TRAINBOARD_WARM_CHILD is off.
- `LogRelay` copies the child's output to the scratch folder's log and hands it over in chunks
  for the database, so any host's app shows it.
- `EventPump` reads the child's events off the pipe and buffers progress and metrics until the
  next flush; it keeps the result or the failure for the end. Checkpoints go to
  worker/transfers.py's uploads, examples to the database.
- `Lease` renews the job's lease every heartbeat and fences every write; once one finds the job is
  not ours, or the lease cannot be renewed in time, nothing more is written.
- `JobRun` coordinates them until the child ends, and records how the attempt ended (`Ending`).
"""

import base64
import contextlib
import io
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ByteSize, ValidationError
from sqlalchemy import Engine

from app import queue, recipes, sweeps
from app.models import JobStatus
from app.recipes import RECIPES_ENV, RecipeMismatch
from app.settings import JobFiles, Settings, wandb_environment
from app.store import StoreError, StoreMisconfigured, StoreUnavailable
from worker.child import OUTPUT_FD_ENV, PARENT_PID_ENV
from worker.gpus import device_label
from worker.protocol import (
    CHECKPOINT_SIGNAL, CheckpointSaved, ChildSpec, Event, Examples, Failure, Progress, Result, WandbStarted, decode,
)
from worker.reporter import REPORT_FD_ENV, first_line
from worker.retries import TRANSIENT_ERRORS, DatabaseUnavailable, with_retries
from worker.transfers import MODEL_UPLOAD_SECONDS, CheckpointUploads, fetch_checkpoint, upload_with_retries

if TYPE_CHECKING:
    from worker.supervisor import Slot

log = logging.getLogger("trainboard.worker")

PROGRESS_FLUSH_SECONDS = 1.0
# How long the reports of an exited child may lag behind its exit (a grandchild holding the pipe).
REPORTS_DRAIN_SECONDS = 5.0
LOG_TAIL_LINES = 5
LOG_TAIL_BYTES = 8192
LOG_CHUNK_BYTES = 64 * 1024
# What a training process printed before it had its job: its last bytes are kept for the job's log.
STARTUP_OUTPUT_BYTES = 64 * 1024
# The longest wait before replacing a process that died waiting for its job, when they keep dying.
SPARE_MAX_BACKOFF_SECONDS = 60.0
# How long a child asked to checkpoint and exit (pause, worker stop) may take before it is stopped.
CHECKPOINT_GRACE_SECONDS = 60.0
# What a training child may inherit: the system's basics, the GPU stack, threading knobs, proxies
# and certificates for W&B, and W&B's own settings. Nothing else: not the database URL, not the
# dashboard's token, not unrelated secrets of the worker's environment.
CHILD_ENVIRONMENT_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TMPDIR", "TERM", "VIRTUAL_ENV",
    "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    RECIPES_ENV,
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
    PAUSED = "paused"  # a pause was asked for: the job waits, paused, at its checkpoint
    CANCELLED = "cancelled"  # a cancel was asked for: the job ends cancelled
    PRUNED = "pruned"  # its sweep's early termination stopped it after an epoch: the job ends pruned
    LOST = "lost"  # the job is no longer ours: nothing more is written


# ---------------------------------------------------------------------------------------------
# Starting and stopping the child
# ---------------------------------------------------------------------------------------------


def slot_environment(settings: Settings, slot: "Slot") -> dict[str, str]:
    """What each of the slot's training processes starts with, before it has a job. Never W&B's
    API key: only a job that may run online gets it (`job_environment`)."""
    env = wandb_environment(child_environment(os.environ), "disabled")
    env.setdefault("TORCH_HOME", str((settings.data_dir / "torch").resolve()))
    env.update({
        PARENT_PID_ENV: str(os.getpid()),
        "CUDA_VISIBLE_DEVICES": slot.cuda_visible_devices,
        "PYTHONUNBUFFERED": "1",
    })
    return env


def job_environment(params: BaseModel) -> dict[str, str]:
    """What a job adds to the slot's environment: W&B's API key, unless the job runs offline or disabled."""
    job = wandb_environment(child_environment(os.environ), params.wandb_mode)
    started_with = wandb_environment(job, "disabled")
    return {name: value for name, value in job.items() if name not in started_with}


def child_spec(
    settings: Settings, slot: "Slot", claim: queue.Claim, files: JobFiles, resume_from: Path | None,
) -> ChildSpec:
    params = recipes.registry().get(claim.recipe).stored_params(claim.params, where="on this worker")
    return ChildSpec(
        name=claim.name,
        recipe=claim.recipe,
        params=params,
        job_dir=files.root.resolve(),
        data_dir=settings.data_dir.resolve(),
        cifar_verify=settings.cifar_verify,
        attempt=claim.attempt,
        resume_from=resume_from,
        environment=job_environment(params),
        wandb_group=claim.wandb_group,
        sweep_id=claim.sweep_id,
        memory_ceiling=slot.memory_ceiling,
        max_histograms=settings.max_histograms,
    )


class StartupOutput:
    """What a training process prints before it has its job (warnings of its imports, or why it
    died waiting), read as it comes so that it never blocks, the last STARTUP_OUTPUT_BYTES kept.
    It ends when the process takes its job (its output moves to the job's pipe) or exits."""

    def __init__(self, stream: io.BufferedReader, name: str):
        self._kept = bytearray()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True, name=name)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bytes:
        """All of it once it ended; after `timeout`, what came so far."""
        self._thread.join(timeout)
        return bytes(self._kept)

    def _read(self, stream: io.BufferedReader) -> None:
        with stream:
            while chunk := stream.read1(LOG_CHUNK_BYTES):
                self._kept += chunk
                del self._kept[:-STARTUP_OUTPUT_BYTES]


class ChildProcess:
    """A training process in a process group of its own (worker/child.py). It starts with the
    slot's environment and no job, imports the training and waits for one ChildSpec on stdin;
    then it trains that job, reporting on a pipe, and exits. What it printed before it had the
    job (`startup`) and the job's output (`output`) come on pipes of their own."""

    def __init__(self, process: subprocess.Popen, report_fd: int, output: io.BufferedReader, startup: StartupOutput):
        self.process = process
        self.report_fd = report_fd
        self.output = output
        self.startup = startup
        self.started_at = time.monotonic()

    @classmethod
    def spawn(cls, settings: Settings, slot: "Slot") -> "ChildProcess":
        """Start one, in the slot's scratch root until its job names its own folder. Call it from
        the slot's thread, which outlives the process: Linux sends the parent-death signal when
        the thread that started a process ends, not only its process."""
        work_dir = settings.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        env = slot_environment(settings, slot)
        report_read, report_write = os.pipe()
        output_read, output_write = os.pipe()
        env.update({REPORT_FD_ENV: str(report_write), OUTPUT_FD_ENV: str(output_write)})
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker.child"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(report_write, output_write), env=env, cwd=work_dir, start_new_session=True,
            )
        except BaseException:
            os.close(report_read)
            os.close(output_read)
            raise
        finally:
            os.close(report_write)
            os.close(output_write)
        startup = StartupOutput(process.stdout, name=f"startup-{process.pid}")
        return cls(process, report_read, os.fdopen(output_read, "rb"), startup)

    def give(self, spec: ChildSpec) -> bool:
        """Hand it its job; False when it is no longer there to take it."""
        if not self.running:
            return False
        try:
            self.process.stdin.write(spec.model_dump_json().encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            return False
        finally:
            self._close_stdin()
        return True

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def ask_to_checkpoint(self) -> None:
        """The child alone (not its group: W&B's service would die of the signal) finishes its
        batch, checkpoints and exits."""
        try:
            self.process.send_signal(CHECKPOINT_SIGNAL)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM to the child's group: it stops now, closing its W&B run."""
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        self.process.wait()

    def discard(self) -> None:
        """One that never got a job: stopped if it still runs (it has nothing to save), its pipes closed."""
        if self.running:
            self.kill()
        os.close(self.report_fd)
        self.output.close()
        self._close_stdin()

    def _close_stdin(self) -> None:
        """Its stdin, where its job goes, closed (flushing into a pipe whose reader died raises)."""
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


class ChildLauncher:
    """A slot's training processes, one per job attempt. With TRAINBOARD_WARM_CHILD (the default)
    the slot keeps the next one started ahead of its job, imports done, so that a claimed job
    trains seconds sooner; without, each starts at its claim. Either way a process trains one
    job and exits: nothing is shared between jobs. Called only from the slot's thread
    (ChildProcess.spawn says why)."""

    def __init__(self, settings: Settings, slot: "Slot"):
        self.settings = settings
        self.slot = slot
        self.spare: ChildProcess | None = None
        self._deaths = 0  # spares in a row that died waiting
        self._next_spare_at = 0.0

    def prepare_next(self) -> None:
        """Start the next job's process now, unless one waits already; one that died waiting is
        replaced, later and later when they keep dying (a broken environment)."""
        if not self.settings.warm_child:
            return
        if self.spare is not None:
            if self.spare.running:
                return
            self._died_waiting(self.spare)
            self.spare = None
        if time.monotonic() < self._next_spare_at:
            return
        try:
            self.spare = ChildProcess.spawn(self.settings, self.slot)
        except OSError as exc:
            log.warning("slot %d: could not start a training process ahead of its job: %s", self.slot.index, exc)
            self._next_spare_at = time.monotonic() + SPARE_MAX_BACKOFF_SECONDS

    def launch(self, spec: ChildSpec) -> ChildProcess:
        """The process that trains `spec`: the one waiting when it is alive, else a new one."""
        spare, self.spare = self.spare, None
        if spare is not None:
            if spare.give(spec):
                self._deaths = 0
                return spare
            self._died_waiting(spare)
        child = ChildProcess.spawn(self.settings, self.slot)
        child.give(spec)  # one that died at once: its exit code and log say why
        return child

    def close(self) -> None:
        """Stop the process waiting for a job, if any (the worker is stopping)."""
        if self.spare is not None:
            self.spare.discard()
            self.spare = None

    def _died_waiting(self, spare: ChildProcess) -> None:
        spare.discard()
        tail = last_output(spare.startup.wait(timeout=REPORTS_DRAIN_SECONDS).decode("utf-8", errors="replace"))
        self._deaths += 1
        delay = min(2.0 ** self._deaths, SPARE_MAX_BACKOFF_SECONDS)
        log.warning(
            "slot %d: its training process waiting for a job (pid %d) %s; another takes its place in %.0fs%s",
            self.slot.index, spare.pid, how_it_ended(spare.process.returncode), delay,
            f"; last output: {tail}" if tail else "",
        )
        self._next_spare_at = time.monotonic() + delay


def how_it_ended(returncode: int) -> str:
    return f"was killed by {_signal_name(-returncode)}" if returncode < 0 else f"exited with code {returncode}"


def exit_reason(returncode: int, files: JobFiles) -> str:
    """Why a child that left no result ended: its exit code or signal, and its last output."""
    how = how_it_ended(returncode)
    tail = last_output(files.log_tail(LOG_TAIL_BYTES))
    last = f"; last output: {tail}" if tail else ""
    hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
    return f"the training process {how}{hint} without a result{last}"


def over_the_limit(size: int, settings: Settings) -> str:
    """The end of a refusal: the size, and the store's limit per job with its setting."""
    return (
        f"{ByteSize(size).human_readable()} ({size:,} bytes), over the {ByteSize(settings.max_artifact_bytes).human_readable()} "
        "a job may store (TRAINBOARD_MAX_ARTIFACT_BYTES); nothing of it was stored"
    )


def last_output(text: str) -> str:
    """The last few non-blank lines of some output, as one line."""
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    return " | ".join(line.strip() for line in lines if line.strip())[-800:]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # real-time signals have no name
        return f"signal {signum}"


class LogRelay:
    """The child's output: appended to the scratch log as it comes (exit_reason reads its tail),
    and kept for the database until `pending` hands it over with its offset in the attempt.
    What the process printed before it took this job comes first, said to be that."""

    def __init__(self, child: ChildProcess, log_path: Path, header: str, name: str):
        self._log_path = log_path
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._sent = 0  # bytes of this attempt's output handed over so far
        self._append(header.encode())
        threading.Thread(target=self._read, args=(child,), daemon=True, name=name).start()

    def _append(self, data: bytes) -> None:
        with self._log_path.open("ab") as log_file:
            log_file.write(data)
        with self._lock:
            self._pending.append(data)

    def pending(self) -> tuple[int, str] | None:
        """(offset, text) of the output not yet handed over, or None."""
        with self._lock:
            if not self._pending:
                return None
            data, self._pending = b"".join(self._pending), []
            offset, self._sent = self._sent, self._sent + len(data)
        return offset, data.decode("utf-8", errors="replace")

    def _read(self, child: ChildProcess) -> None:
        startup = child.startup.wait()
        if startup:
            self._append(
                f"trainboard: output of the training process (pid {child.pid}) from its start, before it took this job:\n".encode()
                + startup + (b"" if startup.endswith(b"\n") else b"\n")
            )
        with child.output as stream:
            while chunk := stream.read1(LOG_CHUNK_BYTES):
                self._append(chunk)


# ---------------------------------------------------------------------------------------------
# The child's events
# ---------------------------------------------------------------------------------------------


class EventPump:
    """What the child has said and the slot has not yet written. A thread reads the pipe; the slot
    takes the events one at a time. Where the W&B run is goes out at once, through `on_wandb`;
    `on_training` is called once, at the first report of trained batches."""

    def __init__(
        self, report_fd: int, name: str, *, on_wandb: Callable[[WandbStarted], Any],
        on_examples: Callable[[Examples], Any], on_checkpoint: Callable[[CheckpointSaved], Any],
        on_training: Callable[[], Any],
    ):
        self.on_wandb = on_wandb
        self.on_examples = on_examples
        self.on_checkpoint = on_checkpoint
        self.on_training = on_training
        self.training = False
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
            if not self.training and any(kind == "train" for kind, _, _ in event.points):
                self.training = True
                self.on_training()
            self.progress = event.progress
            if event.metrics is not None:
                self.metrics = event.metrics
            self.points.extend(event.points)
        elif isinstance(event, WandbStarted):
            self.on_wandb(event)
        elif isinstance(event, Examples):
            self.on_examples(event)
        elif isinstance(event, CheckpointSaved):
            self.on_checkpoint(event)
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
        """Extend the lease. Says CANCELLED or PAUSED when that was asked for, LOST when the job is not ours."""
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
        return {"cancel": Ending.CANCELLED, "pause": Ending.PAUSED}.get(outcome)


# ---------------------------------------------------------------------------------------------
# The attempt
# ---------------------------------------------------------------------------------------------


class HostFault(RuntimeError):
    """This host cannot run jobs now (its scratch folder cannot be written, its artifact store is
    unreachable): the job went back to the queue without spending its attempt, and the slot
    stops claiming until the host recovers."""


class ArtifactRefused(RuntimeError):
    """A file the training left is not one the store takes (over TRAINBOARD_MAX_ARTIFACT_BYTES, or
    named outside the job's folder): the job fails saying so, and nothing of it is stored."""


class JobRun:
    """One attempt of one job in one slot."""

    def __init__(
        self, settings: Settings, engine: Engine, worker_id: str, slot: "Slot", claim: queue.Claim,
        stopping: threading.Event, wakeups: queue.JobWakeups, launcher: ChildLauncher,
    ):
        self.settings = settings
        self.engine = engine
        self.worker_id = worker_id
        self.slot = slot
        self.claim = claim
        self.claimed_at = time.monotonic()  # a slot makes its JobRun as soon as the claim returns
        self.stopping = stopping
        self.wakeups = wakeups
        self.launcher = launcher
        # Every line about this attempt carries its ids (fields of their own in JSON logs).
        self.log = logging.LoggerAdapter(log, {
            "job_id": claim.job_id, "attempt": claim.attempt, "worker_id": worker_id, "slot": slot.index,
        })
        self.files = JobFiles(settings.scratch_dir(claim.job_id))
        self.lease = Lease(settings, engine, claim)
        self.store = settings.store
        self.pruning: sweeps.Pruning | None = None

    def run(self) -> None:
        if self.stopping.is_set():
            self._release()  # claimed just as the worker began to stop: no child to start
            return
        self.log.info("slot %d: job %d attempt %d starting on %s", self.slot.index, self.claim.job_id, self.claim.attempt, self.slot.device)
        try:
            self.files.root.mkdir(parents=True, exist_ok=True)
            with self.files.log.open("ab"):
                pass
        except OSError as exc:
            self._release()
            raise HostFault(f"cannot write its scratch folder: {exc}") from exc
        device = device_label(self.slot.device, self.slot.gpu_name)
        self.lease.write(lambda: queue.record_run(self.engine, self.claim, host=self.settings.host_name, device=device))
        header = f"==== attempt {self.claim.attempt} on {self.worker_id} ({self.settings.host_name}, {self.slot.device})\n"
        try:
            resume_from, header = self._resume_point(header)
        except StoreUnavailable as exc:
            self._release()
            raise HostFault(str(exc)) from exc
        except StoreMisconfigured as exc:
            self._fail(str(exc))
            return
        child = None
        try:
            child = self.launcher.launch(child_spec(self.settings, self.slot, self.claim, self.files, resume_from))
            output = LogRelay(child, self.files.log, header, name=f"log-{self.claim.job_id}")
            uploads = CheckpointUploads(
                self.store, self.claim.job_id, self.claim.attempt, previous_key=(self.claim.checkpoint or {}).get("key"),
                record=lambda checkpoint: self.lease.write(lambda: queue.record_checkpoint(self.engine, self.claim, checkpoint)),
            )
            events = EventPump(
                child.report_fd, f"reports-{self.claim.job_id}", on_wandb=self._record_wandb,
                on_examples=self._record_examples, on_checkpoint=lambda saved: uploads.add(self._storable(saved)),
                on_training=lambda: self._training_started(child),
            )
            ending = self._supervise(child, events, output, uploads)
            self._flush(events, output)
        except RecipeMismatch as exc:
            self._fail(str(exc)[:1000])
            return
        except ArtifactRefused as exc:
            child.kill()
            self._flush(events, output)
            uploads.close()
            self._fail(str(exc))
            return
        except Exception as exc:
            # Never leave an unsupervised child training, nor the job running until its lease ends.
            self.log.exception("job %d: supervising it failed", self.claim.job_id)
            if child is not None and child.running:
                child.kill()
            self._fail(f"the worker failed while running this job: {type(exc).__name__}: {first_line(exc)}")
            return
        uploads.close()
        if ending is Ending.LOST:
            self.log.warning("job %d is no longer ours (lease lost or taken over); stopped it, writing nothing", self.claim.job_id)
        elif ending is Ending.STOPPED:
            self._release()
        elif ending is Ending.PAUSED:
            self._record("pause", "paused at its checkpoint", lambda: queue.pause(self.engine, self.claim))
        elif ending is Ending.CANCELLED:
            self._record("cancel", "cancelled", lambda: queue.finish(
                self.engine, self.claim, JobStatus.CANCELLED, error="cancelled by request"
            ))
        elif ending is Ending.PRUNED:
            pruning = self.pruning
            self._record("pruning", f"pruned: {pruning.message}", lambda: queue.finish(
                self.engine, self.claim, JobStatus.PRUNED, pruned=pruning.as_dict()
            ))
        else:
            self._finish(child.returncode, events, output)

    def _resume_point(self, header: str) -> tuple[Path | None, str]:
        """The local copy of the job's last checkpoint, verified, with the job's history moved to
        this attempt; None (and a line in the log saying why) to start from scratch."""
        checkpoint = self.claim.checkpoint
        self.store.probe()
        if checkpoint is None:
            return None, header
        local, problem = fetch_checkpoint(self.store, checkpoint, self.files.root)
        if local is None:
            self.log.warning("job %d: %s; starting from scratch", self.claim.job_id, problem)
            return None, header + f"trainboard: {problem}; this attempt starts from scratch\n"
        self.lease.write(lambda: queue.start_from_checkpoint(self.engine, self.claim))
        where = f"epoch {checkpoint['epoch']}" + (f", batch {checkpoint['batch']}" if checkpoint["batch"] else "")
        return local, header + f"trainboard: resuming from the checkpoint after {where}\n"

    def _supervise(self, child: ChildProcess, events: EventPump, output: LogRelay, uploads: CheckpointUploads) -> Ending:
        """Relay events and renew the lease until the child ends. Says how the attempt ended."""
        ending = self._while_renewing(lambda: not child.running, events, output)
        if ending is None:
            events.drain()
            return Ending.EXITED
        if ending is Ending.LOST:
            child.kill()
            return ending
        if not child.running:
            events.drain()
            return Ending.EXITED  # it finished meanwhile: record its result rather than run it again
        if ending in (Ending.CANCELLED, Ending.PRUNED):
            child.terminate()
            if self._stop_child(child, events, output, self.settings.cancel_grace_seconds, (child.kill,)) is Ending.LOST:
                return Ending.LOST
            return ending
        # Paused or stopping: the child checkpoints where it is, and the checkpoint is uploaded,
        # while the lease is kept.
        child.ask_to_checkpoint()
        grace = max(self.settings.cancel_grace_seconds, CHECKPOINT_GRACE_SECONDS)
        if self._stop_child(child, events, output, grace, (child.terminate, child.kill)) is Ending.LOST:
            return Ending.LOST
        uploaded = threading.Event()
        threading.Thread(target=lambda: (uploads.wait(grace), uploaded.set()), daemon=True).start()
        if self._while_renewing(uploaded.is_set, events, output, timeout=grace, watch=False) is Ending.LOST:
            return Ending.LOST
        if events.result is not None and child.returncode == 0:
            return Ending.EXITED  # it finished before it saw the request: its result stands
        return ending

    def _stop_child(
        self, child: ChildProcess, events: EventPump, output: LogRelay, grace: float, escalation: tuple[Callable[[], None], ...],
    ) -> Ending | None:
        """Wait for a child asked to stop, keeping the lease (a stop must never cost the attempt);
        each step of `escalation` (SIGTERM, SIGKILL) when it takes longer than `grace`."""
        for signal_next in escalation:
            if self._while_renewing(lambda: not child.running, events, output, timeout=grace, watch=False) is Ending.LOST:
                child.kill()
                return Ending.LOST
            if not child.running:
                break
            self.log.warning("job %d: the training process did not stop within %.0fs; stopping it harder", self.claim.job_id, grace)
            signal_next()
            grace = self.settings.cancel_grace_seconds
        events.drain()
        return None

    def _while_renewing(
        self, done: Callable[[], bool], events: EventPump, output: LogRelay, *, timeout: float | None = None,
        watch: bool = True,
    ) -> Ending | None:
        """Relay events, flush, and renew the lease until done() (None), the timeout (None), or an
        ending: the job lost, or (with `watch`) a cancel, pause or stop asked for."""
        started = time.monotonic()
        next_beat = started + self.settings.heartbeat_seconds
        next_flush = started + PROGRESS_FLUSH_SECONDS
        while not done():
            events.take(timeout=0.2)
            now = time.monotonic()
            if timeout is not None and now - started > timeout:
                return None
            if watch and self.stopping.is_set():
                return Ending.STOPPED
            if now >= next_flush or events.metrics is not None:
                next_flush = now + PROGRESS_FLUSH_SECONDS
                epoch_ended = events.metrics is not None
                if not self._flush(events, output):
                    return Ending.LOST
                if watch and epoch_ended and self._pruned():
                    return Ending.PRUNED
            if watch and self._ending_requested():
                next_beat = now  # renew now: the renewal says which ending
            if now >= self.lease.give_up_at():
                self.log.warning("job %d: its lease could not be renewed in time; stopping it", self.claim.job_id)
                self.lease.owned = False
                return Ending.LOST
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_seconds
                renewal = self.lease.renew()
                if renewal is Ending.LOST or (watch and renewal is not None):
                    return renewal
        return None

    def _pruned(self) -> bool:
        """After a sweep trial's epoch is stored: whether its sweep's early termination stops it."""
        if self.claim.sweep_id is None:
            return False
        try:
            self.pruning = sweeps.judge(self.engine, self.claim)
        except TRANSIENT_ERRORS:
            return False  # judged again after the next epoch
        if self.pruning is not None:
            self.log.info("job %d: %s", self.claim.job_id, self.pruning.message)
        return self.pruning is not None

    def _training_started(self, child: ChildProcess) -> None:
        """Its first batches are trained: the seconds since the claim are what starting costs a
        job. The slot's next process starts now, its imports no longer slowing this one's start."""
        ahead = self.claimed_at - child.started_at
        self.log.info(
            "job %d: first batches trained %.2f s after its claim, in a process started %s", self.claim.job_id,
            time.monotonic() - self.claimed_at, f"{ahead:.1f} s before the claim" if ahead > 0 else "for it",
        )
        if not self.stopping.is_set():
            self.launcher.prepare_next()

    def _ending_requested(self) -> bool:
        """Whether a cancel or pause was asked for since the last look; a look only when the
        database may have changed (JobWakeups), so a cancel lands well before the next renewal."""
        try:
            return self.wakeups.changed() and queue.ending_requested(self.engine, self.claim)
        except TRANSIENT_ERRORS:
            return False  # the next renewal will tell, retrying as it does

    # ---- What gets written ----------------------------------------------------------------------

    def _record_wandb(self, event: WandbStarted) -> None:
        fields = event.model_dump(exclude={"event"})
        self.lease.write(lambda: queue.record_wandb(self.engine, self.claim, host=self.settings.host_name, **fields))

    def _record_examples(self, event: Examples) -> None:
        examples = [(example.caption, base64.b64decode(example.png_base64)) for example in event.examples]
        self.lease.write(lambda: queue.record_examples(self.engine, self.claim, event.epoch, examples))

    def _flush(self, events: EventPump, output: LogRelay) -> bool:
        chunk = output.pending()
        if chunk is not None:
            offset, text = chunk
            max_bytes = self.settings.log_max_bytes
            if not self.lease.write(lambda: queue.append_log(self.engine, self.claim, offset, text, max_bytes=max_bytes)):
                return False
        pending = events.pending()
        if pending is None:
            return self.lease.owned
        progress, metrics, points = pending
        return self.lease.write(lambda: queue.record_progress(
            self.engine, self.claim, progress=progress, metrics=metrics, points=points, max_points=self.settings.max_train_points,
        ))

    def _record(self, what: str, done: str, operation: Callable[[], bool]) -> None:
        """A fenced write of how the attempt ended, and a log line saying whether it was recorded."""
        if self.lease.write(operation):
            self.log.info("job %d %s", self.claim.job_id, done)
        else:
            self.log.warning("job %d: its %s was not recorded: the job is no longer this worker's", self.claim.job_id, what)

    def _release(self) -> None:
        self._record(
            "release", "released: queued again without spending its attempt, or cancelled if that was asked",
            lambda: queue.release(self.engine, self.claim),
        )

    def _fail(self, reason: str) -> None:
        self._record(
            "failure", f"failed: {reason}",
            lambda: queue.finish(self.engine, self.claim, JobStatus.FAILED, error=reason[:2000]),
        )

    def _storable(self, saved: CheckpointSaved) -> CheckpointSaved:
        """A checkpoint within the store's limit; ArtifactRefused, its file removed, for one over it."""
        size = saved.path.stat().st_size
        if size > self.settings.max_artifact_bytes:
            saved.path.unlink(missing_ok=True)
            raise ArtifactRefused(f"its checkpoint {saved.path.name} is {over_the_limit(size, self.settings)}")
        return saved

    def _result_files(self, result: Result) -> dict[str, Path]:
        """The files the result names, by name: each in the job's scratch folder, together within
        the store's limit (as the worker measures them, whatever the training reported)."""
        files = {}
        for artifact in result.artifacts:
            name = str(artifact.get("name", ""))
            if not JobFiles.plain_name(name):
                raise ArtifactRefused(f"it named a file outside its folder: {name[:200]!r}")
            files[name] = self.files.root / name
        size = sum(path.stat().st_size for path in files.values())
        if size > self.settings.max_artifact_bytes:
            raise ArtifactRefused(f"its files ({', '.join(files)}) are {over_the_limit(size, self.settings)}")
        return files

    def _finish(self, returncode: int, events: EventPump, output: LogRelay) -> None:
        result = events.result
        if returncode != 0 or result is None:
            self._fail(events.failure or exit_reason(returncode, self.files))
            return
        try:
            artifacts = self._upload_artifacts(self._result_files(result), events, output)
        except ArtifactRefused as exc:
            self._fail(f"training finished, but {exc}")
            return
        except FileNotFoundError as exc:
            self._fail(f"training finished, but a file it named is missing: {exc.filename}")
            return
        except StoreError as exc:
            self._fail(f"training finished but its model could not be stored: {exc}")
            return
        if artifacts is None:
            return  # lost while uploading
        self._record("result", "succeeded", lambda: queue.finish(
            self.engine, self.claim, JobStatus.SUCCEEDED, metrics=result.metrics, artifacts=artifacts
        ))

    def _upload_artifacts(self, files: dict[str, Path], events: EventPump, output: LogRelay) -> list[dict[str, Any]] | None:
        """Upload the files the child left in its scratch folder, keeping the lease meanwhile;
        an unreachable store is retried with backoff. None when the job was lost meanwhile."""
        uploaded: list[dict[str, Any]] = []
        failure: list[StoreError] = []
        stopped = threading.Event()

        def upload() -> None:
            try:
                for name, path in files.items():
                    key = self.store.key(self.claim.job_id, name)
                    size = upload_with_retries(self.store, path, key, MODEL_UPLOAD_SECONDS, stopped)
                    uploaded.append({
                        "name": name, "size": size, "key": key, "store": self.store.public_url,
                        "host": self.settings.host_name,
                    })
            except StoreError as exc:
                failure.append(exc)

        thread = threading.Thread(target=upload, daemon=True, name=f"upload-{self.claim.job_id}")
        thread.start()
        ending = self._while_renewing(lambda: not thread.is_alive(), events, output, watch=False)
        stopped.set()
        if ending is Ending.LOST:
            return None
        thread.join()
        if failure:
            raise failure[0]
        return uploaded
