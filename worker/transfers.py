"""What a worker slot moves between its host's scratch folder and the artifact store: the
checkpoints its child writes (uploaded in the background as they come, the last one kept), the
checkpoint a resumed attempt starts from (downloaded and verified), and the final model.

The child never touches the store (it never holds its credentials); only the slot does.
"""

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.store import ArtifactStore, StoreError, StoreMisconfigured
from worker.protocol import CheckpointSaved

log = logging.getLogger("trainboard.worker")

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
MODEL_UPLOAD_SECONDS = 300.0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_checkpoint(store: ArtifactStore, checkpoint: dict[str, Any], folder: Path) -> tuple[Path | None, str | None]:
    """The job's last checkpoint as a verified local file, or (None, why not) when it is missing or
    corrupt (its size and SHA-256 are recorded with it). StoreUnavailable propagates: the host
    cannot reach the store, which is not the job's fault."""
    local = folder / "resume" / Path(checkpoint["key"]).name
    try:
        store.get_file(checkpoint["key"], local)
    except FileNotFoundError:
        return None, f"its last checkpoint {checkpoint['key']} is missing from the store"
    except StoreMisconfigured:
        raise
    if local.stat().st_size != checkpoint.get("size") or sha256_of(local) != checkpoint.get("sha256"):
        local.unlink(missing_ok=True)
        return None, f"its last checkpoint {checkpoint['key']} is corrupt (size or checksum differs)"
    return local, None


def upload_with_retries(store: ArtifactStore, local: Path, key: str, seconds: float, stopped: threading.Event | None = None) -> int:
    """Upload, retrying an unreachable store with backoff for up to `seconds`; a misconfigured
    store fails at once. Returns the size."""
    deadline = time.monotonic() + seconds
    delay = RETRY_FIRST_SECONDS
    while True:
        try:
            return store.put_file(local, key)
        except StoreMisconfigured:
            raise
        except StoreError as exc:
            if time.monotonic() + delay > deadline or (stopped is not None and stopped.is_set()):
                raise
            log.warning("uploading %s failed, retrying in %.0fs: %s", key, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


class CheckpointUploads:
    """Uploads each checkpoint the child reports, newest first (one superseded before its turn is
    skipped), records it through `record` (a fenced write: False means the job is no longer ours),
    then removes the previous one from the store and the local file. An unreachable store is
    retried; training goes on meanwhile and the job page shows the last committed checkpoint."""

    def __init__(self, store: ArtifactStore, job_id: int, attempt: int, record: Callable[[dict[str, Any]], bool],
                 previous_key: str | None):
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.record = record
        self.previous_key = previous_key
        self.committed: CheckpointSaved | None = None
        self.error: str | None = None
        self._pending: CheckpointSaved | None = None
        self._condition = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"checkpoints-{job_id}")
        self._thread.start()

    def add(self, saved: CheckpointSaved) -> None:
        with self._condition:
            if self._pending is not None:
                self._pending.path.unlink(missing_ok=True)
            self._pending = saved
            self._condition.notify_all()

    def wait(self, timeout: float) -> bool:
        """Until nothing is pending or uploading; says whether that happened in time."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._pending is not None or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _run(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            with self._condition:
                while self._pending is None and not self._closed:
                    self._condition.wait()
                if self._pending is None:
                    return
                saved, self._pending, self._busy = self._pending, None, True
            try:
                self._upload(saved)
                delay = RETRY_FIRST_SECONDS
            except StoreError as exc:
                self.error = str(exc)
                log.warning("job %d: checkpoint upload failed, retrying in %.0fs: %s", self.job_id, delay, exc)
                with self._condition:
                    if self._pending is None and not self._closed:
                        self._pending = saved  # retry it unless a newer one came meanwhile
                    else:
                        saved.path.unlink(missing_ok=True)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _upload(self, saved: CheckpointSaved) -> None:
        key = self.store.key(self.job_id, f"checkpoint-a{self.attempt}-e{saved.epoch}-b{saved.batch}.pt")
        digest = sha256_of(saved.path)
        size = self.store.put_file(saved.path, key)
        checkpoint = {
            "epoch": saved.epoch, "batch": saved.batch, "step": saved.step, "progress": saved.progress,
            "at": datetime.now(timezone.utc).isoformat(), "key": key, "size": size, "sha256": digest,
        }
        if not self.record(checkpoint):
            self.store.delete(key)
            return
        self.committed, self.error = saved, None
        saved.path.unlink(missing_ok=True)
        if self.previous_key and self.previous_key != key:
            try:
                self.store.delete(self.previous_key)
            except StoreError as exc:
                log.warning("job %d: could not remove the previous checkpoint %s: %s", self.job_id, self.previous_key, exc)
        self.previous_key = key
