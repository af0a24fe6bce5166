"""Named users: `trainboard user` on a real database, tokens stored as digests, sign-in with a user's
token, owners of jobs, the one rule for who may change a job, and the migration that gives old
jobs to admin (SQLite and PostgreSQL)."""

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import text

from app import api, pages, users
from app.db import MIGRATIONS_DIR, get_engine, make_engine, migrate
from app.main import create_app
from app.security import SESSION_COOKIE, session_id_of
from app.settings import Settings
from tests.conftest import LOCAL

ADMIN_TOKEN = "admin-token-0123456789-abcdefghij"
HTML = {"Accept": "text/html,application/xhtml+xml"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_settings(tmp_path: Path, **overrides) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'users.db'}", artifacts_dir=tmp_path / "artifacts",
        data_dir=tmp_path / "data", wandb_mode="offline", _env_file=None, **overrides,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, token=ADMIN_TOKEN)


@pytest.fixture
def app(settings: Settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture
def tokens(client, settings: Settings) -> dict[str, str]:
    """alice and bob, plain users, and carol, an admin; plus admin's TRAINBOARD_TOKEN."""
    engine = get_engine(settings.database_url)
    return {
        "alice": users.add(engine, "alice"), "bob": users.add(engine, "bob"),
        "carol": users.add(engine, "carol", admin=True), "admin": ADMIN_TOKEN,
    }


def log_in(client: TestClient, token: str) -> str:
    """Log in through the form as a browser does; returns the CSRF token for later forms."""
    page = client.get("/login", headers=HTML)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/login", data={"token": token, "next": "/", "csrf_token": csrf},
        headers={**HTML, "Origin": str(client.base_url)}, follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf


# ---------------------------------------------------------------------------------------------
# `trainboard user`
# ---------------------------------------------------------------------------------------------


def trainboard_user(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TRAINBOARD_DATABASE_URL": f"sqlite:///{tmp_path / 'users.db'}"}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "user", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_user_commands_add_list_rotate_and_revoke_on_the_database(tmp_path: Path):
    added = trainboard_user(tmp_path, "add", "alice")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    assert len(token) >= 40 and users.token_weakness(token) is None
    assert trainboard_user(tmp_path, "add", "boss", "--admin").returncode == 0

    # Stored as a digest: the token itself is nowhere in the database file.
    database = b"".join(path.read_bytes() for path in tmp_path.glob("users.db*"))
    assert token.encode() not in database and users.digest(token).encode() in database

    listing = trainboard_user(tmp_path, "list")
    assert listing.returncode == 0
    assert re.search(r"^alice\tuser\tactive\t", listing.stdout, re.M) and re.search(r"^boss\tadmin\tactive\t", listing.stdout, re.M)

    settings = make_settings(tmp_path)
    engine = get_engine(settings.database_url)
    assert users.authenticate(engine, settings, token) == users.Caller("alice", False, users.digest(token))

    rotated = trainboard_user(tmp_path, "rotate", "alice")
    new_token = rotated.stdout.strip().splitlines()[-1]
    assert rotated.returncode == 0 and new_token != token
    assert users.authenticate(engine, settings, token) is None
    assert users.authenticate(engine, settings, new_token).name == "alice"

    assert trainboard_user(tmp_path, "revoke", "alice").returncode == 0
    assert users.authenticate(engine, settings, new_token) is None
    assert re.search(r"^alice\tuser\trevoked ", trainboard_user(tmp_path, "list").stdout, re.M)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "Alice Smith"), "is not a user name"),
        (("add", "admin"), "TRAINBOARD_TOKEN's user"),
        (("rotate", "nobody"), "no user named nobody"),
        (("revoke", "nobody"), "no user named nobody"),
    ],
)
def test_user_commands_refuse_what_they_cannot_do(tmp_path: Path, args, message):
    result = trainboard_user(tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr and not result.stdout


def test_a_user_name_is_added_once(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'users.db'}")
    migrate(engine)
    users.add(engine, "alice")
    with pytest.raises(users.UserError, match="rotate alice"):
        users.add(engine, "alice")


# ---------------------------------------------------------------------------------------------
# Signing in with a user's token
# ---------------------------------------------------------------------------------------------


def test_users_sign_in_with_their_own_tokens(client, tokens):
    assert client.get("/jobs", headers=bearer(tokens["alice"])).status_code == 200
    assert client.get("/jobs", headers=bearer(tokens["alice"] + "x")).status_code == 401
    log_in(client, tokens["bob"])
    page = client.get("/", headers=HTML).text
    assert re.search(r'id="signed-in">Signed in as <strong>bob</strong></span>', page)
    assert 'href="/?owner=bob"' in page  # the list's "mine"


def test_a_revoked_or_rotated_user_is_signed_out_everywhere(client, settings, tokens):
    engine = get_engine(settings.database_url)
    log_in(client, tokens["alice"])
    assert client.get("/jobs").status_code == 200
    users.rotate(engine, "alice")
    assert client.get("/jobs").status_code == 401
    assert client.get("/jobs", headers=bearer(tokens["alice"])).status_code == 401


def test_users_alone_turn_sign_in_on(tmp_path: Path):
    """No TRAINBOARD_TOKEN: once a user exists, requests need a token like any other set-up."""
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        assert client.post("/jobs", json={}).status_code == 201
        token = users.add(get_engine(settings.database_url), "alice", admin=True)
        assert client.get("/jobs").status_code == 401
        assert client.get("/jobs", headers=bearer(ADMIN_TOKEN)).status_code == 401
        jobs = client.get("/jobs", headers=bearer(token)).json()["items"]
        assert [job["owner"] for job in jobs] == ["admin"]


# ---------------------------------------------------------------------------------------------
# Owners, and who may change a job
# ---------------------------------------------------------------------------------------------


def submit(client: TestClient, token: str, **params) -> dict:
    response = client.post("/jobs", json=params, headers=bearer(token))
    assert response.status_code == 201, response.text
    return response.json()


def test_jobs_record_who_submitted_them_and_filter_by_owner(client, tokens):
    alice_job = submit(client, tokens["alice"], name="a")
    submit(client, tokens["bob"], name="b")
    admin_job = submit(client, tokens["admin"], name="c")
    assert alice_job["owner"] == "alice" and admin_job["owner"] == "admin"
    assert client.get(f"/jobs/{alice_job['id']}", headers=bearer(tokens["bob"])).json()["owner"] == "alice"
    mine = client.get("/jobs", params={"owner": "alice"}, headers=bearer(tokens["bob"])).json()
    assert mine["total"] == 1 and [job["name"] for job in mine["items"]] == ["a"]
    assert client.get("/jobs", headers=bearer(tokens["bob"])).json()["total"] == 3
    assert client.get("/jobs", params={"owner": "Not A Name"}, headers=bearer(tokens["bob"])).status_code == 422
    listing = client.get("/", params={"owner": "alice"}, headers={**HTML, **bearer(tokens["bob"])}).text
    assert "<title>1 jobs of alice · trainboard</title>" in listing and ">a</a>" in listing and ">b</a>" not in listing


def test_only_the_owner_or_an_admin_cancels_or_retries_a_job(client, tokens):
    job = submit(client, tokens["alice"])
    refused = client.post(f"/jobs/{job['id']}/cancel", headers=bearer(tokens["bob"]))
    assert refused.status_code == 403
    assert refused.json()["detail"] == f"job {job['id']} belongs to alice; only alice or an admin can cancel it"
    assert client.get(f"/jobs/{job['id']}", headers=bearer(tokens["bob"])).json()["status"] == "queued"
    assert client.post(f"/jobs/{job['id']}/cancel", headers=bearer(tokens["alice"])).status_code == 200

    refused = client.post(f"/jobs/{job['id']}/retry", headers=bearer(tokens["bob"]))
    assert refused.status_code == 403 and "only alice or an admin can retry it" in refused.json()["detail"]
    # A retry belongs to whoever asked for it.
    retried = client.post(f"/jobs/{job['id']}/retry", headers=bearer(tokens["alice"])).json()
    assert retried["owner"] == "alice" and retried["retry_of"] == job["id"]
    by_admin = client.post(f"/jobs/{retried['id']}/cancel", headers=bearer(tokens["carol"]))
    assert by_admin.status_code == 200 and by_admin.json()["status"] == "cancelled"
    assert client.post(f"/jobs/{retried['id']}/retry", headers=bearer(tokens["admin"])).json()["owner"] == "admin"
    assert client.post("/jobs/999/cancel", headers=bearer(tokens["bob"])).status_code == 404


def test_every_route_that_changes_a_job_asks_the_same_rule(app, client, tokens):
    """Any write route on a job (cancel, retry, and those added later) refuses someone else's job."""
    job = submit(client, tokens["alice"])
    client.post(f"/jobs/{job['id']}/cancel", headers=bearer(tokens["alice"]))  # retryable as well
    writes = {
        (method, route.path)
        for route in [*app.routes, *api.router.routes, *pages.router.routes, *pages.shared_router.routes]
        for method in getattr(route, "methods", None) or ()
        if method in ("POST", "PUT", "PATCH", "DELETE") and "{job_id}" in getattr(route, "path", "")
    }
    assert ("POST", "/jobs/{job_id}/cancel") in writes and ("POST", "/jobs/{job_id}/retry") in writes
    for method, path in writes:
        url = path.replace("{job_id}", str(job["id"]))
        for headers in ({}, HTML):
            response = client.request(method, url, headers={**headers, **bearer(tokens["bob"])})
            assert response.status_code == 403 and "belongs to alice" in response.json()["detail"], (method, path)


def test_the_pages_offer_cancel_only_to_who_may_and_the_form_submits_as_the_user(client, tokens):
    job = submit(client, tokens["alice"], name="alices")
    csrf = log_in(client, tokens["bob"])
    page = client.get(f"/jobs/{job['id']}", headers=HTML).text
    assert 'id="owner"><a href="/?owner=alice">alice</a>' in page
    assert f'action="/jobs/{job["id"]}/cancel"' not in page
    clone = client.post(
        "/jobs/new", data={"epochs": "2", "dataset": "synthetic", "csrf_token": csrf},
        headers={**HTML, "Origin": str(client.base_url)}, follow_redirects=False,
    )
    assert clone.status_code == 303
    cloned_id = clone.headers["location"].rsplit("/", 1)[1]
    assert client.get(f"/jobs/{cloned_id}").json()["owner"] == "bob"
    assert f'action="/jobs/{cloned_id}/cancel"' in client.get(f"/jobs/{cloned_id}", headers=HTML).text


def test_without_a_token_or_users_everyone_acts_as_admin(tmp_path: Path):
    with TestClient(create_app(make_settings(tmp_path)), base_url=LOCAL) as client:
        job = client.post("/jobs", json={}).json()
        assert job["owner"] == "admin"
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
        assert 'id="signed-in"' not in client.get("/", headers=HTML).text


# ---------------------------------------------------------------------------------------------
# The migration
# ---------------------------------------------------------------------------------------------


def test_jobs_from_before_users_belong_to_admin(database_url: str):
    engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text(
            "INSERT INTO jobs (name, status, params, progress, metrics, artifacts, attempts, max_attempts, "
            "cancel_requested, created_at) VALUES ('old', 'succeeded', '{}', '{}', '{}', '[]', 1, 3, false, CURRENT_TIMESTAMP)"
        ))
        connection.commit()
    migrate(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name, owner FROM jobs")).all() == [("old", "admin")]
    engine.dispose()


def test_the_database_never_holds_a_token(tmp_path: Path, client, settings, tokens):
    log_in(client, tokens["alice"])
    session_id = session_id_of(client.cookies[SESSION_COOKIE])
    rows = sqlite3.connect(settings.database_url.removeprefix("sqlite:///")).execute(
        "SELECT token_digest FROM users UNION ALL SELECT id_digest FROM user_sessions"
    ).fetchall()
    stored = " ".join(row[0] for row in rows)
    assert len(rows) == 4 and all(token not in stored for token in tokens.values()) and session_id not in stored


@pytest.mark.slow
def test_trainboard_submit_works_with_a_users_token(make_stack):
    stack = make_stack(TRAINBOARD_TOKEN=ADMIN_TOKEN)
    stack.serve()
    token = users.add(get_engine(stack.env["TRAINBOARD_DATABASE_URL"]), "alice")
    env = {**stack.env, "TRAINBOARD_URL": stack.base_url, "TRAINBOARD_TOKEN": token}
    submitted = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", "epochs=1"], env=env, capture_output=True, text=True, timeout=120
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(re.match(r"job (\d+) queued", submitted.stdout).group(1))
    assert stack.client.get(f"/jobs/{job_id}", headers=bearer(ADMIN_TOKEN)).json()["owner"] == "alice"
