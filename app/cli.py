"""The `trainboard` command: serve, worker, up; submit, status, list, logs, cancel, retry, download,
sweep, sweep-status for scripts (over the HTTP API); sync, on a worker's host, to upload offline W&B
runs; user for admins."""

import argparse
import functools
import ipaddress
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any

from app.logs import configure_logging
from app.models import STATUSES

GPUS_HELP = "auto (every GPU, or one CPU slot with a warning), all (every GPU, refusing without one), none (one CPU slot), or GPU indices like 0,1"

# The commands that use the HTTP API, at $TRAINBOARD_URL with $TRAINBOARD_TOKEN (app/client.py).
CLIENT_COMMANDS = {
    "submit": "submit a job: key=value ... (values parsed as JSON where they parse)",
    "status": "show a job's status and metrics",
    "list": "list jobs, newest first: id, status, name, progress, test accuracy, age",
    "logs": "print a job's log (its training process's output)",
    "cancel": "cancel a queued, running or paused job",
    "pause": "pause a queued or running job at a checkpoint",
    "resume": "put a paused job back in the queue, to continue from its checkpoint",
    "retry": "queue a failed or cancelled job again, as a new job",
    "download": "download a file a job produced (model.pth)",
    "sweep": "start a sweep from a W&B sweep config file (YAML or JSON)",
    "sweep-status": "show a sweep's progress, its best trial and its trials",
    "recipes": "list the recipes jobs can train, or one recipe's job fields (submit recipe=NAME ...)",
}
CLIENT_EXIT_CODES = (
    "exit codes: 0 done (the job succeeded or its sweep pruned it, or it is still going), 1 the job failed or was "
    "cancelled, 2 the request failed (unreachable, refused, unknown job)"
)
SWEEP_EXIT_CODES = (
    "exit codes: 0 done (the sweep finished with a best trial, or is still going), 1 the sweep failed, was cancelled "
    "or no trial reported its metric, 2 the request failed (unreachable, a refused config, unknown sweep)"
)
SYNC_EXIT_CODES = "exit codes: 0 every run chosen was uploaded (or none needed it), 2 one or more were not, or the job is unknown"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_open_network(host: str) -> None:
    """Beyond localhost, anyone on the network could queue jobs on the GPUs: a strong token, or
    users with their own, are required."""
    from app import users
    from app.db import get_engine, migrate
    from app.settings import get_settings

    if is_loopback(host):
        return
    settings = get_settings()
    generate = "TRAINBOARD_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    token = settings.token_value
    if token and (weakness := users.token_weakness(token)):
        sys.exit(
            f"trainboard: refusing to serve on {host}: TRAINBOARD_TOKEN {weakness}. A token that guards a dashboard "
            f"others can reach needs at least {users.MIN_TOKEN_LENGTH} characters, no whitespace and at least "
            f"{users.MIN_TOKEN_DISTINCT_CHARACTERS} different characters, e.g. {generate}"
        )
    if token:
        return
    engine = get_engine(settings.database_url)
    migrate(engine)
    if not users.sign_in_required(engine, settings):
        sys.exit(
            f"trainboard: refusing to serve on {host} without an access token. Set TRAINBOARD_TOKEN "
            f"(in the environment, or in .env for docker compose), e.g. {generate}, "
            "or add a user with `trainboard user add NAME --admin`, or serve on 127.0.0.1."
        )


def serve(host: str, port: int) -> None:
    import uvicorn

    from app.main import create_app
    from app.security import MAX_HEADER_BYTES, HeaderDeadlineProtocol
    from app.settings import get_settings

    refuse_open_network(host)
    settings = get_settings()
    uvicorn.run(
        create_app(), host=host, port=port, log_config=None,
        http=functools.partial(HeaderDeadlineProtocol, header_timeout=settings.header_timeout_seconds),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_keep_alive=5,
    )


def up(host: str, port: int, gpus: str) -> None:
    """The app and one worker on this machine; stopping it stops both."""
    from app.db import get_engine, migrate
    from app.lifetime import die_with_parent
    from app.settings import get_settings

    refuse_open_network(host)
    migrate(get_engine(get_settings().database_url))
    # Its own session: Ctrl-C in the terminal reaches only the app, which then asks the worker once
    # to stop gracefully (a second signal would make it exit without handing its jobs back). When
    # the app dies without asking (SIGKILL), Linux asks instead: no worker outlives its `up`.
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--gpus", gpus], start_new_session=True,
        preexec_fn=functools.partial(die_with_parent, os.getpid(), signal.SIGTERM),
    )

    def stop_with_the_worker() -> None:
        # A worker that refuses its --gpus (exit code 2) or dies takes the app down too, with its exit code.
        if worker.wait() != 0:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_with_the_worker, name="worker-watch", daemon=True).start()
    # Uvicorn re-raises the signal that stopped it; as SystemExit it still runs the `finally` below.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(worker.returncode or 128 + signum))
    try:
        serve(host, port)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait()


def _allowed(field: dict[str, Any]) -> str:
    """A form field's values or bounds, in words."""
    if field["kind"] == "select":
        return " | ".join(field["options"])
    if field["kind"] == "checkbox":
        return "true | false"
    if field["kind"] == "tags":
        return "comma-separated"
    if field["kind"] == "number":
        return field["bounds"]
    return f"up to {field['maxlength']} characters" if field.get("maxlength") else ""


