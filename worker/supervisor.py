"""A worker: one slot per GPU (or one CPU slot), each claiming jobs and running them one attempt at
a time, each in a training process of its own that the slot started ahead of the claim
(worker/jobrun.py), while the worker heartbeats, reaps jobs whose worker was lost, and stops
claiming on shutdown. Transactions stay short: nothing is held open while a child trains.
"""

import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ByteSize
from sqlalchemy import Engine

from app import queue, recipes, sweeps
from app.models import Worker
from app.settings import Settings
from worker import memory
from worker.gpus import Nvml
from app.store import StoreError
from worker.jobrun import ChildLauncher, HostFault, JobRun
from worker.reporter import first_line
from worker.retries import TRANSIENT_ERRORS, DatabaseUnavailable, with_retries

log = logging.getLogger("trainboard.worker")


HOST_FAULT_FIRST_BACKOFF_SECONDS = 2.0
HOST_FAULT_MAX_BACKOFF_SECONDS = 60.0


@dataclass
class Slot:
    index: int
    device: str  # "cpu" or "cuda:N" as the host numbers it
    gpu_name: str | None = None
    job_id: int | None = None
    problem: str | None = None  # why it does not claim now (a host fault), shown on /workers
    memory_ceiling: int | None = None  # of its training process, when that trains on the CPU (worker/memory.py)

    @property
    def cuda_visible_devices(self) -> str:
        return self.device.removeprefix("cuda:") if self.device.startswith("cuda:") else ""

    def public(self, nvml: Nvml | None = None) -> dict[str, Any]:
        """What the workers table shows; with NVML, the GPU's utilisation and memory too."""
        record = {"index": self.index, "device": self.device, "gpu_name": self.gpu_name, "job_id": self.job_id}
        if self.problem:
            record["problem"] = self.problem
        if nvml is not None and self.device.startswith("cuda:"):
            record["gpu"] = nvml.sample(int(self.cuda_visible_devices))
        return record


class Supervisor:
    def __init__(self, settings: Settings, engine: Engine, slots: list[Slot], nvml: Nvml | None = None):
        self.settings = settings
        self.engine = engine
        self.slots = slots
        self.nvml = nvml
        self.worker_id = f"{settings.host_name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.recipes = recipes.registry()  # what it registers, and the only jobs its slots claim
        for slot in slots:
            slot.memory_ceiling = memory.slot_ceiling(settings.job_memory, len(slots))

    # ---- Lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        found = self.recipes
        queue.register_worker(self.engine, Worker(
            id=self.worker_id, host=self.settings.host_name, pid=os.getpid(), store=self.settings.store.public_url,
            slots=[s.public(self.nvml) for s in self.slots], recipes=found.versions(), recipe_errors=found.errors,
        ))
        log.info("worker %s runs the recipes %s", self.worker_id, ", ".join(f"{n} {v}" for n, v in found.versions().items()))
        for source, error in found.errors.items():
            log.error("recipe not loaded from %s: %s (see /workers)", source, error)
        log.info("worker %s started with %d slot(s): %s; a training on the CPU may use %s (TRAINBOARD_JOB_MEMORY)",
                 self.worker_id, len(self.slots), ", ".join(s.device for s in self.slots),
                 ByteSize(self.slots[0].memory_ceiling).human_readable())
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
        launcher = ChildLauncher(self.settings, slot)
        backoff = HOST_FAULT_FIRST_BACKOFF_SECONDS
        try:
            while not self.stopping.is_set():
                if slot.problem and not self._host_recovered(slot):
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, HOST_FAULT_MAX_BACKOFF_SECONDS)
                    continue
                backoff = HOST_FAULT_FIRST_BACKOFF_SECONDS
                launcher.prepare_next()
                wakeups.listen()
                self._advance_sweeps()
                try:
                    claim = with_retries(
                        lambda: queue.claim(
                            self.engine, self.worker_id, self.settings.lease_seconds, self.settings.host_name,
                            recipes=self.recipes.recipes,
                        ),
                        self.settings.lease_seconds,
                    )
                except DatabaseUnavailable:
                    continue
                if claim is None:
                    wakeups.wait(self.settings.poll_seconds, self.stopping)
                    continue
                slot.job_id = claim.job_id
                try:
                    JobRun(self.settings, self.engine, self.worker_id, slot, claim, self.stopping, wakeups, launcher).run()
                except HostFault as exc:
                    slot.problem = f"job {claim.job_id}: {exc}"
                    log.warning("slot %d unhealthy: job %d %s; it went back to the queue and this slot claims no "
                                "more until the host recovers", slot.index, claim.job_id, exc)
                except Exception:
                    log.exception("slot %d: supervising job %d failed", slot.index, claim.job_id)
                finally:
                    slot.job_id = None
        finally:
            launcher.close()
            wakeups.close()

    def _advance_sweeps(self) -> None:
        """Queue the next trials of running sweeps, so that they go on whichever processes live."""
        try:
            sweeps.advance(self.engine, self.settings)
        except Exception as exc:  # a sweep that cannot advance must not stop this slot from claiming
            log.warning("could not advance the sweeps: %s", first_line(exc))

    def _host_recovered(self, slot: Slot) -> bool:
        """Whether this host can run jobs again: its scratch folder takes a file, its store answers."""
        try:
            self._probe_scratch()
            self.settings.store.probe()
        except (OSError, StoreError):
            return False
        log.info("slot %d: the host recovered (%s); claiming jobs", slot.index, slot.problem)
        slot.problem = None
        return True

    def _probe_scratch(self) -> None:
        self.settings.work_dir.mkdir(parents=True, exist_ok=True)
        probe = self.settings.work_dir / f".probe-{self.worker_id}"
        try:
            probe.write_bytes(b"probe")
        finally:
            probe.unlink(missing_ok=True)

    def _quietly(self, operation: Callable[[], Any]) -> None:
        try:
            operation()
        except TRANSIENT_ERRORS as exc:
            log.warning("database unavailable: %s", first_line(exc))
