"""`trainboard sync`: upload the offline W&B runs of finished jobs, on the worker's host.

A job whose worker had no W&B key (or whose online init failed) logs offline: each attempt leaves a
run folder in the job's W&B folder (`<artifacts>/jobs/<id>/wandb/offline-run-*`). `wandb sync`
uploads them with this host's W&B credentials (the environment, or WANDB_* in .env as the worker
reads them); once it has, the job is recorded as online with its run's URL, so its page and its
JSON link to the run.
"""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from app import queue, reads
from app.db import get_engine, migrate
from app.models import FINISHED_STATUSES, Job
from app.settings import get_settings
from worker.cli import load_wandb_environment

# wandb sync prints, for each run it uploaded: "[project/run id] View run <name> at <url>".
VIEW_RUN = re.compile(r"View run .* at (\S+/runs/([^/\s]+))\s*$", re.MULTILINE)


class SyncFailed(RuntimeError):
    """A job's runs were not uploaded; the message says why in one line."""


def run_folders(job: Job) -> list[Path]:
    """Every attempt's offline run folder on this host: the one the job records and those beside it
    in the job's W&B folder (each attempt starts a run of its own there)."""
    recorded = Path(job.wandb_dir)
    return sorted(folder for folder in recorded.parent.glob("offline-run-*") if any(folder.glob("*.wandb")))


def upload(job: Job, folders: list[Path]) -> str | None:
    """`wandb sync` the folders; the URL of the job's recorded run, which W&B prints. SyncFailed
    unless every folder was uploaded (wandb sync marks each with a .wandb.synced file)."""
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", *map(str, folders)],
        capture_output=True, text=True, env=os.environ, stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    unsynced = [folder for folder in folders if not any(folder.glob("*.wandb.synced"))]
    if unsynced:
        raise SyncFailed(f"wandb sync did not upload {', '.join(folder.name for folder in unsynced)}: {_reason(output)}")
    urls = {run_id: url for url, run_id in VIEW_RUN.findall(output)}
    return urls.get(job.wandb_run_id or "")


def _reason(output: str) -> str:
    """W&B's own error, from what wandb sync printed: its first error line other than where its logs are."""
    lines = [line.removeprefix("wandb:").strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "Error")) and "detailed error logs" not in line]
    reason = (errors or lines or ["it printed nothing"])[0]
    return reason.removeprefix("ERROR").strip().removeprefix("Error:").strip()


def _why_not(job: Job) -> str:
    """Why a job chosen by its id has no offline run to upload."""
    if job.status not in FINISHED_STATUSES:
        return f"job {job.id} is {job.status}; sync its run once it has finished"
    return f"job {job.id} has no offline W&B run (its W&B mode is {job.wandb_mode or 'not set'})"


def run_sync(job_id: int | None, out: TextIO) -> int:
    """Upload one job's offline runs (job_id), or those of every finished job on this host (None).
    Exit code: 0 all uploaded (or nothing to upload), 2 one or more were not, or the job is unknown."""
    load_wandb_environment()
    settings = get_settings()
    engine = get_engine(settings.database_url)
    migrate(engine)
    jobs = reads.offline_runs(engine, job_id)
    if job_id is not None and not jobs:
        try:
            job = queue.get_job(engine, job_id)
        except queue.JobNotFound as exc:
            print(f"trainboard: {exc}", file=sys.stderr)
            return 2
        if job.wandb_mode == "online" and job.wandb_url:
            print(f"job {job.id} is already on W&B: {job.wandb_url}", file=out)
            return 0
        print(f"trainboard: {_why_not(job)}", file=sys.stderr)
        return 2
    if not jobs:
        print("no finished job has an offline W&B run to upload", file=out)

    failed = 0
    for job in jobs:
        folders = run_folders(job)
        if not folders:
            where = f"its run folder {job.wandb_dir} is not on this host; run trainboard sync where job {job.id} ran"
            if job_id is None:
                print(f"job {job.id} skipped: {where}", file=out)
                continue
            print(f"trainboard: job {job.id} not synced: {where}", file=sys.stderr)
            return 2
        try:
            url = upload(job, folders)
        except SyncFailed as exc:
            print(f"trainboard: job {job.id} not synced: {exc}", file=sys.stderr)
            failed += 1
            continue
        queue.record_synced(engine, job.id, url=url)
        runs = f"{len(folders)} runs" if len(folders) > 1 else "its run"
        print(f"job {job.id} synced ({runs}): {url or 'W&B printed no run URL'}", file=out)
    return 2 if failed else 0
