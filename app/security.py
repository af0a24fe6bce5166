"""Access control and hardening: tokens, browser sessions, CSRF, headers, login throttling, and
the limits on a request's size and speed.

Once sign-in is on (TRAINBOARD_TOKEN set, or any user added; see app/users.py), every route but
/healthz, /login and /static needs a user's token: scripts send `Authorization: Bearer <token>`,
browsers log in once and carry a session cookie. The cookie names a random session id the
database knows (logging out deletes it) and is signed with a key derived from the user's token,
so a new token ends that user's sessions.

CSRF: a browser's unsafe request (it sends Origin or Referer, or it is authorised by the
session cookie) must come from this origin and carry the double-submit token: the
`trainboard_csrf` cookie echoed in the form field `csrf_token` (of a urlencoded or a multipart
form) or the `X-CSRF-Token` header.
Bearer requests are exempt: a cross-site page cannot attach that header.
"""

import asyncio
import hashlib
import hmac
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from app import users
from app.db import get_engine
from app.deps import wants_html
from app.models import utcnow
from app.settings import Settings
from app.templating import templates

SESSION_COOKIE = "trainboard_session"
CSRF_COOKIE = "trainboard_csrf"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 7 * 24 * 3600
SESSION_ID_BYTES = 16
MAX_BODY_BYTES = 1024 * 1024
# A request line and its headers must fit in this (h11's own default, stated).
MAX_HEADER_BYTES = 16 * 1024
# Failed logins allowed per minute from one client, and from all clients together.
LOGIN_FAILURES_PER_CLIENT = 10
LOGIN_FAILURES_OVERALL = 100
LOGIN_WINDOW_SECONDS = 60.0
PUBLIC_PATHS = ("/healthz", "/login")
PUBLIC_PREFIXES = ("/static/",)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

# Every page, /docs included (its Swagger UI is served from the app, see app/pages.py).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)


# ---------------------------------------------------------------------------------------------
# Tokens and signed sessions
# ---------------------------------------------------------------------------------------------


def _session_key(secret: str) -> bytes:
    return hashlib.sha256(b"trainboard session\0" + secret.encode()).digest()


def _session_signature(secret: str, expires: str, session_id: str) -> str:
    return hmac.new(_session_key(secret), f"session.{expires}.{session_id}".encode(), hashlib.sha256).hexdigest()


def make_session(secret: str, now: float | None = None) -> str:
    """A new session's cookie, `expires.id-signature`: a random id, signed with a key derived from
    `secret` (the credential of the user it belongs to)."""
    expires = str(int((time.time() if now is None else now) + SESSION_SECONDS))
    session_id = secrets.token_hex(SESSION_ID_BYTES)
    return f"{expires}.{session_id}-{_session_signature(secret, expires, session_id)}"


def _session_parts(cookie: str | None) -> tuple[str, str, str] | None:
    expires, _, signed = (cookie or "").partition(".")
    session_id, _, signature = signed.partition("-")
    # ASCII digits only, and few: int() of a 4,301-digit or a superscript "digit" raises.
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12 and session_id and signature):
        return None
    return expires, session_id, signature


def session_id_of(cookie: str | None) -> str | None:
    """The session id a cookie names (not yet checked)."""
    parts = _session_parts(cookie)
    return parts[1] if parts else None


def session_valid(cookie: str | None, secret: str) -> bool:
    """The cookie is unexpired and signed for `secret`."""
    parts = _session_parts(cookie)
    if parts is None or int(parts[0]) < time.time():
        return False
    expires, session_id, signature = parts
    return hmac.compare_digest(signature.encode(), _session_signature(secret, expires, session_id).encode())