def _field_help(name: str, default: Any, values: str, help_text: str) -> str:
    shown = "none" if default in (None, []) else json.dumps(default).strip('"')
    head = f"  {name:<18} default {shown}" + (f"; {values}" if values else "")
    indent = " " * 21
    return head + "\n" + textwrap.fill(
        help_text, width=100, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def job_fields_help() -> str:
    """Every job field with its default and bounds: the schema the new-job form is made from."""
    from app.forms import PRESET_FIELD, form_fields, form_presets, preset_help
    from app.models import JobCreate

    preset = JobCreate.model_fields[PRESET_FIELD].default
    entries = [_field_help(PRESET_FIELD, preset, " | ".join(form_presets()), preset_help())]
    entries += [_field_help(field["name"], field["default"], _allowed(field), field["help"]) for field in form_fields()]
    heading = (
        "job fields of the tutorial's recipe, cifar10-resnet18 (key=value, each optional; a preset sets several, and "
        "fields given win over it); recipe=NAME trains another recipe, whose fields `trainboard recipes NAME` lists:"
    )
    return "\n".join([heading, *entries])


def recipe_fields_help(schema: dict[str, Any]) -> str:
    """A recipe's job fields (its JSON schema from GET /recipes) as `trainboard submit` takes them."""
    from app.forms import schema_fields

    return "\n".join(
        _field_help(field["name"], field["default"], _allowed(field), field["help"])
        for field in schema_fields(schema) if field["name"] != "recipe"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trainboard", description="Training job queue and dashboard")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "run the web app"), ("up", "run the web app and one worker")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=8000)
        if name == "up":
            command.add_argument("--gpus", default="auto", help=GPUS_HELP)
    worker = commands.add_parser("worker", help="run a worker: one slot per GPU, or one CPU slot")
    worker.add_argument("--gpus", default="auto", help=GPUS_HELP)
    for name, help_text in CLIENT_COMMANDS.items():
        epilog = {"submit": job_fields_help() + "\n\n" + CLIENT_EXIT_CODES, "sweep": SWEEP_EXIT_CODES,
                  "sweep-status": SWEEP_EXIT_CODES}.get(name, CLIENT_EXIT_CODES)
        command = commands.add_parser(name, help=help_text, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--url", help="the dashboard (default: $TRAINBOARD_URL or http://127.0.0.1:8000)")
        command.add_argument("--token", help="your access token, or the admin's (default: $TRAINBOARD_TOKEN)")
        if name == "submit":
            command.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 1 unless it succeeded (or its sweep pruned it)")
            command.add_argument(
                "params", nargs="*", metavar="key=value",
                help="job fields, values parsed as JSON where they parse: preset=fast94 lr=0.05 epochs=3 tags=sweep,baseline "
                "(every field, its default and bounds: below)",
            )
        elif name == "list":
            command.add_argument("--status", choices=STATUSES, help="only jobs with this status")
            command.add_argument("--q", metavar="TEXT", help="only jobs whose name or a tag contains TEXT")
            command.add_argument("--sweep", type=int, metavar="ID", help="only this sweep's trials")
            command.add_argument("--limit", type=int, default=20, help="at most this many, newest first (default 20)")
        elif name == "sweep":
            command.add_argument(
                "--wait", action="store_true",
                help="follow the sweep until it ends, then print its best trial; exit 1 unless it finished with one",
            )
            command.add_argument("config", metavar="FILE", help="the sweep config, as W&B writes it (sweep.yaml), or JSON")
        elif name == "sweep-status":
            command.add_argument("sweep_id", type=int)
        elif name == "recipes":
            command.add_argument("recipe", nargs="?", metavar="NAME", help="one recipe: its job fields, defaults and bounds")
        else:
            command.add_argument("job_id", type=int)
        if name in ("status", "list", "sweep-status", "recipes"):
            command.add_argument("--json", action="store_true", help="print the API's JSON")
        elif name == "logs":
            command.add_argument("-f", "--follow", action="store_true", help="print new output until the job ends; exit 1 unless it succeeded (or its sweep pruned it)")
        elif name == "download":
            command.add_argument("name", nargs="?", default="model.pth", help="the artifact (default: model.pth)")
            command.add_argument("-o", "--output", metavar="PATH", help="file or folder to save it to (default: its name, here)")
    sync = commands.add_parser(
        "sync", help="upload offline W&B runs (on the worker's host, with its settings)", epilog=SYNC_EXIT_CODES
    )
    which = sync.add_mutually_exclusive_group(required=True)
    which.add_argument("--job", type=int, metavar="ID", help="the job whose run to upload")
    which.add_argument("--all-offline", action="store_true", help="every finished job whose run is offline and on this host")
    user = commands.add_parser("user", help="add, list, revoke or rotate users (on the database in the app's settings)")
    user_actions = user.add_subparsers(dest="action", required=True)
    for action, help_text in (
        ("add", "add a user and print their token, once"),
        ("list", "list the users"),
        ("revoke", "end a user's token and sessions"),
        ("rotate", "give a user a new token, ending the old one and their sessions"),
    ):
        command = user_actions.add_parser(action, help=help_text)
        if action != "list":
            command.add_argument("name")
        if action == "add":
            command.add_argument("--admin", action="store_true", help="may cancel and retry anyone's jobs")
    args = parser.parse_args(argv)

    if args.command in CLIENT_COMMANDS:
        from app.client import run

        sys.exit(run(args.command, args))
    if args.command == "user":
        from app import users
        from app.settings import get_settings

        sys.exit(users.run(args, get_settings()))

    configure_logging()
    if args.command == "sync":
        from worker.sync import run_sync

        sys.exit(run_sync(args.job, sys.stdout))
    if args.command == "serve":
        serve(args.host, args.port)
    elif args.command == "up":
        up(args.host, args.port, args.gpus)
    else:
        # The one console script lives in app, the package installed on every host; the worker is
        # imported only here, lazily, so that serving never imports torch.
        from worker.cli import run_worker

        run_worker(args.gpus)


if __name__ == "__main__":
    main()
