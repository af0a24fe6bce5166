"""The token, sessions, CSRF, headers, body limit, escaping and secrets, against a real SQLite file."""

import http.client
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import api, metrics, pages, security, users
from app.main import create_app
from app.security import CSRF_COOKIE, SESSION_COOKIE, make_session, session_valid
from app.settings import Settings
from tests.conftest import LOCAL, wait_for

TOKEN = "correct-horse-battery-staple-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HTML = {"Accept": "text/html,application/xhtml+xml"}


def make_settings(tmp_path: Path, **overrides) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'security.db'}", artifacts_dir=tmp_path / "artifacts",
        data_dir=tmp_path / "data", _env_file=None, **overrides,
    )


@pytest.fixture
def app(tmp_path: Path):
    return create_app(make_settings(tmp_path, token=TOKEN))


@pytest.fixture
def client(app):
    with TestClient(app) as client:
        yield client


def login(client: TestClient) -> str:
    """Log in through the form as a browser does; returns the CSRF token for later forms."""
    page = client.get("/login", headers=HTML)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/login", data={"token": TOKEN, "next": "/", "csrf_token": csrf},
        headers={**HTML, "Origin": str(client.base_url)}, follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    return csrf


def protected_routes(app) -> list[tuple[str, str]]:
    routes = []
    for route in [*app.routes, *api.router.routes, *pages.router.routes, *metrics.router.routes, *security.router.routes]:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method == "HEAD" or route.path in ("/healthz", "/login") or route.path.startswith("/static"):
                continue
            routes.append((method, route.path.replace("{job_id}", "1").replace("{name}", "model.pth")))
    return routes


def test_every_route_but_health_and_login_needs_the_token(app, client):
    client.post("/jobs", json={}, headers=BEARER)
    routes = protected_routes(app)
    assert ("POST", "/jobs") in routes and ("GET", "/metrics") in routes and ("GET", "/openapi.json") in routes
    for method, path in routes:
        assert client.request(method, path).status_code == 401, (method, path)
        wrong = client.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, (method, path)
        assert client.request(method, path, headers=BEARER).status_code != 401, (method, path)
    assert client.get("/healthz").status_code == 200
    assert client.get("/login").status_code == 200


def test_a_refused_request_changes_nothing(client):
    assert client.post("/jobs", json={"name": "sneaky"}).status_code == 401
    assert client.get("/jobs", headers=BEARER).json()["total"] == 0