def bearer_token(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def csrf_token(request: Request) -> str:
    """The token this request's page must put in its forms (also read by templates)."""
    return request.state.csrf_token


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _same_origin(request: Request) -> bool | None:
    """None when the request names no origin (scripts); else whether it is this site."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return None if not source else False
    origin = urlsplit(source)
    return f"{origin.scheme}://{origin.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


# ---------------------------------------------------------------------------------------------
# Limits on a request: its headers' and body's size and speed. The body limit is pure ASGI and
# comes first; uvicorn runs the header deadline.
# ---------------------------------------------------------------------------------------------


class BodyLimit:
    """Refuses a body over max_bytes (413) and one that has not arrived within timeout seconds of
    the request (408), streamed bodies too. Once the body is in, receive() passes through: a
    streaming response listens on it for the client's disconnect."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, timeout: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        # Counted in digits first: int() refuses numbers of more than 4,300 digits.
        if declared.isdigit() and (len(declared) > len(str(self.max_bytes)) or int(declared) > self.max_bytes):
            await _refuse(scope, receive, send, status.HTTP_413_CONTENT_TOO_LARGE, f"request body larger than {self.max_bytes} bytes")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        received = 0
        body_complete = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, body_complete, refused
            if body_complete or refused:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                refused = True
                await _refuse(scope, receive, send, status.HTTP_408_REQUEST_TIMEOUT, f"request body not received within {self.timeout:g} s")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    refused = True
                    await _refuse(scope, receive, send, status.HTTP_413_CONTENT_TOO_LARGE, f"request body larger than {self.max_bytes} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            # Once the refusal is out, whatever the app answers to the cut-off body is dropped.
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except ClientDisconnect:
            # A route that reads the body itself (the login form) sees the cut-off as a
            # disconnect: expected after a 413, so not an error to log.
            if not refused:
                raise


async def _refuse(scope: Scope, receive: Receive, send: Send, code: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=code, headers={"Connection": "close"})(scope, receive, send)


class HeaderDeadlineProtocol(H11Protocol):
    """Uvicorn's HTTP/1.1 protocol with a deadline for each request's line and headers.

    Uvicorn times only the idle wait between requests, and stops that clock at the first byte: a
    client sending its headers a byte at a time (slowloris) would hold its connection forever.
    Here each request's headers must be complete within header_timeout seconds of the
    connection opening or the previous response ending; else the connection is closed.
    """

    def __init__(self, *args, header_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None
        self._cycle_before = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_header_clock()

    def on_response_complete(self) -> None:
        # Before the base class, which may start a pipelined request at once.
        self._start_header_clock()
        super().on_response_complete()

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_deadline is not None and self.cycle is not self._cycle_before:
            self._stop_header_clock()  # a new request's headers are complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def _start_header_clock(self) -> None:
        self._stop_header_clock()
        self._cycle_before = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


# ---------------------------------------------------------------------------------------------
# Who a request acts as, and the rules every request passes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """What a request's credentials say: the user it acts as (None: nobody yet) and how."""

    caller: users.Caller | None
    sign_in_required: bool
    by_bearer: bool = False
    by_session: bool = False


def identify(engine: Engine, settings: Settings, bearer: str | None, cookie: str | None) -> Identity:
    if not users.sign_in_required(engine, settings):
        return Identity(users.LOCAL_ADMIN, sign_in_required=False)
    if bearer is not None:
        caller = users.authenticate(engine, settings, bearer)
        return Identity(caller, sign_in_required=True, by_bearer=caller is not None)
    session_id = session_id_of(cookie)
    caller = users.session_caller(engine, settings, session_id) if session_id else None
    if caller is not None and not session_valid(cookie, caller.credential):
        caller = None
    return Identity(caller, sign_in_required=True, by_session=caller is not None)


async def guard(request: Request, call_next) -> Response:
    """Authentication, CSRF and security headers for every request."""
    request.state.csrf_token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)

    refusal = await _refusal(request)
    response = refusal or await call_next(request)

    if CSRF_COOKIE not in request.cookies:
        response.set_cookie(
            CSRF_COOKIE, request.state.csrf_token, httponly=True, samesite="strict",
            secure=request.url.scheme == "https", path="/",
        )
    _add_headers(response)
    return response


def _addressed_to_loopback(request: Request) -> bool:
    host = request.headers.get("host", "").lower()
    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    return name in LOOPBACK_NAMES or name.endswith(".localhost")


async def _refusal(request: Request) -> Response | None:
    settings: Settings = request.app.state.settings
    bearer = bearer_token(request)
    identity = await run_in_threadpool(
        identify, get_engine(settings.database_url), settings, bearer, request.cookies.get(SESSION_COOKIE)
    )
    request.state.user = identity.caller
    request.state.signed_in = identity.by_session
    # Without sign-in only localhost is served; a page whose own domain has been re-pointed at
    # 127.0.0.1 (DNS rebinding) still names that domain in Host, and is refused.
    if not identity.sign_in_required and not _addressed_to_loopback(request):
        return _forbidden(
            request, "this dashboard has no TRAINBOARD_TOKEN, so it answers only requests addressed to localhost; "
            "set TRAINBOARD_TOKEN to reach it under another name",
        )
    if identity.caller is None and (bearer is not None or not _is_public(request.url.path)):
        return _unauthorized(request)

    if request.method in UNSAFE_METHODS and not identity.by_bearer:
        same_origin = _same_origin(request)
        if same_origin is False:
            return _forbidden(request, "cross-site request refused")
        if (same_origin or identity.by_session) and not await _csrf_ok(request):
            return _forbidden(request, "missing or wrong CSRF token: reload the page and try again")
    return None


async def _csrf_ok(request: Request) -> bool:
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected:
        return False
    given = request.headers.get("x-csrf-token")
    if given is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            # The raw body, not request.form(): the route handler still needs to read the form.
            fields = parse_qs((await request.body()).decode("utf-8", errors="replace"))
            given = (fields.get(CSRF_FIELD) or [None])[0]
        elif content_type.startswith("multipart/form-data"):
            # A form with a file (the sweep form's upload). Read whole first, the body is kept for
            # the route handler, which parses it again.
            await request.body()
            try:
                async with request.form() as fields:
                    given = fields.get(CSRF_FIELD)
            except HTTPException:  # a body that is not multipart after all
                return False
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def _unauthorized(request: Request) -> Response:
    if wants_html(request):
        return RedirectResponse(f"/login?next={request.url.path}", status_code=status.HTTP_303_SEE_OTHER)
    return JSONResponse(
        {"detail": "a valid access token is required: send Authorization: Bearer <your token>"},
        status_code=status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"},
    )


def _forbidden(request: Request, reason: str) -> Response:
    return JSONResponse({"detail": reason}, status_code=status.HTTP_403_FORBIDDEN)


def _add_headers(response: Response) -> None:
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")


# ---------------------------------------------------------------------------------------------
# Login and logout
# ---------------------------------------------------------------------------------------------


class LoginThrottle:
    """Failed logins in the last `window` seconds, per client and overall. Past either limit the
    login answers 429 until the oldest failure that counts leaves the window; meanwhile no token
    is checked. In memory, per app process: at most `overall` failures are ever held."""

    def __init__(
        self, per_client: int = LOGIN_FAILURES_PER_CLIENT, overall: int = LOGIN_FAILURES_OVERALL,
        window: float = LOGIN_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic,
    ):
        self.per_client = per_client
        self.overall = overall
        self.window = window
        self.clock = clock
        self._failures: deque[tuple[float, str]] = deque()
        self._by_client: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None when it may now."""
        now = self.clock()
        while self._failures and self._failures[0][0] <= now - self.window:
            _, old_client = self._failures.popleft()
            self._by_client[old_client].popleft()
            if not self._by_client[old_client]:
                del self._by_client[old_client]
        if len(self._failures) >= self.overall:
            return self._seconds_until(self._failures[0][0], now)
        mine = self._by_client.get(client, ())
        if len(mine) >= self.per_client:
            return self._seconds_until(mine[0], now)
        return None

    def failed(self, client: str) -> None:
        now = self.clock()
        self._failures.append((now, client))
        self._by_client.setdefault(client, deque()).append(now)

    def _seconds_until(self, oldest: float, now: float) -> int:
        return max(1, math.ceil(oldest + self.window - now))


router = APIRouter(include_in_schema=False)


def _local_path(target: str | None) -> str:
    """Only paths on this site, so the login form cannot redirect elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(
    request: Request, next_path: str, error: str | None, status_code: int = 200, *, sign_in_required: bool = True
) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "login.html", {"next": next_path, "error": error, "token_required": sign_in_required},
        status_code=status_code,
    )


def _engine(request: Request) -> Engine:
    return get_engine(request.app.state.settings.database_url)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    required = users.sign_in_required(_engine(request), request.app.state.settings)
    return _login_page(request, _local_path(next), None, sign_in_required=required)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    next_path = _local_path(str(form.get("next", "/")))
    settings = request.app.state.settings
    engine = _engine(request)
    if not await run_in_threadpool(users.sign_in_required, engine, settings):
        return RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)
    throttle: LoginThrottle = request.app.state.login_throttle
    client = request.client.host if request.client else ""
    wait = throttle.retry_after(client)
    if wait is not None:
        response = _login_page(
            request, next_path, f"Too many wrong tokens; try again in {wait} s.", status.HTTP_429_TOO_MANY_REQUESTS
        )
        response.headers["Retry-After"] = str(wait)
        return response
    caller = await run_in_threadpool(users.authenticate, engine, settings, str(form.get("token", "")))
    if caller is None:
        throttle.failed(client)
        return _login_page(request, next_path, "That token is not right.", status.HTTP_401_UNAUTHORIZED)
    cookie = make_session(caller.credential)
    expires_at = utcnow() + timedelta(seconds=SESSION_SECONDS)
    await run_in_threadpool(users.record_session, engine, session_id_of(cookie), caller, expires_at)
    response = RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, samesite="lax",
        secure=request.url.scheme == "https", path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Ends this browser's session on the server too: the old cookie no longer works."""
    session_id = session_id_of(request.cookies.get(SESSION_COOKIE))
    if session_id is not None:
        users.end_session(_engine(request), session_id)
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
