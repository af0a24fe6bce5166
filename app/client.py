"""`trainboard submit | status | list | logs | cancel | retry | download`: the HTTP API from a shell
or a script (httpx), at $TRAINBOARD_URL with $TRAINBOARD_TOKEN."""

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from app.formatting import epoch_phrase, short_age
from app.forms import form_fields, split_tags
from app.models import FINISHED_STATUSES, JobStatus

DEFAULT_URL = "http://127.0.0.1:8000"
WAIT_POLL_SECONDS = 1.0
# The most of a log one request returns (the API's own bound).
LOG_CHUNK_BYTES = 1_000_000


class ClientError(RuntimeError):
    """The server could not be reached or refused the request; the message says why."""


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """key=value pairs; values parse as JSON where they can (2, 0.05, true, ["a"]), else strings.
    A string for a list field is comma-separated, as the form takes it (tags=sweep, tags=a,b)."""
    list_fields = {field["name"] for field in form_fields() if field["kind"] == "tags"}
    params: dict[str, Any] = {}
    for assignment in assignments:
        key, separator, raw = assignment.partition("=")
        if not separator or not key:
            raise ClientError(f"expected key=value, got {assignment!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
        if key in list_fields and isinstance(params[key], str):
            params[key] = split_tags(params[key])
    return params


class Client:
    def __init__(self, url: str | None = None, token: str | None = None):
        self.url = (url or os.environ.get("TRAINBOARD_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("TRAINBOARD_TOKEN")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    @contextmanager
    def _response(self, method: str, path: str, **kwargs) -> Iterator[httpx.Response]:
        """The answer to a request, streamed; a refusal or an unreachable server as ClientError."""
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if not response.is_success:
                    response.read()
                    raise ClientError(f"{method} {path} answered {response.status_code}: {_detail(response)}")
                yield response
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach trainboard at {self.url}: {exc}") from None

    def _request(self, method: str, path: str, **kwargs) -> Any:
        with self._response(method, path, **kwargs) as response:
            response.read()
            return response.json()

    def submit(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/jobs", json=params)

    def job(self, job_id: int) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}")

    def jobs(self, *, status: str | None, search: str | None, limit: int) -> dict[str, Any]:
        query = {"status": status, "q": search, "limit": limit}
        return self._request("GET", "/jobs", params={key: value for key, value in query.items() if value is not None})

    def act(self, job_id: int, action: str) -> dict[str, Any]:
        """POST /jobs/{id}/cancel, pause, resume or retry: the job it answers with."""
        return self._request("POST", f"/jobs/{job_id}/{action}")

    def log(self, job_id: int, offset: int | None = None) -> tuple[str, int]:
        """The log's tail (or what follows byte `offset`), and the offset the text ends at."""
        params = {"tail": LOG_CHUNK_BYTES} if offset is None else {"offset": offset, "tail": LOG_CHUNK_BYTES}
        with self._response("GET", f"/jobs/{job_id}/log", params=params) as response:
            response.read()
            return response.text, int(response.headers["X-Log-Offset"])

    def download(self, job_id: int, name: str, destination: Path) -> int:
        """Stream an artifact into `destination` (whole or not at all); returns its size."""
        partial = destination.with_name(destination.name + ".part")
        size = 0
        try:
            with self._response("GET", f"/jobs/{job_id}/artifacts/{name}") as response, partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
                    size += len(chunk)
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
        return size

    def close(self) -> None:
        self.http.close()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return body.get("message") or body.get("detail")
    except ValueError:
        return response.text[:300]


# ---------------------------------------------------------------------------------------------
# How jobs read in a terminal
# ---------------------------------------------------------------------------------------------


def describe(job: dict[str, Any]) -> str:
    """One line: status, why a queued job waits (or its place in the queue), where it is, the latest metrics."""
    parts = [f"job {job['id']} {job['status']}"]
    if job.get("waiting_reason"):
        parts.append(f"waiting: {job['waiting_reason']['message']}")
    elif job.get("queue_position"):
        parts.append(f"position {job['queue_position']} in the queue")
    progress = job.get("progress") or {}
    if progress.get("epochs"):
        parts.append(epoch_phrase(progress, job["status"], separator=", "))
    metrics = job.get("metrics") or {}
    if metrics.get("test_accuracy") is not None:
        parts.append(f"test accuracy {metrics['test_accuracy']:.2f}%")
    if metrics.get("test_loss") is not None:
        parts.append(f"test loss {metrics['test_loss']:.4f}")
    return ", ".join(parts)


def wandb_line(job: dict[str, Any]) -> str:
    wandb = job.get("wandb") or {}
    if wandb.get("url"):
        return f"W&B: {wandb['url']}"
    if wandb.get("sync_command"):
        return f"W&B (offline): {wandb['sync_command']}"
    return f"W&B: {wandb.get('mode') or 'not started'}"


def table(jobs: list[dict[str, Any]]) -> str:
    """The jobs as aligned columns: id, status, name, progress, test accuracy, age."""
    rows = [("ID", "STATUS", "NAME", "PROGRESS", "TEST ACC.", "AGE")]
    for job in jobs:
        accuracy = (job.get("metrics") or {}).get("test_accuracy")
        rows.append((
            str(job["id"]),
            job["status"],
            _shorten(job["name"], 40),
            epoch_phrase({"epochs": job["params"].get("epochs"), **job["progress"]}, job["status"], separator=", "),
            f"{accuracy:.2f}%" if accuracy is not None else "",
            short_age(datetime.fromisoformat(job["created_at"])),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def follow(client: Client, job_id: int, out: TextIO) -> dict[str, Any]:
    """Show the job's progress on one line until it finishes; return the finished job."""
    interactive = out.isatty()
    last = ""
    while True:
        job = client.job(job_id)
        line = describe(job)
        if line != last:
            if interactive:
                out.write("\r\033[K" + line)
            else:
                out.write(line + "\n")
            out.flush()
            last = line
        if job["status"] in FINISHED_STATUSES:
            if interactive:
                out.write("\n")
            return job
        time.sleep(WAIT_POLL_SECONDS)


def follow_log(client: Client, job_id: int, out: TextIO) -> dict[str, Any]:
    """Print the log's tail, then what is written to it, until the job finishes; return the job."""
    text, offset = client.log(job_id)
    out.write(text)
    out.flush()
    while True:
        # The status first: once it says finished, the log read after it is complete.
        job = client.job(job_id)
        offset = _print_log_since(client, job_id, offset, out)
        if job["status"] in FINISHED_STATUSES:
            return job
        time.sleep(WAIT_POLL_SECONDS)


def _print_log_since(client: Client, job_id: int, offset: int, out: TextIO) -> int:
    """Print what the log gained after byte `offset`; return the offset it now ends at."""
    while True:
        text, end = client.log(job_id, offset)
        if not text:
            return offset
        out.write(text)
        out.flush()
        offset = end


# ---------------------------------------------------------------------------------------------
# The commands. Exit codes: 0 done (or the job succeeded), 1 the job did not succeed, 2 a request
# failed (unreachable, refused, unknown job).
# ---------------------------------------------------------------------------------------------


def _outcome(job: dict[str, Any], out: TextIO) -> int:
    """The last line for a job followed to its end, and the exit code it makes."""
    if job["status"] == JobStatus.SUCCEEDED:
        accuracy = job["metrics"].get("test_accuracy")
        shown = f"{accuracy:.2f}%" if accuracy is not None else "none"
        print(f"job {job['id']} succeeded: test accuracy {shown}; {wandb_line(job)}", file=out)
        return 0
    print(f"job {job['id']} {job['status']}: {job.get('error') or 'no reason recorded'}", file=out)
    return 1


def _submit(client: Client, args, out: TextIO) -> int:
    job = client.submit(parse_assignments(args.params))
    print(f"job {job['id']} {job['status']}: {client.url}/jobs/{job['id']}", file=out, flush=True)
    if (job.get("waiting_reason") or {}).get("code") == "no_worker":
        print(f"trainboard: warning: {job['waiting_reason']['message']}; the job waits until one does", file=sys.stderr)
    return _outcome(follow(client, job["id"], out), out) if args.wait else 0


def _status(client: Client, args, out: TextIO) -> int:
    job = client.job(args.job_id)
    if args.json:
        print(json.dumps(job, indent=2), file=out)
        return 0
    print(describe(job), file=out)
    return _outcome(job, out) if job["status"] in FINISHED_STATUSES else 0


def _list(client: Client, args, out: TextIO) -> int:
    page = client.jobs(status=args.status, search=args.q, limit=args.limit)
    if args.json:
        print(json.dumps(page, indent=2), file=out)
    elif page["items"]:
        print(table(page["items"]), file=out)
        if page["total"] > len(page["items"]):
            print(f"({len(page['items'])} of {page['total']}; --limit shows more)", file=out)
    else:
        print("no jobs", file=out)
    return 0


def _logs(client: Client, args, out: TextIO) -> int:
    if args.follow:
        job = follow_log(client, args.job_id, out)
        return 0 if job["status"] == JobStatus.SUCCEEDED else 1
    out.write(client.log(args.job_id)[0])
    return 0


def _cancel(client: Client, args, out: TextIO) -> int:
    job = client.act(args.job_id, "cancel")
    print(f"job {job['id']} {'cancelling' if job['status'] == JobStatus.RUNNING else job['status']}", file=out)
    return 0


def _pause(client: Client, args, out: TextIO) -> int:
    job = client.act(args.job_id, "pause")
    print(f"job {job['id']} {'pausing at a checkpoint' if job['status'] == JobStatus.RUNNING else job['status']}", file=out)
    return 0


def _resume(client: Client, args, out: TextIO) -> int:
    job = client.act(args.job_id, "resume")
    print(f"job {job['id']} {job['status']}: it continues from its checkpoint", file=out)
    return 0


def _retry(client: Client, args, out: TextIO) -> int:
    job = client.act(args.job_id, "retry")
    print(f"job {job['id']} {job['status']} (retry of job {args.job_id}): {client.url}/jobs/{job['id']}", file=out)
    return 0


def _download(client: Client, args, out: TextIO) -> int:
    destination = Path(args.output or args.name)
    if destination.is_dir():
        destination = destination / args.name
    try:
        size = client.download(args.job_id, args.name, destination)
    except OSError as exc:
        raise ClientError(f"cannot write {destination}: {exc.strerror or exc}") from None
    print(f"job {args.job_id}: {args.name} ({size / 1e6:.1f} MB) saved to {destination}", file=out)
    return 0


COMMANDS: dict[str, Callable[[Client, Any, TextIO], int]] = {
    "submit": _submit,
    "status": _status,
    "list": _list,
    "logs": _logs,
    "cancel": _cancel,
    "pause": _pause,
    "resume": _resume,
    "retry": _retry,
    "download": _download,
}


def run(command: str, args, out: TextIO = sys.stdout) -> int:
    client = Client(args.url, args.token)
    try:
        return COMMANDS[command](client, args, out)
    except ClientError as exc:
        print(f"trainboard: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