def test_browsers_are_sent_to_login_and_come_back_with_a_session(client):
    response = client.get("/jobs/new", headers=HTML, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login?next=/jobs/new"
    login(client)
    assert client.get("/", headers=HTML).status_code == 200
    assert client.get("/jobs").status_code == 200  # the session works for JSON too


def test_wrong_token_on_the_login_form_is_refused(client):
    page = client.get("/login", headers=HTML)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post("/login", data={"token": "guess", "csrf_token": csrf}, headers=HTML)
    assert response.status_code == 401 and "not right" in response.text
    assert SESSION_COOKIE not in client.cookies


def test_login_redirects_only_within_the_site(client):
    page = client.get("/login", params={"next": "https://evil.example/"}, headers=HTML)
    assert 'name="next" value="/"' in page.text
    page = client.get("/login", params={"next": "//evil.example/x"}, headers=HTML)
    assert 'name="next" value="/"' in page.text


def test_forms_need_the_csrf_token(client):
    csrf = login(client)
    origin = {"Origin": str(client.base_url)}
    form = {"epochs": "2", "dataset": "synthetic"}
    assert client.post("/jobs/new", data=form, headers=origin, follow_redirects=False).status_code == 403
    wrong = client.post("/jobs/new", data={**form, "csrf_token": "x" * 43}, headers=origin, follow_redirects=False)
    assert wrong.status_code == 403
    good = client.post("/jobs/new", data={**form, "csrf_token": csrf}, headers=origin, follow_redirects=False)
    assert good.status_code == 303
    job_id = int(good.headers["location"].rsplit("/", 1)[1])
    # Cancel through the session needs it too.
    assert client.post(f"/jobs/{job_id}/cancel", headers=origin).status_code == 403
    done = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf}, headers={**origin, **HTML}, follow_redirects=False)
    assert done.status_code == 303
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_form_with_a_file_needs_the_csrf_token_too(client):
    csrf = login(client)
    origin = {**HTML, "Origin": str(client.base_url)}
    config = {"config_file": ("sweep.yaml", b"method: random\nrun_cap: 1\nparameters:\n  lr: {min: 0.001, max: 0.1}\n")}
    assert client.post("/sweeps/new", files=config, headers=origin).status_code == 403
    wrong = client.post("/sweeps/new", data={"csrf_token": "x" * 43}, files=config, headers=origin)
    assert wrong.status_code == 403
    # Not multipart after all, though it says so: refused, not a server error.
    broken = client.post(
        "/sweeps/new", content=b"csrf_token=" + csrf.encode(), headers={**origin, "Content-Type": "multipart/form-data"},
    )
    assert broken.status_code == 403
    assert client.get("/sweeps", headers=BEARER).json()["total"] == 0
    good = client.post("/sweeps/new", data={"csrf_token": csrf}, files=config, headers=origin, follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/sweeps/1"


def test_cross_site_posts_are_refused(client):
    csrf = login(client)
    evil = {"Origin": "https://evil.example"}
    response = client.post("/jobs/new", data={"epochs": "2", "csrf_token": csrf}, headers=evil)
    assert response.status_code == 403
    assert client.post("/jobs", json={}, headers={"Referer": "https://evil.example/page"}).status_code == 403
    assert client.get("/jobs", headers=BEARER).json()["total"] == 0


def test_bearer_requests_need_no_csrf_token(client):
    assert client.post("/jobs", json={}, headers={**BEARER, "Origin": str(client.base_url)}).status_code == 201


def test_logout_ends_the_session(client):
    csrf = login(client)
    response = client.post("/logout", data={"csrf_token": csrf}, headers={"Origin": str(client.base_url)}, follow_redirects=False)
    assert response.status_code == 303
    client.cookies.delete(SESSION_COOKIE)
    assert client.get("/jobs").status_code == 401


def test_sessions_are_signed_expire_and_end_with_a_new_token():
    cookie = make_session(TOKEN)
    assert session_valid(cookie, TOKEN)
    assert not session_valid(cookie, TOKEN + "-rotated")
    expires, signature = cookie.split(".")
    assert not session_valid(f"{int(expires) + 100}.{signature}", TOKEN)
    assert not session_valid(make_session(TOKEN, now=0), TOKEN)
    assert not session_valid("garbage", TOKEN) and not session_valid(None, TOKEN)


def test_pages_send_security_headers(client):
    login(client)
    for path in ("/", "/jobs/new", "/login"):
        headers = client.get(path, headers=HTML).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
    assert CSRF_COOKIE in client.cookies


def test_bodies_over_one_mebibyte_are_refused(client):
    big = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    response = client.post("/jobs", content=big, headers={**BEARER, "Content-Type": "application/json"})
    assert response.status_code == 413

    def chunks():
        for _ in range(20):
            yield b" " * 65536

    streamed = client.post("/jobs", content=chunks(), headers={**BEARER, "Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/jobs", headers=BEARER).json()["total"] == 0


def test_user_strings_are_escaped_in_pages(client):
    login(client)
    hostile = "<script>alert(1)</script>"
    job = client.post("/jobs", json={"name": hostile, "tags": ['"><img src=x onerror=alert(1)>']}, headers=BEARER).json()
    for path in ("/", f"/jobs/{job['id']}"):
        page = client.get(path, headers=HTML).text
        assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
        assert "<img src=x" not in page, path


def test_artifact_names_cannot_escape_the_job_folder(client, tmp_path: Path):
    job = client.post("/jobs", json={}, headers=BEARER).json()
    (tmp_path / "secret.txt").write_text("secret")
    for name in ("..%2F..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "..%2F..%2F..%2Fsecurity.db", "model.pth%00", "job.log"):
        response = client.get(f"/jobs/{job['id']}/artifacts/{name}", headers=BEARER)
        assert response.status_code == 404, name
        assert "secret" != response.text


def test_the_token_never_appears_in_pages_or_responses(client):
    login(client)
    job = client.post("/jobs", json={}, headers=BEARER).json()
    for path in ("/", f"/jobs/{job['id']}", "/jobs/new", "/workers", "/openapi.json", "/metrics", f"/jobs/{job['id']}"):
        assert TOKEN not in client.get(path, headers=HTML).text, path
        assert TOKEN not in client.get(path, headers=BEARER).text, path


def test_without_a_token_the_laptop_needs_no_login(tmp_path: Path):
    with TestClient(create_app(make_settings(tmp_path)), base_url=LOCAL) as client:
        assert client.get("/", headers=HTML).status_code == 200
        assert client.post("/jobs", json={}).status_code == 201
        # Still no cross-site posts, and a browser's own form needs its CSRF token.
        assert client.post("/jobs", json={}, headers={"Origin": "http://evil.example"}).status_code == 403
        same = {"Origin": str(client.base_url)}
        assert client.post("/jobs/new", data={"epochs": "2"}, headers=same).status_code == 403


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "TRAINBOARD_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "TRAINBOARD_TOKEN" in result.stderr and ".env" in result.stderr


def test_without_a_token_only_localhost_is_served(tmp_path: Path):
    # A page on a rebound domain reaches 127.0.0.1 but names its own domain in Host.
    with TestClient(create_app(make_settings(tmp_path)), base_url="http://evil.example:8000") as client:
        response = client.get("/jobs")
        assert response.status_code == 403 and "TRAINBOARD_TOKEN" in response.json()["detail"]
        assert client.post("/jobs", json={}).status_code == 403
    for local in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000", "http://app.localhost"):
        with TestClient(create_app(make_settings(tmp_path)), base_url=local) as client:
            assert client.get("/jobs").status_code == 200, local
    with TestClient(create_app(make_settings(tmp_path, token=TOKEN)), base_url="http://gpu-host.example") as client:
        assert client.get("/jobs", headers=BEARER).status_code == 200


# ---------------------------------------------------------------------------------------------
# Sessions end on the server; login throttling; weak tokens
# ---------------------------------------------------------------------------------------------


def test_a_logged_out_cookie_no_longer_works(client):
    csrf = login(client)
    old_cookie = client.cookies[SESSION_COOKIE]
    assert client.get("/jobs").status_code == 200
    client.post("/logout", data={"csrf_token": csrf}, headers={"Origin": str(client.base_url)}, follow_redirects=False)
    client.cookies.set(SESSION_COOKIE, old_cookie)  # replayed, as a copy of the cookie would be
    assert client.get("/jobs").status_code == 401
    page = client.get("/", headers=HTML, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/"


def test_a_cookie_for_a_session_the_server_never_started_is_refused(client):
    # Signed with the right key, but no login started it.
    client.cookies.set(SESSION_COOKIE, make_session(users.digest(TOKEN)))
    assert client.get("/jobs").status_code == 401


def test_after_ten_wrong_tokens_a_client_must_wait(app):
    def attempt(client: TestClient, token: str):
        return client.post("/login", data={"token": token}, headers=HTML, follow_redirects=False)

    with TestClient(app, client=("192.0.2.1", 40000)) as guesser:
        for _ in range(security.LOGIN_FAILURES_PER_CLIENT):
            assert attempt(guesser, "guess").status_code == 401
        refused = attempt(guesser, TOKEN)  # even the right token: no token is checked meanwhile
        assert refused.status_code == 429 and "try again in" in refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= security.LOGIN_WINDOW_SECONDS
    with TestClient(app, client=("192.0.2.2", 40000)) as someone_else:
        assert attempt(someone_else, TOKEN).status_code == 303


def test_the_login_throttle_counts_clients_and_everyone_within_its_window():
    now = [1000.0]
    throttle = security.LoginThrottle(per_client=3, overall=5, window=60, clock=lambda: now[0])
    for client in ("a", "a", "a", "b"):
        assert throttle.retry_after(client) is None
        throttle.failed(client)
    assert throttle.retry_after("a") == 60 and throttle.retry_after("b") is None
    throttle.failed("b")
    assert throttle.retry_after("c") == 60  # five failures in the window: everyone waits
    now[0] += 30
    assert throttle.retry_after("c") == 30
    now[0] += 30
    assert throttle.retry_after("a") is None and throttle.retry_after("c") is None


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("a", "has fewer than 16 characters"),
        ("ababababababababababab", "has fewer than 10 different characters"),
        ("correct horse battery staple", "contains whitespace"),
    ],
)
def test_serve_refuses_a_weak_token_beyond_localhost(tmp_path: Path, token: str, reason: str):
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TRAINBOARD_TOKEN": token,
        "TRAINBOARD_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert f"TRAINBOARD_TOKEN {reason}" in result.stderr and "at least 16 characters" in result.stderr


# ---------------------------------------------------------------------------------------------
# /docs from the app's own files
# ---------------------------------------------------------------------------------------------


def test_docs_load_only_the_apps_own_files_under_the_strict_policy(client):
    response = client.get("/docs", headers=BEARER)
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == security.PAGE_CSP
    assets = re.findall(r'<script[^>]* src="([^"]+)"', response.text) + re.findall(r'<link[^>]* href="([^"]+)"', response.text)
    assert "/static/swagger-ui/swagger-ui-bundle.js" in assets and "/static/docs.js" in assets
    assert "<script>" not in response.text and "cdn" not in response.text.lower()
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        assert client.get(asset).status_code == 200, asset  # static files need no token


# ---------------------------------------------------------------------------------------------
# A real `trainboard serve`: slow clients, the access log
# ---------------------------------------------------------------------------------------------


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes; the socket's own timeout fails the test."""
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    return received


@pytest.mark.slow
def test_slow_clients_are_cut_off(make_stack):
    stack = make_stack(TRAINBOARD_HEADER_TIMEOUT_SECONDS="1", TRAINBOARD_BODY_TIMEOUT_SECONDS="1")
    stack.serve()
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as slow_headers:
        slow_headers.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the blank line never comes
        assert read_until_closed(slow_headers) == b""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as slow_body:
        slow_body.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"epochs": '
        )
        answer = read_until_closed(slow_body)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"request body not received within 1 s" in answer
    # A prompt client keeps its connection across requests.
    keep_alive = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    sockets = []
    for _ in range(2):
        keep_alive.request("GET", "/healthz")
        response = keep_alive.getresponse()
        assert response.status == 200 and response.read() == b'{"status":"ok"}'
        sockets.append(keep_alive.sock)
    keep_alive.close()
    assert sockets[0] is sockets[1] is not None
    assert stack.client.get("/jobs").json()["total"] == 0
    assert "Traceback" not in stack.logs()


@pytest.mark.slow
def test_a_token_in_a_query_string_stays_out_of_the_access_log(make_stack):
    stack = make_stack()
    stack.serve()
    secret = "query-secret-0123456789"
    assert stack.client.get("/healthz", params={"status": "ok", "access_token": secret}).status_code == 200
    wait_for(lambda: "GET /healthz?status=ok&access_token=[redacted] HTTP/1.1" in stack.logs(), 10, message=stack.logs)
    assert secret not in stack.logs()
