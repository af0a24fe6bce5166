"""`trainboard submit | status | cancel`: the HTTP API from a shell or a script (httpx)."""

import json
import os
import sys
import time
from typing import Any, TextIO

import httpx

from app.formatting import epoch_phrase

DEFAULT_URL = "http://127.0.0.1:8000"
WAIT_POLL_SECONDS = 1.0


class ClientError(RuntimeError):
    """The server could not be reached or refused the request; the message says why."""


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """key=value pairs; values parse as JSON where they can (2, 0.05, true, ["a"]), else strings."""
    params: dict[str, Any] = {}
    for assignment in assignments:
        key, separator, raw = assignment.partition("=")
        if not separator or not key:
            raise ClientError(f"expected key=value, got {assignment!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


class Client:
    def __init__(self, url: str | None = None, token: str | None = None):
        self.url = (url or os.environ.get("TRAINBOARD_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("TRAINBOARD_TOKEN")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def _request(self, method: str, path: str, **kwargs) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach trainboard at {self.url}: {exc}") from None
        if response.is_success:
            return response.json()
        try:
            body = response.json()
            detail = body.get("message") or body.get("detail")
        except ValueError:
            detail = response.text[:300]
        raise ClientError(f"{method} {path} answered {response.status_code}: {detail}")

    def submit(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/jobs", json=params)

    def job(self, job_id: int) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/cancel")

    def close(self) -> None:
        self.http.close()


def describe(job: dict[str, Any]) -> str:
    """One line: status, where it is, the latest metrics."""
    parts = [f"job {job['id']} {job['status']}"]
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
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if interactive:
                out.write("\n")
            return job
        time.sleep(WAIT_POLL_SECONDS)


def run(command: str, args, out: TextIO = sys.stdout) -> int:
    """Exit codes: 0 done (or the job succeeded), 1 the job did not succeed, 2 a request failed."""
    client = Client(args.url, args.token)
    try:
        if command == "submit":
            job = client.submit(parse_assignments(args.params))
            print(f"job {job['id']} {job['status']}: {client.url}/jobs/{job['id']}", file=out, flush=True)
            if not args.wait:
                return 0
            job = follow(client, job["id"], out)
        elif command == "status":
            job = client.job(args.job_id)
            if args.json:
                print(json.dumps(job, indent=2), file=out)
                return 0
            print(describe(job), file=out)
        else:
            job = client.cancel(args.job_id)
            print(f"job {job['id']} {'cancelling' if job['status'] == 'running' else job['status']}", file=out)
            return 0
    except ClientError as exc:
        print(f"trainboard: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()

    if job["status"] == "succeeded":
        print(f"job {job['id']} succeeded: test accuracy {job['metrics'].get('test_accuracy', float('nan')):.2f}%; {wandb_line(job)}", file=out)
        return 0
    if job["status"] in ("failed", "cancelled"):
        print(f"job {job['id']} {job['status']}: {job.get('error') or 'no reason recorded'}", file=out)
        return 1
    return 0
