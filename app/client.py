"""`trainboard submit | status | list | logs | cancel | retry | download | sweep | sweep-status`: the
HTTP API from a shell or a script (httpx), at $TRAINBOARD_URL with $TRAINBOARD_TOKEN."""

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
from app.models import FINISHED_STATUSES, JobStatus, SweepStatus

DEFAULT_URL = "http://127.0.0.1:8000"
WAIT_POLL_SECONDS = 1.0
# The most of a log one request returns (the API's own bound).
LOG_CHUNK_BYTES = 1_000_000
# How a job ends as it should: trained to the end, or stopped early by its sweep's rule.
DONE_STATUSES = (JobStatus.SUCCEEDED, JobStatus.PRUNED)


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

    def jobs(self, *, status: str | None, search: str | None, limit: int, sweep_id: int | None = None) -> dict[str, Any]:
        query = {"status": status, "q": search, "limit": limit, "sweep_id": sweep_id}
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

    def create_sweep(self, config: str, *, yaml: bool) -> dict[str, Any]:
        """POST /sweeps with a config's text as it is, so that a refusal locates the problem in it."""
        content_type = "application/yaml" if yaml else "application/json"
        return self._request("POST", "/sweeps", content=config.encode("utf-8"), headers={"Content-Type": content_type})

    def recipes(self) -> list[dict[str, Any]]:
        return self._request("GET", "/recipes")

    def sweep(self, sweep_id: int) -> dict[str, Any]:
        return self._request("GET", f"/sweeps/{sweep_id}")

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
    return _follow_on_one_line(lambda: client.job(job_id), describe, lambda job: job["status"] in FINISHED_STATUSES, out)


def _follow_on_one_line(
    read: Callable[[], dict[str, Any]], line_of: Callable[[dict[str, Any]], str],
    ended: Callable[[dict[str, Any]], bool], out: TextIO,
) -> dict[str, Any]:
    """Poll `read` until `ended`, showing `line_of` what it read: rewritten in place on a terminal,
    a new line only when it changed otherwise (a log, a pipe). Returns the last thing read."""
    interactive = out.isatty()
    last = ""
    while True:
        current = read()
        line = line_of(current)
        if line != last:
            if interactive:
                out.write("\r\033[K" + line)
            else:
                out.write(line + "\n")
            out.flush()
            last = line
        if ended(current):
            if interactive:
                out.write("\n")
            return current
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
# How sweeps read in a terminal
# ---------------------------------------------------------------------------------------------


def read_sweep_config(path: Path) -> tuple[str, bool]:
    """A sweep config file's text, and whether it goes as YAML: a .json file, or any text that
    parses as JSON, goes as JSON; anything else is YAML (W&B's own format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ClientError(f"cannot read {path}: it is not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        return text, False
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return text, True
    return text, False


def metric_value(metric: str, value: float) -> str:
    """A sweep's metric as the job lines show it: accuracy in percent, losses to four places."""
    return f"{value:.2f}%" if metric == "test_accuracy" else f"{value:.4f}"


def metric_phrase(metric: str, value: float) -> str:
    return f"{metric.replace('_', ' ')} {metric_value(metric, value)}"


def assignments(params: dict[str, Any]) -> str:
    """Parameters as `trainboard submit` takes them (lr=0.0123 batch_size=64)."""
    return " ".join(f"{name}={_param_text(value)}" for name, value in params.items())


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def describe_sweep(sweep: dict[str, Any]) -> str:
    """One line: status, trials done out of run_cap (how many pruned), running and queued, the best so far."""
    counts = sweep["counts"]
    done = sum(counts.get(status, 0) for status in FINISHED_STATUSES)
    progress = f"{done}/{sweep['run_cap']} trials done"
    if counts.get(JobStatus.PRUNED):
        progress += f" ({counts[JobStatus.PRUNED]} pruned)"
    parts = [f"sweep {sweep['id']} {sweep['status']}", progress, f"{counts.get(JobStatus.RUNNING, 0)} running"]
    if counts.get(JobStatus.QUEUED):
        parts.append(f"{counts[JobStatus.QUEUED]} queued")
    if sweep["best_value"] is not None:
        parts.append(f"best {metric_phrase(sweep['metric'], sweep['best_value'])} (job {sweep['best_job_id']})")
    return ", ".join(parts)


def best_trial(sweep: dict[str, Any]) -> dict[str, Any] | None:
    return next((trial for trial in sweep["jobs"] if trial["id"] == sweep["best_job_id"]), None)


def best_line(sweep: dict[str, Any]) -> str:
    """The best trial: its metric, job, trial number and swept parameters."""
    trial = best_trial(sweep)
    if trial is None:
        return f"no trial has reported {sweep['metric']} yet"
    return (
        f"best {metric_phrase(sweep['metric'], trial['value'])} from job {trial['id']} (trial {trial['trial_number']})"
        + (f": {assignments(trial['params'])}" if trial["params"] else "")
    )


def trials_table(sweep: dict[str, Any]) -> str:
    """The trials as aligned columns, best first (as the API orders them): trial, job, status, the
    metric, epochs trained (a pruned trial's: the epoch it stopped at), then each swept parameter."""
    swept = list(dict.fromkeys(name for trial in sweep["jobs"] for name in trial["params"]))
    rows = [("TRIAL", "JOB", "STATUS", sweep["metric"].replace("_", " ").upper(), "EPOCHS", *swept)]
    for trial in sweep["jobs"]:
        value = trial["value"]
        rows.append((
            str(trial["trial_number"]), str(trial["id"]), trial["status"],
            metric_value(sweep["metric"], value) if value is not None else "",
            str(trial["epochs_trained"]), *(_param_text(trial["params"].get(name)) for name in swept),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def follow_sweep(client: Client, sweep_id: int, out: TextIO) -> dict[str, Any]:
    """Show the sweep's progress on one line until it ends; return the ended sweep."""
    return _follow_on_one_line(
        lambda: client.sweep(sweep_id), describe_sweep, lambda sweep: sweep["status"] != SweepStatus.RUNNING, out,
    )


# ---------------------------------------------------------------------------------------------
# The commands. Exit codes: 0 done (the job succeeded or was pruned, the sweep finished with a best
# trial, or either is still going), 1 the job or the sweep did not, 2 a request failed (unreachable,
# refused, unknown job or sweep).
# ---------------------------------------------------------------------------------------------


def _outcome(job: dict[str, Any], out: TextIO) -> int:
    """The last line for a job followed to its end, and the exit code it makes."""
    if job["status"] == JobStatus.SUCCEEDED:
        accuracy = job["metrics"].get("test_accuracy")
        shown = f"{accuracy:.2f}%" if accuracy is not None else "none"
        print(f"job {job['id']} succeeded: test accuracy {shown}; {wandb_line(job)}", file=out)
        return 0
    if job["status"] == JobStatus.PRUNED:
        # Its sweep's early termination stopped it, as that rule is meant to: done, not failed.
        print(f"job {job['id']} {(job.get('pruned') or {}).get('message') or 'pruned'}; {wandb_line(job)}", file=out)
        return 0
    print(f"job {job['id']} {job['status']}: {job.get('error') or 'no reason recorded'}", file=out)
    return 1


def _found_a_best(sweep: dict[str, Any]) -> bool:
    return sweep["status"] == SweepStatus.FINISHED and sweep["best_job_id"] is not None


def _sweep_outcome(client: Client, sweep: dict[str, Any], out: TextIO) -> int:
    """The last line for a sweep followed to its end, and the exit code it makes: 0 when it
    finished with a best trial (its W&B run named), 1 otherwise."""
    if _found_a_best(sweep):
        best = client.job(sweep["best_job_id"])
        print(f"sweep {sweep['id']} finished: {best_line(sweep)}; {wandb_line(best)}", file=out)
        return 0
    why = sweep.get("reason") or ("no trial reported its metric" if sweep["status"] == SweepStatus.FINISHED else "no reason recorded")
    so_far = f"; {best_line(sweep)}" if sweep["best_job_id"] is not None else ""
    print(f"sweep {sweep['id']} {sweep['status']}: {why}{so_far}", file=out)
    return 1


def _submit(client: Client, args, out: TextIO) -> int:
    job = client.submit(parse_assignments(args.params))
    print(f"job {job['id']} {job['status']}: {client.url}/jobs/{job['id']}", file=out, flush=True)
    if (job.get("waiting_reason") or {}).get("code") in ("no_worker", "no_recipe"):
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
    page = client.jobs(status=args.status, search=args.q, limit=args.limit, sweep_id=args.sweep)
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
        return 0 if job["status"] in DONE_STATUSES else 1
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


def _sweep(client: Client, args, out: TextIO) -> int:
    config, yaml = read_sweep_config(Path(args.config))
    sweep = client.create_sweep(config, yaml=yaml)
    print(
        f"sweep {sweep['id']} {sweep['status']}: {client.url}/sweeps/{sweep['id']} "
        f"({sweep['method']}, {sweep['run_cap']} trials, {sweep['parallel']} at once)",
        file=out, flush=True,
    )
    return _sweep_outcome(client, follow_sweep(client, sweep["id"], out), out) if args.wait else 0


def _sweep_status(client: Client, args, out: TextIO) -> int:
    sweep = client.sweep(args.sweep_id)
    if args.json:
        print(json.dumps(sweep, indent=2), file=out)
        return 0
    print(describe_sweep(sweep), file=out)
    print(
        f"{sweep['name']}: {sweep['method']}, {sweep['metric']} ({sweep['goal']}), {sweep['parallel']} at once, "
        f"seed {sweep['seed']}: {client.url}/sweeps/{sweep['id']}",
        file=out,
    )
    if sweep.get("reason"):
        print(f"why it ended: {sweep['reason']}", file=out)
    if sweep["jobs"]:
        print(best_line(sweep), file=out)
        print(trials_table(sweep), file=out)
    return 0 if sweep["status"] == SweepStatus.RUNNING or _found_a_best(sweep) else 1


def _recipes(client: Client, args, out: TextIO) -> int:
    found = client.recipes()
    if args.recipe is not None:
        found = [recipe for recipe in found if recipe["name"] == args.recipe]
        if not found:
            print(f"trainboard: no recipe {args.recipe}; `trainboard recipes` lists them", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(found if args.recipe is None else found[0], indent=2), file=out)
        return 0
    for recipe in found:
        workers = len(recipe["workers"])
        metrics = ", ".join(f"{m['name']} ({m['goal']})" for m in recipe["metrics"])
        print(f"{recipe['name']} {recipe['version']}: {recipe['title']}", file=out)
        print(f"  metrics {metrics}; {'resumes and pauses' if recipe['checkpoints'] else 'does not checkpoint'}; "
              f"{workers} live worker{'' if workers == 1 else 's'} can run it", file=out)
        if args.recipe is not None:
            from app.cli import recipe_fields_help

            print(f"  {recipe['description']}\njob fields (trainboard submit recipe={recipe['name']} key=value ...):", file=out)
            print(recipe_fields_help(recipe["schema"]), file=out)
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
    "sweep": _sweep,
    "sweep-status": _sweep_status,
    "recipes": _recipes,
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
